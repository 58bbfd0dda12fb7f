#!/usr/bin/env bash
# A study on the GPU machine in one device call: run it under a time limit, then pack its results
# (tables, JSON, plots, logs; not the data or the checkpoints) into $OUT, which brings back at most
# 8 files. What finished before the limit still comes back.
#
#   device run:  bash experiments/device_study.sh experiments/distill-dagger-h100.json [seconds, default 540]
set -u
config="${1:?usage: bash experiments/device_study.sh CONFIG [SECONDS]}"
limit="${2:-540}"
out="${OUT:-study_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
workdir=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['workdir'])" "$config") || exit 2
timeout --signal=TERM --kill-after=20 "$limit" python3 experiments/distill.py --config "$config" \
  > "$out/study_stdout.txt" 2>&1
echo "study exit $?" >> "$out/study_stdout.txt"
# Without the report stage's own run (killed by the limit), write the report from what finished.
test -f "$workdir/study.json" || python3 experiments/distill.py --config "$config" --stages report \
  >> "$out/study_stdout.txt" 2>&1
tar -czf "$out/study.tgz" --exclude='*.safetensors' --exclude='*.jsonl' --exclude='*.pkl.gz' \
  --exclude='checkpoint-*' --exclude='tokenizer*' -C "$(dirname "$workdir")" "$(basename "$workdir")" \
  2>> "$out/study_stdout.txt"
cp "$workdir/study.md" "$out/" 2>/dev/null
tail -n 40 "$out/study_stdout.txt"
