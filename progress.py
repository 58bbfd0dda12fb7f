"""A tiny progress bar with ETA for long-running scripts.

    with Progress(total=1000, desc="expressions") as bar:
        for ...:
            bar.update(1)

prints ``expressions: 40% 400/1000 [00:02<00:03, 180.0/s]`` on stderr. On a
terminal the line is redrawn in place at most `refresh_per_second` times a
second; when the stream is not a terminal (a log file, a pipe, a Slurm job's
output, pytest) a full line is written every `log_interval` seconds (60 by
default: a job's log shows its progress and ETA, without thousands of
carriage returns), and `close()` writes the final line once. `disable=True`
prints nothing at all.
"""

from __future__ import annotations

import contextlib
import sys
import time


def format_seconds(seconds: float) -> str:
    """mm:ss, or h:mm:ss from one hour on; '?' when unknown."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or inf
        return "?"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class Progress:
    """Counts work done out of `total` and shows percentage, rate and ETA."""

    def __init__(self, total: int | None, desc: str = "", *, disable: bool = False,
                 stream=None, refresh_per_second: float = 5.0, log_interval: float = 60.0,
                 clock=time.monotonic):
        self.total = total
        self.desc = desc
        self.count = 0
        self.disable = disable
        self.stream = sys.stderr if stream is None else stream
        self.interactive = not disable and _is_terminal(self.stream)
        self.interval = 1.0 / refresh_per_second
        self.log_interval = log_interval
        self.clock = clock
        self.start = clock()
        self.last_draw = -float("inf")
        self.last_log = self.start
        self.drawn_width = 0  # of the line on the terminal, to blank leftovers of a longer one
        self.closed = False

    def update(self, n: int = 1) -> None:
        """Record `n` more units of work; redraw if the terminal line is stale (off a terminal: a line per
        `log_interval` seconds)."""
        self.count += n
        if self.interactive:
            now = self.clock()
            if now - self.last_draw >= self.interval:
                self.last_draw = now
                self._redraw(self.line(now), end="")
        elif not self.disable:
            now = self.clock()
            if now - self.last_log >= self.log_interval:
                self.last_log = now
                self._write(self.line(now) + "\n")

    def line(self, now: float | None = None) -> str:
        """The current status text, e.g. 'desc: 40% 400/1000 [00:02<00:03, 180.0/s]'."""
        elapsed = (self.clock() if now is None else now) - self.start
        rate = self.count / elapsed if elapsed > 0 else float("nan")
        prefix = f"{self.desc}: " if self.desc else ""
        if self.total:
            percent = 100.0 * self.count / self.total
            remaining = (self.total - self.count) / rate if rate > 0 else float("nan")
            return (f"{prefix}{percent:.0f}% {self.count}/{self.total} "
                    f"[{format_seconds(elapsed)}<{format_seconds(remaining)}, {_rate(rate)}]")
        return f"{prefix}{self.count} [{format_seconds(elapsed)}, {_rate(rate)}]"

    def close(self) -> None:
        """Print the final line (once) and end it with a newline."""
        if self.closed:
            return
        self.closed = True
        if self.interactive:
            self._redraw(self.line(), end="\n")
        elif not self.disable:
            self._write(self.line() + "\n")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _redraw(self, text: str, end: str) -> None:
        padding = " " * max(0, self.drawn_width - len(text))
        self.drawn_width = len(text)
        self._write("\r" + text + padding + end)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _bar_switches(library: str) -> tuple:
    """(is enabled, disable, enable) of a Hugging Face library's own progress bars, imported on use."""
    if library == "transformers":
        from transformers.utils import logging as hf_logging

        return hf_logging.is_progress_bar_enabled, hf_logging.disable_progress_bar, hf_logging.enable_progress_bar
    if library == "datasets":
        import datasets

        return datasets.is_progress_bar_enabled, datasets.disable_progress_bars, datasets.enable_progress_bars
    raise ValueError(f"unknown library {library!r}: transformers or datasets")


@contextlib.contextmanager
def library_bars_off(off: bool = True, library: str = "transformers"):
    """With `off`, a library's own progress bars (transformers: loading and writing weights; datasets: reading
    and tokenizing) are silenced for the `with` body and restored after it: scripts run in-process (dagger.py's
    stages, the tests) must not leave them off for their caller."""
    if not off:
        yield
        return
    is_enabled, disable, enable = _bar_switches(library)
    enabled = is_enabled()
    disable()
    try:
        yield
    finally:
        if enabled:
            enable()


def _rate(rate: float) -> str:
    return f"{rate:.1f}/s" if rate == rate else "?/s"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
