"""Calling a script's main(argv) in-process, as a shell would see it."""

import contextlib
import io


def run_main(module, argv):
    """(exit code, stdout, stderr) of module.main(argv), argparse exits included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()
