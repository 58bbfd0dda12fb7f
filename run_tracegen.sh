#!/usr/bin/env bash
#SBATCH --job-name=tracegen
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --cpus-per-task=8
#SBATCH --output=logs/%x-%A_%a.out
#
# Run generate_traces.py, as a Slurm batch job or directly.
#
#   sbatch [--array=0-3] run_tracegen.sh --expressions_file F --num_generations G [...]
#   bash run_tracegen.sh --expressions_file F --num_generations G [...]
#
# All arguments are passed to generate_traces.py unchanged, plus:
#   * --workers $SLURM_CPUS_PER_TASK when no --workers is given and Slurm set
#     SLURM_CPUS_PER_TASK (outside Slurm generate_traces.py's default applies);
#   * --shard ${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT} inside an array
#     job. Arrays must be 0-based and contiguous (--array=0-N-1, optionally
#     with a %throttle); anything else fails before any work is done. The
#     shards are combined afterwards by a (non-array) job with the same
#     arguments plus --merge_shards N (submit_jobs.sh does both).
# The #SBATCH values above are defaults: options on the sbatch command line
# win (e.g. `sbatch --mem=4G --cpus-per-task=2 run_tracegen.sh ...`).
#
# logs/ must exist before submitting (sbatch does not create the directory of
# --output; a missing one makes the job fail without a log): submit_jobs.sh
# creates it. logs/ is relative to the job's working directory (the submit
# directory or --chdir), normally the repository root.
#
# Environment (all optional):
#   TTSR_ROOT      repository root; relative paths in the arguments are taken
#                  relative to it. Default: this script's directory when it
#                  holds generate_traces.py (run directly), else
#                  $SLURM_SUBMIT_DIR (under sbatch the script runs from a copy
#                  in slurmd's spool directory), else the working directory.
#   TTSR_ACTIVATE  script sourced to activate the Python environment.
#                  Default: $TTSR_ROOT/.venv/bin/activate when it exists.
#   PYTHON         interpreter command (default: python).
set -euo pipefail

die() { echo "run_tracegen.sh: error: $*" >&2; exit 2; }

has_script() { [ -n "${1:-}" ] && [ -f "$1/generate_traces.py" ]; }

if [ -z "${TTSR_ROOT:-}" ]; then
    script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    for candidate in "$script_dir" "${SLURM_SUBMIT_DIR:-}" "$PWD"; do
        if has_script "$candidate"; then TTSR_ROOT=$candidate; break; fi
    done
    [ -n "${TTSR_ROOT:-}" ] || die "cannot find the repository root (no generate_traces.py in" \
        "'$script_dir', '${SLURM_SUBMIT_DIR:-}' or '$PWD'); set TTSR_ROOT or submit with --chdir"
fi
has_script "$TTSR_ROOT" || die "TTSR_ROOT=$TTSR_ROOT does not contain generate_traces.py"
cd "$TTSR_ROOT"

if [ -z "${TTSR_ACTIVATE+x}" ] && [ -f "$TTSR_ROOT/.venv/bin/activate" ]; then
    TTSR_ACTIVATE=$TTSR_ROOT/.venv/bin/activate
fi
if [ -n "${TTSR_ACTIVATE:-}" ]; then
    [ -f "$TTSR_ACTIVATE" ] || die "TTSR_ACTIVATE=$TTSR_ACTIVATE does not exist"
    # activate scripts are not written for `set -u`
    set +u
    # shellcheck disable=SC1090
    . "$TTSR_ACTIVATE"
    set -u
fi
PYTHON=${PYTHON:-python}

args=("$@")
has_flag() {  # --flag or --flag=value among the arguments
    local a
    for a in "${args[@]+"${args[@]}"}"; do
        [ "$a" = "$1" ] || [ "${a#"$1"=}" != "$a" ] && return 0
    done
    return 1
}

if ! has_flag --workers && [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    args+=(--workers "$SLURM_CPUS_PER_TASK")
fi

if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    min=${SLURM_ARRAY_TASK_MIN:-}
    max=${SLURM_ARRAY_TASK_MAX:-}
    step=${SLURM_ARRAY_TASK_STEP:-1}
    count=${SLURM_ARRAY_TASK_COUNT:-}
    if [ -z "$count" ]; then   # older Slurm: derive from MIN/MAX
        [ -n "$min" ] && [ -n "$max" ] || die "array job without SLURM_ARRAY_TASK_COUNT or MIN/MAX"
        count=$(( max - min + 1 ))
    fi
    if [ "${min:-0}" != 0 ] || [ "$step" != 1 ] || { [ -n "$max" ] && [ "$max" != $(( count - 1 )) ]; }; then
        die "array jobs must be 0-based and contiguous (--array=0-$(( count - 1 ))); got" \
            "min=${min:-?} max=${max:-?} step=$step count=$count"
    fi
    has_flag --shard && die "do not pass --shard inside an array job; the array index sets it"
    has_flag --merge_shards && die "--merge_shards belongs in a separate (non-array) job"
    args+=(--shard "${SLURM_ARRAY_TASK_ID}/${count}")
fi

echo "run_tracegen.sh: $(date -u +%FT%TZ) host=$(hostname) root=$TTSR_ROOT" \
     "job=${SLURM_JOB_ID:-none} array_task=${SLURM_ARRAY_TASK_ID:-none}" >&2
exec $PYTHON generate_traces.py "${args[@]}"
