"""End to end on a real Slurm cluster: sharded trace generation as an array job
plus a dependent merge job gives the same bytes as one local run.

Needs a working Slurm (sbatch on PATH, sinfo answering, a node up); skipped
otherwise, and failed instead when TTSR_SLURM=1 says Slurm was started for us.
The test submits jobs but never starts daemons. On a single machine:

    bash .ci/slurm_setup.sh            # one-node cluster (root, Debian/Ubuntu)
    TTSR_SLURM=1 .venv/bin/python -m pytest tests/test_slurm.py
    bash .ci/slurm_teardown.sh

On a real cluster, set TTSR_SLURM_TMP to a directory the compute nodes can see
(the default temporary directory is local to this machine), and optionally
TTSR_SLURM_PARTITION.
"""

import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"}
USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}
# Pending reasons that will not go away by waiting.
HOPELESS = {"DependencyNeverSatisfied", "PartitionConfig", "PartitionNodeLimit",
            "PartitionTimeLimit", "BadConstraints", "InvalidAccount", "InvalidQOS",
            "JobHeldAdmin", "JobHeldUser"}


def _slurm_problem():
    """None if Slurm can take jobs, else why not."""
    if not shutil.which("sbatch"):
        return "sbatch is not on PATH"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo did not answer ({error})"
    if result.returncode != 0:
        return f"sinfo failed: {result.stderr.strip() or result.returncode}"
    states = set(result.stdout.split())
    if not states & USABLE_NODE_STATES:
        return f"no node is up (node states: {sorted(states) or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _slurm_problem()
    if problem:
        if os.environ.get("TTSR_SLURM") == "1":
            pytest.fail(f"TTSR_SLURM=1 but Slurm is not usable: {problem}")
        print(f"\nSlurm tests skipped: {problem}")
        pytest.skip(f"no usable Slurm ({problem}); start one with: bash .ci/slurm_setup.sh")


@pytest.fixture
def work_dir(tmp_path):
    base = os.environ.get("TTSR_SLURM_TMP")
    if not base:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="ttsr-slurm-test-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _job_env():
    """--export value: everything, plus the repository and this interpreter's venv."""
    exports = {"TTSR_ROOT": str(REPO)}
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        exports["TTSR_ACTIVATE"] = str(activate)  # run_tracegen.sh sources it, then `python`
    else:
        exports["PYTHON"] = sys.executable
    assert not any("," in v for v in exports.values()), "sbatch --export cannot carry commas"
    return "ALL," + ",".join(f"{k}={v}" for k, v in exports.items())


def _sbatch(*args):
    partition = os.environ.get("TTSR_SLURM_PARTITION")
    cmd = ["sbatch", "--parsable", *([f"--partition={partition}"] if partition else []), *args]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr}"
    return result.stdout.strip().split(";")[0]


def _job_states(job_id):
    """[(JobState, Reason)] of a job or of every task of an array; [] once purged."""
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                            text=True, timeout=30)
    if result.returncode != 0:
        return []
    return [(re.search(r"\bJobState=(\S+)", line).group(1), re.search(r"\bReason=(\S+)", line).group(1))
            for line in result.stdout.splitlines() if "JobState=" in line]


def _wait(job_ids, timeout_s):
    """Poll until every job is finished; returns {job id: [(state, reason)]}."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = {job: _job_states(job) for job in job_ids}
        if all(s and all(state in TERMINAL for state, _ in s) for s in states.values()):
            return states
        stuck = any(reason in HOPELESS for s in states.values() for _, reason in s)
        if stuck or time.monotonic() > deadline:
            return states
        time.sleep(1)


def _logs(log_dir):
    return "\n".join(f"----- {path.name} -----\n{path.read_text(errors='replace')}"
                     for path in sorted(log_dir.glob("*")))


def test_sharded_array_plus_merge_matches_local_run(slurm, work_dir):
    expressions = work_dir / "expressions.pkl.gz"
    subprocess.run([sys.executable, "generate_expressions.py", "--n_expressions", "12", "--seed", "0",
                    "--max_vars", "3", "--output", str(expressions)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    log_dir = work_dir / "logs"
    log_dir.mkdir()  # sbatch does not create the --output directory
    output = work_dir / "traces" / "traces.pkl.gz"
    trace_args = ["--expressions_file", str(expressions), "--num_generations", "30",
                  "--population_size", "10", "--seed", "3", "--workers", "1",
                  "--output", str(output)]
    common = ["--mem=500M", "--cpus-per-task=1", "--time=5", f"--chdir={REPO}",
              f"--export={_job_env()}"]

    array_job = _sbatch("--job-name=ttsr-test-tracegen", "--array=0-1", *common,
                        f"--output={log_dir}/%x-%A_%a.out", str(REPO / "run_tracegen.sh"), *trace_args)
    merge_job = _sbatch("--job-name=ttsr-test-merge", f"--dependency=afterok:{array_job}", *common,
                        f"--output={log_dir}/%x-%j.out", str(REPO / "run_tracegen.sh"), *trace_args,
                        "--merge_shards", "2")
    try:
        states = _wait([array_job, merge_job], TIMEOUT_S)
    finally:
        subprocess.run(["scancel", array_job, merge_job], capture_output=True, timeout=30)
    ok = all(s and all(state == "COMPLETED" for state, _ in s) for s in states.values())
    assert ok, f"jobs did not all complete within {TIMEOUT_S}s: {states}\n{_logs(log_dir)}"
    for i in range(2):
        assert (output.parent / f"traces.shard{i}of2.pkl.gz").is_file(), _logs(log_dir)
    assert output.is_file(), f"merge job wrote no {output}\n{_logs(log_dir)}"

    # The local, unsharded run gets exactly the same arguments (provenance records
    # them), so the Slurm result is moved aside first.
    from_slurm = output.with_name("from_slurm.pkl.gz")
    output.rename(from_slurm)
    local = subprocess.run([sys.executable, "generate_traces.py", *trace_args], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    slurm_bytes, local_bytes = from_slurm.read_bytes(), output.read_bytes()
    if slurm_bytes != local_bytes:
        same_payload = gzip.decompress(slurm_bytes) == gzip.decompress(local_bytes)
        pytest.fail(f"merged file ({len(slurm_bytes)} bytes) differs from the local run "
                    f"({len(local_bytes)} bytes); decompressed contents "
                    f"{'equal (gzip header differs)' if same_payload else 'differ'}")
