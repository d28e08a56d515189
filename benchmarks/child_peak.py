"""Run one `pocketsd` command in a child process and measure it: wall, CPU and the child's own peak RSS (VmHWM).

Why a wrapper process instead of `os.wait4`'s `ru_maxrss`: Linux carries the parent's peak across fork and exec
into the child's rusage, so a driver that built a model first reports its own peak as the child's. And why not
only polling /proc/PID/status: VmHWM is gone once the child has exited (a zombie has no memory map), so a poll
misses a peak reached in the last interval — compress writes its files there. So the child is
`python child_peak.py REPORT -m pocketsd ARGS`: it runs pocketsd's entry point in-process and, at exit, writes its
own VmHWM to REPORT. The poll is kept as the fallback (a child killed for memory writes no report) and to add up
the memory of the child and its worker processes (k-means workers are separate processes with their own memory) as
PSS, not RSS: forked workers share the parent's pages, which summed RSS would count once per process.

    python benchmarks/child_peak.py REPORT -m pocketsd compress --model M --out O
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

POLL_SECONDS = 0.5


def status_bytes(status_text: str, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmHWM, VmRSS, ...) in bytes; None when absent (a zombie has none)."""
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"{field} in unexpected unit {unit!r}")
            return int(value) * 1024
    return None


def _read_status(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None


def _pss(pid: int) -> int:
    """Proportional set size (bytes): each shared page counted as a fraction of the processes sharing it."""
    try:
        return status_bytes(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss") or 0
    except OSError:
        return 0


def _children(pid: int) -> list[int]:
    """Direct and indirect children (Linux's /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


class Poll:
    """Samples the child's VmHWM and VmRSS, and the summed PSS of it and its descendants, until it exits."""

    def __init__(self, pid: int):
        self.pid, self.hwm, self.tree_peak, self.timeline = pid, 0, 0, []
        self.t0 = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            text = _read_status(self.pid)
            hwm = None if text is None else status_bytes(text, "VmHWM")
            if hwm is None:
                return
            self.hwm = max(self.hwm, hwm)
            rss = status_bytes(text, "VmRSS") or 0
            tree = _pss(self.pid) + sum(_pss(c) for c in _children(self.pid))
            self.tree_peak = max(self.tree_peak, tree)
            self.timeline.append((round(time.time() - self.t0, 1), rss, tree))
            time.sleep(POLL_SECONDS)

    def join(self) -> None:
        self._thread.join(timeout=2 * POLL_SECONDS)


def wrapped_argv(report: Path, argv: list[str], module: str = "pocketsd") -> list[str]:
    """The child's command line: this file as a wrapper around `python -m MODULE ARGV`."""
    return [sys.executable, str(Path(__file__).resolve()), str(report), "-m", module, *argv]


def run_measured(argv: list[str], log: Path, module: str = "pocketsd") -> dict:
    """`python -m MODULE ARGV` (`pocketsd ARGV`) in a fresh process. peak_rss_bytes is the child's own VmHWM at exit (None if it wrote no
    report, e.g. killed); polled_hwm_bytes the poll's (a lower bound); tree_peak_bytes the polled peak of its PSS
    plus its descendants' (worker processes; shared pages counted once in all)."""
    report = log.with_suffix(".vmhwm.json")
    report.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(wrapped_argv(report, argv, module), stdout=out, stderr=subprocess.STDOUT, env=env)
        poll = Poll(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    poll.join()
    own = json.loads(report.read_text())["vmhwm_bytes"] if report.is_file() else None
    return {"argv": argv, "exit_code": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_bytes": own, "polled_hwm_bytes": poll.hwm, "tree_peak_bytes": poll.tree_peak,
            "rss_timeline": poll.timeline,
            "last_lines": log.read_text(errors="replace").strip().splitlines()[-3:]}


def _wrapper(report: str, module: str, args: list[str]) -> None:
    """Runs `python -m MODULE ARGS` in this process and records its VmHWM at exit (normal or SystemExit)."""
    import atexit
    import runpy

    def record() -> None:
        text = Path("/proc/self/status").read_text()
        Path(report).write_text(json.dumps({"vmhwm_bytes": status_bytes(text, "VmHWM")}))

    atexit.register(record)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit("usage: child_peak.py REPORT -m MODULE [ARGS...]")
    _wrapper(sys.argv[1], sys.argv[3], sys.argv[4:])
