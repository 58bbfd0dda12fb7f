"""bench/bench_traces.py at a tiny size: every number it reports, and 1 and 2 workers agreeing."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_traces  # noqa: E402


def test_tiny_run_reports_the_pool_start_once_and_identical_records(tmp_path, capsys):
    out = tmp_path / "traces.json"
    assert bench_traces.main(["--n_expressions", "4", "--num_generations", "10", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["identical"] is True and report["n_expressions"] == 4
    for key in ("bare_seconds", "traced_seconds", "two_worker_seconds", "pool_start_seconds", "file_bytes"):
        assert report[key] > 0, key
    # The start is paid once: counted in the scaling, added once to the projection.
    assert report["scaling"] == report["traced_seconds"] / (report["pool_start_seconds"]
                                                            + report["two_worker_seconds"])
    repeated = report["projected_seconds"] - report["pool_start_seconds"]
    assert abs(repeated - 250 * 100 * (report["two_worker_seconds"] + report["save_seconds"])) < 1e-6 * repeated
    assert "process-pool start, once" in capsys.readouterr().out
