"""Small datasets made by the real pipeline, for tests that need a traces file to start from."""

from pathlib import Path

import file_io
import generate_expressions as ge
import generate_traces as gt


def expressions_and_traces(folder: Path, n_expressions: int, population_size: int, num_generations: int,
                           seed: int = 0, **expression_options) -> tuple[Path, Path]:
    """(expressions file, BasicSR traces file) in `folder`; `expression_options` go to ExpressionParams."""
    params = ge.ExpressionParams(binary_ops=("+", "-", "*", "/"), **expression_options)
    records, metadata = ge.generate_expressions(n_expressions, params, seed=seed, argv=["generate_expressions.py"])
    expressions = file_io.save(folder / f"expr_{n_expressions}.pkl.gz", "expressions", records, metadata)
    traces = folder / f"gen{num_generations}_expr_{n_expressions}.pkl.gz"
    status = gt.main(["--expressions_file", str(expressions), "--output", str(traces), "--quiet",
                      "--population_size", str(population_size), "--num_generations", str(num_generations)])
    assert status == 0
    return expressions, traces
