#!/usr/bin/env bash
# One device-machine call (H100, <= 10 minutes): the CUDA tests, then bench_neural with everything
# the next decision needs. Results go to $OUT (or ./gpu_out). Each part has its own time limit, so a
# part that runs long still leaves the others' results.
#
#   device run:  bash bench/gpu_session.sh
set -u
out="${OUT:-gpu_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$out/machine.txt" 2>&1

# 1. CUDA tests of the sampler and NeuralSR (graph modes, padded batches, launches in flight, fused attention).
timeout 150 python3 -m pytest -q -x tests/test_fast_sampler.py tests/test_neural_sr.py \
  > "$out/gpu_tests.txt" 2>&1
echo "tests exit $?" >> "$out/gpu_tests.txt"

# 2. Sampler throughput (HF, eager, graphs, compile; "scores" vs "fused" attention), the kernel table of one
#    eager call at B = 256, BasicSR's time per generation, and the end-to-end BatchedNeuralSR step at B = 256
#    (random and trained weights x attention x overlap 1/2).
timeout 400 python3 bench/bench_neural.py --json "$out/bench_neural.json" --kernel_profile "$out/kernels.txt" \
  --e2e_checkpoint models/neuralsr-tiny --profile "$out/step_profile.txt" --budget_s 150 \
  > "$out/bench_neural.txt" 2>&1
echo "bench exit $?" >> "$out/bench_neural.txt"
tail -n 40 "$out/bench_neural.txt"
