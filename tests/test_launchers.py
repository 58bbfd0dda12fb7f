"""Checks of the Slurm launchers (run_tracegen.sh, submit_jobs.sh) that need no Slurm.

sbatch is never called for real here: submit_jobs.sh runs in dry-run mode or
against a fake `sbatch` that records its arguments. tests/test_slurm.py runs
the launchers on a real (one-node) Slurm cluster.
"""

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_TRACEGEN = REPO / "run_tracegen.sh"
SUBMIT_JOBS = REPO / "submit_jobs.sh"
LAUNCHERS = [RUN_TRACEGEN, SUBMIT_JOBS]

# Variables the launchers read: never inherit them from the caller's shell.
_LAUNCHER_VARS = {"TTSR_ROOT", "TTSR_ACTIVATE", "PYTHON", "DRY_RUN", "PARTITION", "SBATCH",
                  "LOG_DIR", "EXPR_DIR", "TRACE_DIR"}


def clean_env(**extra):
    """The current environment without Slurm job variables or launcher settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in _LAUNCHER_VARS}
    env.update(extra)
    return env


def bash(script, *args, env=None, cwd=None, check=True):
    result = subprocess.run(["bash", str(script), *map(str, args)], env=env or clean_env(),
                            cwd=cwd or REPO, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, (
            f"bash {script} {' '.join(map(str, args))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


# ------------------------------------------------------------------ static checks

# A path token not glued to a variable (`$1/x.py`, `${ROOT}/x.py` are skipped).
_FILE_REF = re.compile(r"(?<![\w$/{}.-])[\w./-]+\.(?:py|sh|json|ya?ml|toml|cfg|txt)\b")


def referenced_files(path):
    """Repository files a launcher names (scripts and configs), comments included."""
    names = set()
    for token in _FILE_REF.findall(path.read_text()):
        token = token.removeprefix("./")
        if token.startswith("/") or token.startswith("."):
            continue  # absolute or hidden paths (e.g. .venv/...) are not repository files
        names.add(token)
    return names


def test_referenced_scripts_and_configs_exist():
    refs = {path.name: referenced_files(path) for path in LAUNCHERS}
    assert "generate_traces.py" in refs["run_tracegen.sh"]
    assert {"run_tracegen.sh", "generate_expressions.py"} <= refs["submit_jobs.sh"]
    missing = [f"{launcher}: {name}" for launcher, names in refs.items()
               for name in sorted(names) if not (REPO / name).is_file()]
    assert not missing, "launchers name files that do not exist:\n" + "\n".join(missing)


CI_SCRIPTS = [REPO / ".ci" / name for name in ("run", "slurm_setup.sh", "slurm_teardown.sh")]


@pytest.mark.parametrize("script", LAUNCHERS + CI_SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.name)
def test_no_home_paths_accounts_or_conda(script):
    text = script.read_text()
    for pattern in ["/home/", "/Users/", "~/", "--account", "conda"]:
        assert pattern not in text, f"{script.name} contains {pattern!r}"
    assert not re.search(r"^#SBATCH\s+-A\b", text, re.M), f"{script.name} sets an account"


def test_run_tracegen_sbatch_header():
    header = [line for line in RUN_TRACEGEN.read_text().splitlines() if line.startswith("#SBATCH")]
    options = {line.split()[1] for line in header}
    assert {"--mem=32G", "--time=12:00:00", "--cpus-per-task=8",
            "--output=logs/%x-%A_%a.out", "--job-name=tracegen"} <= options
    assert "set -euo pipefail" in RUN_TRACEGEN.read_text()


# ------------------------------------------------------------------ run_tracegen.sh

def run_tracegen(*args, check=True, cwd=None, script=RUN_TRACEGEN, **env):
    env.setdefault("PYTHON", "echo")
    env.setdefault("TTSR_ACTIVATE", "")
    return bash(script, *args, env=clean_env(**env), cwd=cwd, check=check)


def test_run_tracegen_outside_slurm_passes_args_unchanged(tmp_path):
    result = run_tracegen("--expressions_file", "a b.pkl.gz", "--num_generations", "30",
                          cwd=tmp_path)
    assert result.stdout.split("\n")[0] == "generate_traces.py --expressions_file a b.pkl.gz --num_generations 30"


def test_run_tracegen_defaults_workers_to_slurm_cpus():
    assert run_tracegen("--x", "1", SLURM_CPUS_PER_TASK="3").stdout.strip() == \
        "generate_traces.py --x 1 --workers 3"
    for given in (["--workers", "2"], ["--workers=2"]):
        out = run_tracegen(*given, SLURM_CPUS_PER_TASK="3").stdout.strip()
        assert out == "generate_traces.py " + " ".join(given)


def test_run_tracegen_array_task_appends_shard():
    out = run_tracegen("--x", "1", SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2",
                       SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="1").stdout.strip()
    assert out == "generate_traces.py --x 1 --shard 1/2"
    # Without SLURM_ARRAY_TASK_COUNT (old Slurm) the count comes from MIN/MAX.
    out = run_tracegen(SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_MIN="0",
                       SLURM_ARRAY_TASK_MAX="3", SLURM_CPUS_PER_TASK="8").stdout.strip()
    assert out == "generate_traces.py --workers 8 --shard 2/4"


@pytest.mark.parametrize("array_env, args, message", [
    (dict(SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="2", SLURM_ARRAY_TASK_COUNT="2"), [], "0-based"),
    (dict(SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="4", SLURM_ARRAY_TASK_COUNT="3",
          SLURM_ARRAY_TASK_STEP="2"), [], "0-based"),
    (dict(SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="1", SLURM_ARRAY_TASK_COUNT="2"),
     ["--shard", "0/2"], "--shard"),
    (dict(SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="1", SLURM_ARRAY_TASK_COUNT="2"),
     ["--merge_shards", "2"], "--merge_shards"),
], ids=["one-based", "stepped", "explicit-shard", "merge-in-array"])
def test_run_tracegen_rejects_bad_arrays(array_env, args, message):
    result = run_tracegen(*args, check=False, SLURM_ARRAY_TASK_ID="1", **array_env)
    assert result.returncode != 0
    assert result.stdout == ""  # generate_traces.py never started
    assert message in result.stderr


def test_run_tracegen_finds_root_from_spool_copy(tmp_path):
    """Under sbatch the script runs from a copy in slurmd's spool directory."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "slurm_script").write_bytes(RUN_TRACEGEN.read_bytes())
    fake_python = tmp_path / "fake_python"
    fake_python.write_text('#!/bin/sh\necho "$PWD" "$@"\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    result = run_tracegen("--x", script=spool / "slurm_script", cwd=tmp_path,
                          PYTHON=str(fake_python), SLURM_SUBMIT_DIR=str(REPO))
    assert result.stdout.strip() == f"{REPO} generate_traces.py --x"
    # An explicit TTSR_ROOT wins, and must hold generate_traces.py.
    result = run_tracegen(script=spool / "slurm_script", cwd=tmp_path, check=False,
                          TTSR_ROOT=str(tmp_path), SLURM_SUBMIT_DIR=str(REPO))
    assert result.returncode != 0 and "generate_traces.py" in result.stderr


def test_run_tracegen_activates_environment(tmp_path):
    activate = tmp_path / "activate"
    activate.write_text('PYTHON_FROM_ACTIVATE=yes\nexport TTSR_ACTIVATED="$PYTHON_FROM_ACTIVATE"\n')
    fake_python = tmp_path / "fake_python"
    fake_python.write_text('#!/bin/sh\necho "activated=$TTSR_ACTIVATED"\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    result = run_tracegen(TTSR_ACTIVATE=str(activate), PYTHON=str(fake_python))
    assert result.stdout.strip() == "activated=yes"
    result = run_tracegen(TTSR_ACTIVATE=str(tmp_path / "missing"), check=False)
    assert result.returncode != 0 and "TTSR_ACTIVATE" in result.stderr


def test_run_tracegen_runs_generate_traces_outside_slurm(tmp_path):
    """The real thing, tiny: expressions -> traces through the launcher."""
    expressions = tmp_path / "tiny.pkl.gz"
    subprocess.run([sys.executable, "generate_expressions.py", "--n_expressions", "3", "--seed", "0",
                    "--max_vars", "2", "--output", str(expressions)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    output = tmp_path / "traces.pkl.gz"
    run_tracegen("--expressions_file", expressions, "--num_generations", "5",
                 "--population_size", "8", "--seed", "0", "--workers", "1", "--output", output,
                 cwd=tmp_path, PYTHON=sys.executable)
    assert output.is_file() and output.stat().st_size > 0


# ------------------------------------------------------------------ submit_jobs.sh

@pytest.fixture
def fake_sbatch(tmp_path):
    """A fake `sbatch` first on PATH: records each call, answers ids 100, 101, ..."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch_calls"
    script = bin_dir / "sbatch"
    script.write_text(f"""#!/usr/bin/env python3
import json, sys
from pathlib import Path
calls = Path({str(calls)!r})
lines = calls.read_text().splitlines() if calls.exists() else []
calls.write_text("".join(l + "\\n" for l in lines + [json.dumps(sys.argv[1:])]))
print(f"{{100 + len(lines)}};cluster")
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)

    def env(**extra):
        return clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                         LOG_DIR=str(tmp_path / "logs"), EXPR_DIR=str(tmp_path / "expressions"),
                         TRACE_DIR=str(tmp_path / "traces"), **extra)

    def recorded():
        import json
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return env, recorded


def sbatch_lines(stdout):
    return [shlex.split(line.split("  # ->")[0]) for line in stdout.splitlines()
            if line.startswith("sbatch ")]


def option(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    return values[0] if values else None


def check_smoke_jobs(commands):
    """commands: sbatch argument lists (without `sbatch`) of the smoke job."""
    expressions, array, merge = commands
    assert option(expressions, "--job-name") == "ex_smoke"
    wrap = shlex.split(option(expressions, "--wrap").split("exec ", 1)[1])
    assert wrap[1] == "generate_expressions.py" and "--n_expressions" in wrap
    assert wrap[wrap.index("--n_expressions") + 1] == "50"

    assert option(array, "--job-name") == "tg20_smoke"
    assert option(array, "--array") == "0-1"
    script_at = array.index("run_tracegen.sh")
    trace_args = array[script_at + 1:]
    assert trace_args[trace_args.index("--num_generations") + 1] == "20"
    assert "--shard" not in trace_args  # the array index supplies it

    assert option(merge, "--array") is None
    assert merge[merge.index("run_tracegen.sh") + 1:] == trace_args + ["--merge_shards", "2"]
    return option(array, "--dependency"), option(merge, "--dependency")


@pytest.mark.parametrize("how", ["env", "flag"])
def test_dry_run_prints_smoke_jobs_and_submits_nothing(fake_sbatch, tmp_path, how):
    env, recorded = fake_sbatch
    if how == "env":
        result = bash(SUBMIT_JOBS, env=env(DRY_RUN="1"))
    else:
        result = bash(SUBMIT_JOBS, "--dry_run", env=env())
    assert recorded() == []
    assert not (tmp_path / "logs").exists()
    commands = sbatch_lines(result.stdout)
    assert len(commands) == 3, result.stdout
    assert all("--parsable" in c and not any(a.startswith("--partition") for a in c) for c in commands)
    array_dep, merge_dep = check_smoke_jobs([c[1:] for c in commands])
    assert array_dep == "afterok:DRYRUN_1" and merge_dep == "afterok:DRYRUN_2"


def test_submit_chains_job_ids(fake_sbatch, tmp_path):
    env, recorded = fake_sbatch
    bash(SUBMIT_JOBS, env=env(PARTITION="debug"))
    calls = recorded()
    assert len(calls) == 3
    assert all("--partition=debug" in c and "--parsable" in c for c in calls)
    array_dep, merge_dep = check_smoke_jobs(calls)
    assert array_dep == "afterok:100" and merge_dep == "afterok:101"  # ";cluster" stripped
    assert (tmp_path / "logs").is_dir()


def _help_flags(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", result.stdout)) | {"--help"}


def test_full_job_list_is_consistent(fake_sbatch, tmp_path):
    """Uncomment every job of submit_jobs.sh: the dry run works, every flag is one the
    target script accepts, and job names match their generation counts."""
    env, recorded = fake_sbatch
    text = SUBMIT_JOBS.read_text()
    uncommented = re.sub(r"^# (submit_\w+ [a-z]\w* )", r"\1", text, flags=re.M)  # job lines, not usage
    assert uncommented.count("\nsubmit_expressions ") >= 5 and uncommented.count("\nsubmit_traces ") >= 9
    copy = tmp_path / "submit_jobs_all.sh"
    copy.write_text(uncommented)
    result = bash(copy, env=env(DRY_RUN="1", TTSR_ROOT=str(REPO)))
    assert recorded() == []
    commands = [c[1:] for c in sbatch_lines(result.stdout)]

    accepted = {script: _help_flags(script) for script in
                ("generate_expressions.py", "generate_traces.py", "one_step_conversion.py", "train.py")}
    names = set()
    for argv in commands:
        name = option(argv, "--job-name")
        assert name not in names, f"duplicate job name {name}"
        names.add(name)
        if "run_tracegen.sh" in argv:
            script, args = "generate_traces.py", argv[argv.index("run_tracegen.sh") + 1:]
            match = re.fullmatch(r"tg(\d+)(k?)_\w+?(-merge)?", name)
            assert match, f"trace job name {name} does not follow tg<G>_<set>"
            gens = int(match.group(1)) * (1000 if match.group(2) else 1)
            assert args[args.index("--num_generations") + 1] == str(gens), name
        else:
            wrap = shlex.split(option(argv, "--wrap").split("exec ", 1)[1])
            at = next(i for i, word in enumerate(wrap) if word.endswith(".py"))  # after python or accelerate launch ...
            script, args = wrap[at], wrap[at + 1:]
        unknown = {a.split("=")[0] for a in args if a.startswith("--")} - accepted[script]
        assert not unknown, f"job {name}: {script} does not accept {sorted(unknown)}"
    for complexity in ("03", "05", "07", "10"):
        assert {f"ex_asm{complexity}", f"tg1k_asm{complexity}", f"tg10k_asm{complexity}"} <= names
