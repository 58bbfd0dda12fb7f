#!/usr/bin/env bash
# A/B of how the model text writes expressions: full parentheses, '((x0*x0)+1.0)' (the shipped model's),
# against minimal ones, 'x0*x0+1.0' (one_step_conversion.py --parentheses). The same BasicSR traces and the
# same sampled (state, child) pairs are written both ways; one model of each is trained from the same seed on
# the same examples for the same steps; then experiments/proposal_errors.py sorts each model's proposals on
# benchmark problems (usable, unbalanced, malformed, ...). Prints, and writes under WORKDIR:
#   data/{full,minimal}.*.meta.json   token statistics of prompts and targets
#   checkpoints/{full,minimal}/       the two models (train.py logs: loss, wall time)
#   errors-{full,minimal}.json        the proposal breakdowns
#
#   bash experiments/parentheses_ab.sh [WORKDIR]          # defaults: the CPU-sized run of docs/LOG.md
#   STEPS=3000 BATCH=64 MODEL=training/gpt-neo-tiny.json DEVICE=cuda bash experiments/parentheses_ab.sh runs/ab
#
# Settings (environment): N_EXPRESSIONS (600), GENERATIONS (60), SAMPLE_FRACTION (0.1), MODEL
# (experiments/gpt-neo-64.json), STEPS (1500), BATCH (16), LR (0.001), DEVICE (cpu), WORKERS (2),
# PROBLEMS (quadratic,pythagorean_3d,complex_rational), EVAL_GENERATIONS (8), EVAL_SEEDS (0 1 2), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKDIR=${1:-results/parentheses-ab}
PYTHON=${PYTHON:-python3}
N_EXPRESSIONS=${N_EXPRESSIONS:-600}
GENERATIONS=${GENERATIONS:-60}
SAMPLE_FRACTION=${SAMPLE_FRACTION:-0.1}
MODEL=${MODEL:-experiments/gpt-neo-64.json}
STEPS=${STEPS:-1500}
BATCH=${BATCH:-16}
LR=${LR:-0.001}
DEVICE=${DEVICE:-cpu}
WORKERS=${WORKERS:-2}
PROBLEMS=${PROBLEMS:-quadratic,pythagorean_3d,complex_rational}
EVAL_GENERATIONS=${EVAL_GENERATIONS:-8}
EVAL_SEEDS=${EVAL_SEEDS:-0 1 2}

mkdir -p "$WORKDIR/data"
step() { echo "== $*" >&2; }

if [ ! -f "$WORKDIR/traces.pkl.gz" ]; then
  step "expressions and BasicSR traces"
  "$PYTHON" generate_expressions.py --n_expressions "$N_EXPRESSIONS" --seed 0 --workers "$WORKERS" \
    --output "$WORKDIR/expressions.pkl.gz" --overwrite
  "$PYTHON" generate_traces.py --expressions_file "$WORKDIR/expressions.pkl.gz" --num_generations "$GENERATIONS" \
    --seed 0 --workers "$WORKERS" --output "$WORKDIR/traces.pkl.gz" --quiet
fi

for style in full minimal; do
  if [ ! -f "$WORKDIR/data/$style.train.jsonl" ]; then
    step "one-step data, $style parentheses"
    "$PYTHON" one_step_conversion.py --input "$WORKDIR/traces.pkl.gz" --split --sample_fraction "$SAMPLE_FRACTION" \
      --seed 0 --parentheses "$style" --output "$WORKDIR/data/$style.jsonl" --tokenizer_dir "$WORKDIR/data/tokenizer" \
      --workers "$WORKERS" --quiet
  fi
done

for style in full minimal; do
  if [ ! -d "$WORKDIR/checkpoints/$style/final" ]; then
    step "train, $style parentheses: $STEPS steps of $BATCH on $DEVICE"
    "$PYTHON" train.py --config training/onestep-tiny.json -o model_config="$MODEL" \
      -o train_file="$WORKDIR/data/$style.train.jsonl" -o output_dir="$WORKDIR/checkpoints" -o run_name="$style" \
      -o max_steps="$STEPS" -o per_device_train_batch_size="$BATCH" -o learning_rate="$LR" -o warmup_steps=100 \
      -o eval_steps="$STEPS" -o save_steps=1000000 -o logging_steps=100 -o sample_prompts=0 \
      -o max_eval_examples=512 -o seed=0 -o device="$DEVICE" -o dataloader_num_workers=0 -o disable_tqdm=true
  fi
done

for style in full minimal; do
  for seed in $EVAL_SEEDS; do
    step "proposals of the $style model, seed $seed"
    "$PYTHON" experiments/proposal_errors.py --checkpoint "$WORKDIR/checkpoints/$style/final" --problems "$PROBLEMS" \
      --num_generations "$EVAL_GENERATIONS" --seed "$seed" --device "$DEVICE" --json "$WORKDIR/errors-$style-$seed.json"
  done
done
