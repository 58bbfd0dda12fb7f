"""The shell scripts under experiments/: valid bash, and the parentheses A/B end to end at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "experiments").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_parentheses_ab_runs_end_to_end_and_writes_both_styles(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "N_EXPRESSIONS": "6", "GENERATIONS": "3",
           "SAMPLE_FRACTION": "1", "MODEL": "training/gpt-neo-micro.json", "STEPS": "2", "BATCH": "4",
           "WORKERS": "1", "PROBLEMS": "quadratic", "EVAL_GENERATIONS": "1", "EVAL_SEEDS": "0",
           "OMP_NUM_THREADS": "1"}
    workdir = tmp_path / "ab"
    result = subprocess.run(["bash", str(REPO / "experiments" / "parentheses_ab.sh"), str(workdir)], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    full, minimal = (json.loads((workdir / f"data/{style}.train.meta.json").read_text()) for style in
                     ("full", "minimal"))
    assert full["counts"]["examples"] == minimal["counts"]["examples"] > 0
    assert minimal["token_statistics"]["target_tokens"]["mean"] < full["token_statistics"]["target_tokens"]["mean"]
    for style in ("full", "minimal"):
        meta = json.loads((workdir / f"checkpoints/{style}/final/ttsr_train_meta.json").read_text())
        assert meta["prompt"]["parentheses"] == style and meta["step"] == 2
        errors = json.loads((workdir / f"errors-{style}-0.json").read_text())
        assert errors["total"] == 19 and errors["settings"]["checkpoint"].endswith(f"{style}/final")
