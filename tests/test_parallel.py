"""parallel.py: worker pools that start clean of the parent's locks, and workers that end with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import parallel

REPO = Path(__file__).resolve().parent.parent
HELD = threading.Lock()


def take_the_lock(_item) -> str:
    """In a worker: whether the module lock HELD can be taken."""
    if not HELD.acquire(timeout=5):
        return "blocked"
    HELD.release()
    return "free"


def test_workers_do_not_inherit_locks_held_by_other_threads():
    # A forked worker gets a copy of HELD taken by the holder thread, which does
    # not exist in the worker: it would wait forever (here: report "blocked").
    taken, release = threading.Event(), threading.Event()

    def hold():
        with HELD:
            taken.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        taken.wait()
        with parallel.pool(2) as pool:
            assert pool.map(take_the_lock, range(2)) == ["free", "free"]
    finally:
        release.set()
        holder.join()


def test_parallel_map_keeps_item_order_for_any_worker_count():
    items = list(range(37))
    assert list(parallel.parallel_map(abs, [-i for i in items], workers=2)) == items
    assert list(parallel.parallel_map(abs, [-i for i in items], workers=1)) == items


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


SCRIPT = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import parallel
if __name__ == "__main__":
    pool = parallel.pool(1, initializer=parallel.exit_with_parent)
    print(pool.apply(os.getpid), flush=True)
    pool.apply_async(time.sleep, (120,))
    time.sleep(120)
"""


def test_a_busy_worker_exits_soon_after_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert running(worker)
        time.sleep(0.5)  # the worker is inside its two-minute task now
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 20
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if running(worker):
        os.kill(worker, signal.SIGKILL)
        raise AssertionError(f"worker {worker} outlived its SIGKILLed parent by 20 s")



HEAVY = """
with open("imports.txt", "a") as log:
    log.write(__name__ + "\\n")
"""

PRELOAD_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import heavy
import parallel
with open("imports.txt", "a") as log:
    log.write(__name__ + "\\n")
if __name__ == "__main__":
    print(parallel.preload_modules())
    for _ in range(2):
        pool = parallel.pool(2)
        pool.map(abs, range(4))
        pool.close()  # not terminate(): a worker still starting would die before it logs
        pool.join()
"""


def test_the_forkserver_imports_the_scripts_modules_once_for_every_pool(tmp_path):
    # heavy.py stands for the modules a script imports; the workers run only the script's body.
    (tmp_path / "heavy.py").write_text(HEAVY)
    (tmp_path / "preloading.py").write_text(PRELOAD_SCRIPT)
    result = subprocess.run([sys.executable, "preloading.py", str(REPO)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['heavy']"
    names = (tmp_path / "imports.txt").read_text().split()
    assert sorted(names) == sorted(["heavy", "__main__", "heavy"] + ["__mp_main__"] * 4)

