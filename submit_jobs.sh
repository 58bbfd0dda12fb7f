#!/usr/bin/env bash
# The list of Slurm jobs of the pipeline. Everything is commented out except a
# tiny smoke job; uncomment the lines you want and run
#
#   bash submit_jobs.sh             # submit
#   bash submit_jobs.sh --dry_run   # (or DRY_RUN=1) print the sbatch commands only
#
# Jobs run from the repository root (--chdir), so the paths below are relative
# to it. Job logs go to $LOG_DIR (created here: sbatch does not create it).
#
# Environment (all optional):
#   TTSR_ROOT      repository root (default: this script's directory)
#   TTSR_ACTIVATE  script the jobs source to activate Python (default: the
#                  repository's .venv when it exists; see run_tracegen.sh)
#   PARTITION      Slurm partition; passed only when set
#   LOG_DIR        job logs (default: $TTSR_ROOT/logs)
#   EXPR_DIR       expressions files (default: datasets/expressions)
#   TRACE_DIR      traces files (default: datasets/traces)
#   SBATCH         sbatch command (default: sbatch)
# No account is passed: set SBATCH_ACCOUNT in your environment if your site
# needs one (sbatch reads it).
set -euo pipefail

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
DRY_RUN=${DRY_RUN:-0}
for arg in "$@"; do
    case $arg in
        --dry_run|--dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "submit_jobs.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

TTSR_ROOT=${TTSR_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
PARTITION=${PARTITION:-}
LOG_DIR=${LOG_DIR:-$TTSR_ROOT/logs}
EXPR_DIR=${EXPR_DIR:-datasets/expressions}
TRACE_DIR=${TRACE_DIR:-datasets/traces}
SBATCH=${SBATCH:-sbatch}
export TTSR_ROOT   # read by run_tracegen.sh inside the jobs (sbatch exports the environment)

COMMON=(--parsable "--chdir=$TTSR_ROOT")
if [ -n "$PARTITION" ]; then COMMON+=("--partition=$PARTITION"); fi

if [ "$DRY_RUN" = 1 ]; then
    echo "# dry run: nothing is submitted"
else
    command -v "$SBATCH" >/dev/null 2>&1 || { echo "submit_jobs.sh: '$SBATCH' not found" >&2; exit 1; }
    mkdir -p "$LOG_DIR"
    (cd "$TTSR_ROOT" && mkdir -p "$EXPR_DIR" "$TRACE_DIR")
fi

# submit SBATCH_ARGS... : submits (or prints) one job; its id is left in JOB_ID.
N_DRY=0
submit() {
    local cmd=("$SBATCH" "${COMMON[@]}" "$@")
    if [ "$DRY_RUN" = 1 ]; then
        N_DRY=$((N_DRY + 1))
        JOB_ID=DRYRUN_$N_DRY
        printf '%q ' "${cmd[@]}"
        printf '  # -> %s\n' "$JOB_ID"
    else
        JOB_ID=$("${cmd[@]}")
        JOB_ID=${JOB_ID%%;*}   # --parsable prints "id" or "id;cluster"
        echo "submitted $JOB_ID: ${cmd[*]}"
    fi
}

# Used with --kill-on-invalid-dep=yes: a job whose dependency failed is
# cancelled instead of pending forever (DependencyNeverSatisfied).
after() { echo "--dependency=afterok:$1"; }

# Resources of the expression jobs and of each trace shard; the #SBATCH
# defaults in run_tracegen.sh apply to whatever is not set here.
EXPR_CPUS=4
EXPR_RES=(--mem=8G --time=4:00:00 "--cpus-per-task=$EXPR_CPUS")
TRACE_CPUS=8
TRACE_RES=()
MERGE_RES=(--mem=32G --time=2:00:00 --cpus-per-task=1)
# Trace settings of the prototype (population 20, seed 42 + expression id).
TRACE_ARGS=(--population_size 20 --seed 42)

# submit_expressions NAME OUTPUT [generate_expressions.py args...]
# Leaves the job id in EXPR_JOB.
submit_expressions() {
    local name=$1 output=$2; shift 2
    local act=${TTSR_ACTIVATE:-$TTSR_ROOT/.venv/bin/activate}
    local py_cmd
    py_cmd=$(printf '%q ' "${PYTHON:-python}" generate_expressions.py "$@" --output "$output")
    submit "--job-name=$name" "${EXPR_RES[@]}" "--output=$LOG_DIR/%x-%j.out" \
        --wrap="set -eu; if [ -f $(printf '%q' "$act") ]; then set +u; . $(printf '%q' "$act"); set -u; fi; exec $py_cmd"
    EXPR_JOB=$JOB_ID
}

# submit_traces NAME EXPR_FILE GENS SHARDS [AFTER_JOB_ID]
# An array job of SHARDS tasks (run_tracegen.sh turns the task id into
# --shard i/SHARDS), then a merge job with the same generate_traces.py
# arguments plus --merge_shards SHARDS once every shard succeeded. Both jobs
# get the same explicit --workers, so the merge sees exactly the shards' args.
# Leaves the merge job's id in TRACE_JOB.
submit_traces() {
    local name=$1 expr_file=$2 gens=$3 shards=$4 dep=${5:-}
    local args=(--expressions_file "$expr_file" --num_generations "$gens"
                --output_dir "$TRACE_DIR" --workers "$TRACE_CPUS" "${TRACE_ARGS[@]}")
    local dep_opt=()
    if [ -n "$dep" ]; then dep_opt=("$(after "$dep")" --kill-on-invalid-dep=yes); fi
    submit "--job-name=$name" "--array=0-$((shards - 1))" "--cpus-per-task=$TRACE_CPUS" \
        "${TRACE_RES[@]+"${TRACE_RES[@]}"}" "${dep_opt[@]+"${dep_opt[@]}"}" \
        "--output=$LOG_DIR/%x-%A_%a.out" run_tracegen.sh "${args[@]}"
    local array_job=$JOB_ID
    submit "--job-name=$name-merge" "${MERGE_RES[@]}" "$(after "$array_job")" --kill-on-invalid-dep=yes \
        "--output=$LOG_DIR/%x-%j.out" run_tracegen.sh "${args[@]}" --merge_shards "$shards"
    TRACE_JOB=$JOB_ID
}

# ============================================================================
# Expression sets and BasicSR traces.
#
# Naming: ex_<set> generates an expressions set, tg<G>_<set> traces it with G
# generations (50, 1k, 10k: as in the gen{G}_ file names), where
#   <set> = <ops><constants><variables><complexity>
#     ops:        a = arithmetic binary operators +,-,* (no division, no unary)
#     constants:  s = the single constant 1.0
#     variables:  m = multivariate, up to MAX_VARS variables
#     complexity: the complexity knob c times 10, two digits (05 = 0.5, 10 = 1.0)
# e.g. tg1k_asm05 = 1k-generation traces of the arith / 1.0 / up-to-3-variable
# set at complexity 0.5, in $TRACE_DIR/gen1k_asm05_100k.pkl.gz.
# Shards: a BasicSR run of 1k generations costs up to ~1 s, so 100k
# expressions take up to ~30 CPU hours at 1k and ~300 at 10k generations:
# 4 and 16 shards of 8 CPUs stay well inside the 12 h limit.
# ============================================================================
MAX_VARS=3
EXPR_OPTS=(--max_vars "$MAX_VARS" --binary_ops "+,-,*" --constants 1.0 --workers "$EXPR_CPUS")

# submit_expressions ex_asm03 "$EXPR_DIR/asm03_100k.pkl.gz" --n_expressions 100000 --seed 3 --complexity 0.3 "${EXPR_OPTS[@]}"
# submit_traces tg1k_asm03  "$EXPR_DIR/asm03_100k.pkl.gz" 1000  4  "$EXPR_JOB"
# submit_traces tg10k_asm03 "$EXPR_DIR/asm03_100k.pkl.gz" 10000 16 "$EXPR_JOB"

# submit_expressions ex_asm05 "$EXPR_DIR/asm05_100k.pkl.gz" --n_expressions 100000 --seed 5 --complexity 0.5 "${EXPR_OPTS[@]}"
# submit_traces tg1k_asm05  "$EXPR_DIR/asm05_100k.pkl.gz" 1000  4  "$EXPR_JOB"; TG1K_ASM05=$TRACE_JOB
# submit_traces tg10k_asm05 "$EXPR_DIR/asm05_100k.pkl.gz" 10000 16 "$EXPR_JOB"

# submit_expressions ex_asm07 "$EXPR_DIR/asm07_100k.pkl.gz" --n_expressions 100000 --seed 7 --complexity 0.7 "${EXPR_OPTS[@]}"
# submit_traces tg1k_asm07  "$EXPR_DIR/asm07_100k.pkl.gz" 1000  4  "$EXPR_JOB"
# submit_traces tg10k_asm07 "$EXPR_DIR/asm07_100k.pkl.gz" 10000 16 "$EXPR_JOB"

# submit_expressions ex_asm10 "$EXPR_DIR/asm10_100k.pkl.gz" --n_expressions 100000 --seed 10 --complexity 1.0 "${EXPR_OPTS[@]}"
# submit_traces tg1k_asm10  "$EXPR_DIR/asm10_100k.pkl.gz" 1000  4  "$EXPR_JOB"
# submit_traces tg10k_asm10 "$EXPR_DIR/asm10_100k.pkl.gz" 10000 16 "$EXPR_JOB"

# ============================================================================
# Training jobs. To depend on a trace set, save "$TRACE_JOB" (the merge job's
# id) right after its submit_traces call. Evaluation jobs: to be added here.
# ============================================================================
# submit_train NAME CONFIG GPUS [AFTER_JOB_ID] [train.py args...]
# One node with GPUS GPUs: 1 -> `python train.py`, more -> accelerate
# (training/accelerate.yaml), one process per GPU. --resume auto: a requeued
# job continues its own run, a new job starts fresh. Leaves the id in TRAIN_JOB.
TRAIN_RES=(--mem=64G --time=24:00:00 --cpus-per-task=8)
submit_train() {
    local name=$1 config=$2 gpus=$3 dep=${4:-}
    shift $(( $# < 4 ? $# : 4 ))
    local act=${TTSR_ACTIVATE:-$TTSR_ROOT/.venv/bin/activate}
    local dep_opt=()
    if [ -n "$dep" ]; then dep_opt=("$(after "$dep")"); fi
    local launcher=("${PYTHON:-python}")
    if [ "$gpus" -gt 1 ]; then
        launcher=(accelerate launch --config_file training/accelerate.yaml --num_processes "$gpus")
    fi
    local py_cmd
    py_cmd=$(printf '%q ' "${launcher[@]}" train.py --config "$config" --resume auto "$@")
    submit "--job-name=$name" "--gres=gpu:$gpus" "${TRAIN_RES[@]}" "${dep_opt[@]+"${dep_opt[@]}"}" \
        "--output=$LOG_DIR/%x-%j.out" \
        --wrap="set -euo pipefail; if [ -f $(printf '%q' "$act") ]; then set +u; . $(printf '%q' "$act"); set -u; fi; exec $py_cmd"
    TRAIN_JOB=$JOB_ID
}

# submit_conversion NAME TRACES_FILE AFTER_JOB_ID [one_step_conversion.py args...]
# One-step training data (train/val split) from a trace set. Leaves the id in CONV_JOB.
CONV_RES=(--mem=16G --time=2:00:00 --cpus-per-task=2)
submit_conversion() {
    local name=$1 traces=$2 dep=$3
    shift 3
    local act=${TTSR_ACTIVATE:-$TTSR_ROOT/.venv/bin/activate}
    local py_cmd
    py_cmd=$(printf '%q ' "${PYTHON:-python}" one_step_conversion.py --input "$traces" --split "$@")
    submit "--job-name=$name" "${CONV_RES[@]}" "$(after "$dep")" "--output=$LOG_DIR/%x-%j.out" \
        --wrap="set -eu; if [ -f $(printf '%q' "$act") ]; then set +u; . $(printf '%q' "$act"); set -u; fi; exec $py_cmd"
    CONV_JOB=$JOB_ID
}

# The 1k-generation traces of complexity 0.5 (TG1K_ASM05 above), converted, then the models:
# submit_conversion cv_asm05 "$TRACE_DIR/gen1k_asm05_100k.pkl.gz" "$TG1K_ASM05"
# submit_train tr_onestep_tiny training/onestep-tiny.json 1 "$CONV_JOB"
# submit_train tr_onestep_s    training/onestep-s.json    4 "$CONV_JOB"
# submit_train tr_autoreg_s    training/autoreg-s.json    4
# submit_train tr_direct_tiny  training/direct-tiny.json  1
# submit_train tr_dagger_tiny  training/dagger-tiny.json  1

# ============================================================================
# Smoke test (minutes on any node): 50 expressions, 20 generations, 2 shards
# and the merge. Comment it out once the pipeline is trusted.
# ============================================================================
EXPR_RES=(--mem=2G --time=0:15:00 --cpus-per-task=1)
TRACE_CPUS=2
TRACE_RES=(--mem=2G --time=0:15:00)
MERGE_RES=(--mem=2G --time=0:15:00 --cpus-per-task=1)
TRACE_ARGS+=(--overwrite)   # the smoke job may be rerun; real data is never replaced
submit_expressions ex_smoke "$EXPR_DIR/smoke_50.pkl.gz" --n_expressions 50 --seed 0 --max_vars "$MAX_VARS" --overwrite
submit_traces tg20_smoke "$EXPR_DIR/smoke_50.pkl.gz" 20 2 "$EXPR_JOB"
