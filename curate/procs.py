"""The processes a curate process starts end when it ends, however it ends (SIGKILL included); SIGINT and
SIGTERM stop it cleanly.

Linux signals a child when its parent dies if the child asked for it (`prctl(PR_SET_PDEATHSIG)`), but prctl(2)
documents that the signal comes when the *thread* that started the child ends (the 6.18 kernel this was tested
on waited for the whole process), so it is armed only where that thread lives as long as its process:
- a child forked by the main thread of a tied process (`tie_children`; datatrove's `multiprocess.Manager`)
  arms it from an `os.register_at_fork` hook (`die_with_parent`); one forked by another thread watches its
  parent's pid from a thread instead (`watch_parent`);
- the forkserver of a pool (datatrove's LocalPipelineExecutor uses one) preloads `curate.procs_preload`:
  the forkserver dies with the tied process, and every worker it forks (it has one thread) with the forkserver;
- a spawned pool worker (train's fits; `tied_pool`) calls `watch_parent` as the pool's initializer: a
  pool spawns replacement workers from its worker-handler thread, which ends before the pool stops its workers;
- a server that datatrove `exec`s (`vllm serve`) gets a keeper process (`keep`) that stops the server and its
  children when the process that started it ends;
- multiprocessing's resource trackers end by themselves once every process holding their pipe has ended.
Tied children ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and the curate process,
which stops on it, stops its children itself. A tied pool starts its workers with SIGINT and SIGTERM blocked
(a signal mask survives exec), so that a Ctrl-C cannot interrupt their start-up either; and the curate process
puts off stopping while its main thread is starting a pool's workers, which would be left half-started, or is
in a finalizer (`__del__`), where Python would drop the stop. A stopped process that has not ended
STOP_DEADLINE_S later exits anyway: multiprocessing's `Pool.terminate()` (datatrove's pools) hangs for ever when
it stopped a worker that was holding the lock of the pool's result queue.
A forkserver worker still unpickling its pool's semaphores when the stopped pool unlinks them exits (status 1)
without a traceback (`quiet_when_the_pool_is_gone`, installed by the preload).
(Left open: a Ctrl-C in the first tenth of a second of a forkserver or a resource tracker interrupts it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_S = 0.2  # how often a watching thread or a keeper looks at its parent
GRACE_S = 5.0  # how long a kept server has to stop after SIGTERM before it and its children are killed
POOL_STOP_S = 3.0  # how long a tied pool's terminate() may take before it is left to the process's end
STOP_DEADLINE_S = 8.0  # how long a stopped process may take to clean up before it exits without finishing that
PRELOAD = "curate.procs_preload"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# in multiprocessing and multiprocess: starting a process or a pool, and Finalize (run by weakref callbacks)
NO_STOP_IN_MULTIPROCESSING = {("process.py", "start"), ("pool.py", "__init__"), ("util.py", "__call__")}


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM asked this process to stop (a KeyboardInterrupt, so that pools and event loops unwind
    as on Ctrl-C); `status` is the exit status a shell gives a process ended by that signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name
        self.status = 128 + signum


def _no_stop_here(frame) -> bool:
    """Whether the thread at `frame` is starting a multiprocessing process or pool (stopped there, a worker would be
    left half-started), or is in a finalizer (`__del__` or a weakref callback: Python prints an exception raised
    there as "Exception ignored in" and drops it, and the stop would be lost)."""
    while frame is not None:
        code = frame.f_code
        place = (os.path.basename(code.co_filename), code.co_name)
        if code.co_name == "__del__" or place == ("weakref.py", "__call__") or (
                "multiprocess" in code.co_filename and place in NO_STOP_IN_MULTIPROCESSING):
            return True
        frame = frame.f_back
    return False


def _exit_cut_short(signum: int) -> None:
    print(f"curate stopped by {signal.Signals(signum).name}; its clean-up took over {STOP_DEADLINE_S:.0f}s and was "
          "cut short (a stopped pool can hang); run the same command again to resume", file=sys.stderr, flush=True)
    os._exit(128 + signum)


_deadline: threading.Timer | None = None


def _raise_stopped(signum, frame):
    global _deadline
    if _no_stop_here(frame):  # ask again shortly
        again = threading.Timer(POLL_S, os.kill, (os.getpid(), signum))
        again.daemon = True
        again.start()
        return
    if _deadline is None:  # multiprocessing's Pool.terminate() hangs when it stopped a worker that held a queue lock
        _deadline = threading.Timer(STOP_DEADLINE_S, _exit_cut_short, (signum,))
        _deadline.daemon = True
        _deadline.start()
    raise Stopped(signum)


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM raise `Stopped` in the main thread (once it is neither starting processes nor in a
    finalizer); a process still cleaning up STOP_DEADLINE_S after that exits anyway, with the same status."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stopped)


def run_coroutine(coroutine):
    """`asyncio.run(coroutine)`, except that in the main thread SIGINT or SIGTERM cancels the coroutine's task, lets
    it clean up as it does when cancelled, and then raises `Stopped` (asyncio.run, interrupted, cancels every task
    at once: datatrove's inference runner then cannot close its request cache, whose thread keeps the process
    alive). A second signal raises `Stopped` at once."""
    received = []

    async def main():
        task, loop = asyncio.current_task(), asyncio.get_running_loop()

        def cancel(signum, frame):
            if received:
                raise Stopped(signum)
            received.append(signum)
            loop.call_soon_threadsafe(task.cancel)

        handlers = {signum: signal.signal(signum, cancel) for signum in STOP_SIGNALS}
        try:
            return await coroutine
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(coroutine)
    try:
        result = asyncio.run(main())
    except asyncio.CancelledError:
        if not received:
            raise
        result = None
    if received:  # also when the coroutine took the cancellation and returned
        raise Stopped(received[0])
    return result


def _ignore_ctrl_c() -> None:
    """Ignore SIGINT, and take SIGTERM again if it was blocked at the start (`tied_pool`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def die_with_parent(parent_pid: int) -> None:
    """In a child: be killed (SIGKILL) when the thread that started it ends, at once if the process `parent_pid`
    has ended already; ignore SIGINT."""
    _ignore_ctrl_c()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def quiet_when_the_pool_is_gone(kind, value, tb, default=sys.excepthook) -> None:
    """`sys.excepthook` of a forkserver's workers: a worker whose pool was stopped, and its semaphores unlinked,
    while the worker was unpickling them (FileNotFoundError in SemLock.__setstate__) ends without a traceback;
    every other error is printed as before."""
    import traceback

    frames = [frame.f_code for frame, _ in traceback.walk_tb(tb)]
    if not (issubclass(kind, FileNotFoundError) and frames and frames[-1].co_name == "__setstate__"
            and os.path.basename(frames[-1].co_filename) == "synchronize.py"):
        default(kind, value, tb)


def watch_parent(parent_pid: int) -> None:
    """In a child: be killed (SIGKILL) within POLL_S of the end of the process `parent_pid`, by a daemon thread
    (for children of a thread that may end before its process); ignore SIGINT."""
    _ignore_ctrl_c()

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="curate-watch-parent", daemon=True).start()


_forking: dict[int, tuple[int, bool]] = {}  # per forking thread: the process's pid, whether it is the main thread


def _before_fork() -> None:
    _forking[threading.get_ident()] = (os.getpid(), threading.current_thread() is threading.main_thread())


def _after_fork_in_child() -> None:
    parent_pid, main_thread = _forking[threading.get_ident()]  # the forking thread's entry (same ident in the child)
    (die_with_parent if main_thread else watch_parent)(parent_pid)


_tied = False


def tie_children() -> None:
    """From now on, every child this process forks, and the forkservers it starts with their workers, end when
    it ends (see the module's docstring). Idempotent; Linux only (elsewhere it does nothing)."""
    global _tied
    if _tied or not sys.platform.startswith("linux"):
        return
    import multiprocess  # datatrove's pools
    import multiprocessing

    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    for context in (multiprocess, multiprocessing):  # multiprocessing's default is forkserver from Python 3.14
        context.set_forkserver_preload(["__main__", PRELOAD])
    _tied = True


def _start_tied_worker(parent_pid: int, initializer, initargs: tuple) -> None:
    watch_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def tied_pool(context, processes: int, initializer=None, initargs: tuple = (), **kwargs):
    """`context.Pool(processes, initializer, initargs, **kwargs)` whose workers end with this process and ignore
    Ctrl-C from their start (see the module's docstring); used as `with tied_pool(...) as pool:`, it is terminated
    on leaving. `context` is one of multiprocessing's.

    Terminating a pool hangs when it comes while the pool is pickling a large task (its task thread then writes
    into a pipe that nobody reads any more), after it has stopped the workers: it is given POOL_STOP_S, then left
    to daemon threads that end with the process."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # now: starting it later would unblock the signals (it blocks them itself)
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pool = context.Pool(processes, initializer=_start_tied_worker, initargs=(os.getpid(), initializer, initargs),
                            **kwargs)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)  # a stop signal that came meanwhile is raised here
        yield pool
    finally:
        stopper = threading.Thread(target=pool.terminate, name="curate-pool-stop", daemon=True)
        stopper.start()
        stopper.join(POOL_STOP_S)


def keep(pid: int) -> subprocess.Popen:
    """Start a keeper: when this process ends, it stops process `pid` (SIGTERM; after GRACE_S, SIGKILL to it and
    its descendants); it ends by itself when `pid` ends first."""
    return subprocess.Popen([sys.executable, "-m", __name__, str(pid), str(os.getpid())], stdin=subprocess.DEVNULL,
                            start_new_session=True)  # out of reach of a terminal's Ctrl-C


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a running process (not a zombie), from /proc; None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return None if fields[0] in "ZX" else (int(fields[1]), int(fields[19]))


def _descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of the running descendants of process `pid`."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            children.setdefault(stat[0], []).append((int(name), stat[1]))
    found, todo = {}, [pid]
    while todo:
        for child, start in children.get(todo.pop(), []):
            found[child] = start
            todo.append(child)
    return found


def _is_running(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start


def _stop_tree(pid: int, start: int) -> None:
    """SIGTERM to `pid`; after GRACE_S (or once it ended), SIGKILL to it and to every descendant seen meanwhile."""
    tree = {pid: start, **_descendants(pid)}
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and _is_running(pid, start):
        tree.update(_descendants(pid))
        time.sleep(POLL_S)
    for member, member_start in tree.items():
        if _is_running(member, member_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)


def _keeper(pid: int, parent_pid: int) -> None:
    """The keeper process of `keep`."""
    stat = _stat(pid)
    if stat is None:
        return
    while os.getppid() == parent_pid:
        if not _is_running(pid, stat[1]):
            return
        time.sleep(POLL_S)
    _stop_tree(pid, stat[1])


if __name__ == "__main__":
    _keeper(int(sys.argv[1]), int(sys.argv[2]))
