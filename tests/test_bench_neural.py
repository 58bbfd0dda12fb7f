"""bench/bench_neural.py --smoke runs on the CPU and reports what the GPU run will (the GPU time is scarce)."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_neural  # noqa: E402
import bench_neural_host  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_smoke_reports_every_method_and_the_end_to_end_step(tmp_path, capsys):
    out, kernels = tmp_path / "bench.json", tmp_path / "kernels.txt"
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    assert bench_neural.main(["--smoke", "--sizes", "1", "--json", str(out), "--kernel_profile", str(kernels)]) == 0
    assert (os.sched_getaffinity(0), torch.get_num_threads()) == (affinity, threads)  # the rest of the suite's cores
    report = json.loads(out.read_text())
    assert set(report["table"]["1"]) == {"hf", "eager", "eager:fused"}  # graph modes are CUDA only
    assert all(row["proposals_per_s"] > 0 for row in report["table"]["1"].values())
    steps = report["neural_vs_basic"]["batched_neural_sr"]
    assert [(s["attention"], s["overlap"]) for s in steps] == [("scores", 1), ("scores", 2), ("fused", 1),
                                                               ("fused", 2)]
    for step in steps:
        assert step["seconds_per_problem_generation"] > 0 and 0 < step["model_seconds_per_generation"]
        assert step["ratio_to_basic"] > 0
    # Overlapping groups changes the timing, not the searches: the same children are kept.
    assert steps[0]["well_formed_rate"] == steps[1]["well_formed_rate"]
    assert steps[2]["well_formed_rate"] == steps[3]["well_formed_rate"]
    assert "aten::" in kernels.read_text()
    printed = capsys.readouterr().out
    assert "ratio to BasicSR" in printed and "overlap 2" in printed


def test_host_half_smoke_replays_the_models_outputs(tmp_path, capsys):
    out = tmp_path / "host.json"
    threads = torch.get_num_threads()
    assert bench_neural_host.main(["--smoke", "--json", str(out)]) == 0
    assert torch.get_num_threads() == threads
    report = json.loads(out.read_text())
    assert report["pool_outputs"] == 5 * 2 * 19  # harder tier x 1 seed x 2 generations x 19 samples
    assert report["host_seconds_per_problem_generation"] > 0 and report["ratio"] > 0
    assert "NeuralSR host half" in capsys.readouterr().out
