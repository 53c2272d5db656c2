"""Watching the processes a `curate` command starts (psutil): its descendants recorded while it runs, and the
processes that carry an environment variable it was started with (which finds them even after they lost their
parent and were re-parented)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

from tests.helpers import REPO

MARK = "CURATE_TEST_PROCESS_MARK"


def marked(name: str, value: str) -> list[psutil.Process]:
    """The running processes (other than this one) whose environment holds `name=value`."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(name) == value:
                found.append(process)
        except psutil.Error:
            continue
    return found


def running(processes) -> list[psutil.Process]:
    """Those of `processes` that still run (a zombie has ended: only its parent has not reaped it yet)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"{process.pid} (ended)"


def still_running(processes, timeout: float) -> list[psutil.Process]:
    """Those of `processes` still running after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := running(processes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


class Watched:
    """A `python -m curate ...` run in its own session (so that a Ctrl-C can be sent to its process group, as a
    terminal does), its stdout/stderr in files; a thread records its descendants every 20 ms until it ends."""

    def __init__(self, *args, logs: Path, env: dict | None = None):
        self.mark = uuid.uuid4().hex
        self.stdout_path, self.stderr_path = logs / f"{self.mark}.out", logs / f"{self.mark}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "curate", *map(str, args)], cwd=REPO, stdout=out,
                                         stderr=err, env={**(env or os.environ), MARK: self.mark},
                                         start_new_session=True)
        self.root = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {}
        self.started: list[str] = []  # the command line of each descendant, when first seen
        self._recorder = threading.Thread(target=self._record, daemon=True)
        self._recorder.start()

    def _record(self) -> None:
        while self.proc.poll() is None:
            try:
                for child in self.root.children(recursive=True):
                    if child.pid not in self.seen:
                        self.seen[child.pid] = child
                        self.started.append(describe(child))
            except psutil.Error:
                return
            time.sleep(0.02)

    def live_cmdlines(self) -> list[str]:
        """Command lines of the recorded descendants that still run."""
        lines = []
        for process in running(list(self.seen.values())):
            try:
                lines.append(" ".join(process.cmdline()))
            except psutil.Error:
                continue
        return lines

    def wait_until(self, condition, what: str, timeout: float = 300) -> None:
        """Poll `condition()` until it holds; fail when the command ends first or it takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the command ended before {what}:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout}s"
            time.sleep(0.02)

    def send(self, signum: int, group: bool = False) -> None:
        """Send `signum` to the command (with `group`, to its whole process group, as a terminal's Ctrl-C)."""
        (os.killpg if group else os.kill)(self.proc.pid, signum)

    def wait(self, timeout: float = 120) -> int:
        returncode = self.proc.wait(timeout)
        self._recorder.join()
        return returncode

    def left(self, timeout: float = 10) -> list[str]:
        """What still runs `timeout` seconds after the command ended, of what it started: its recorded
        descendants and any process carrying its mark."""
        return [describe(p) for p in still_running([*self.seen.values(), *marked(MARK, self.mark)], timeout)]

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def kill_group(watched: Watched) -> None:
    """Clean-up after a failed test: SIGKILL what is left of a command's process group."""
    if watched.proc.poll() is None:
        watched.send(signal.SIGKILL, group=True)
    for process in running([*watched.seen.values(), *marked(MARK, watched.mark)]):
        process.kill()
