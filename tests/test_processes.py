"""A curate process leaves no process behind however it ends, and SIGINT/SIGTERM stop it cleanly (issue 19).

Each command runs for real (`python -m curate ...` in its own session, see tests/processes.py) while its
descendants are recorded: the fastText fit workers train spawns, datatrove's Manager, forkserver and pool workers
score runs, the `vllm serve` datatrove starts for label (tests/bin/vllm maps it onto llama.cpp). It is killed
mid-work, and within 10 s nothing it started may still run. The process-level pieces of `curate.procs` (children
forked by a thread, the keeper of an exec'd server, stopping while pools start or pickle a large task) are tested
on their own with small scripts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate import procs
from tests.conftest import BUNDLED_DOCS, BUNDLED_LABELS
from tests.helpers import REPO, write_job
from tests.llm_server import RecordingProxy, require_llama_cpp
from tests.processes import Watched, kill_group, running, still_running

SMALL_TRAIN = {"labels": str(BUNDLED_LABELS), "epoch": 5, "cv_folds": 2, "dim": 16, "bucket": 20000, "workers": 2}
LABEL_ARGS = ["--model", "smollm2", "--max-doc-tokens", "40", "--max-tokens", "48", "--max-quotes", "0",
              "--concurrency", "1", "--records-per-chunk", "1"]
LABELS_FILE = Path("labels") / "labels.parquet"  # in the --out folder
STOP_WITHIN_S = 10


def _run_job(tmp_path):
    """A dry-run-like job on the bundled documents: train (fit workers), score (a pool of 2), mix."""
    return write_job(tmp_path / "job.yaml", name="procs", output_dir=str(tmp_path / "out"),
                     input={"paths": [str(BUNDLED_DOCS)]}, train=SMALL_TRAIN,
                     score={"tasks": 2, "workers": 2, "calibration_docs": 50},
                     filters={"dedup": {"enabled": False}},
                     mix={"method": "proportional", "token_budget": 200000, "shard_rows": 100})


def _kill_when(run: Watched, condition, what: str) -> list[str]:
    """SIGKILL `run` once `condition()` holds; the command lines of its processes at that moment."""
    run.wait_until(condition, what)
    running_then = run.live_cmdlines()
    run.send(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    return running_then


def _count(watched: Watched, text: str) -> int:
    return sum(text in line for line in watched.live_cmdlines())


PHASES = {  # a moment mid-work of each phase of `curate run`, from the processes running then
    "train": lambda w: _count(w, "multiprocessing.spawn") >= 1,  # a fastText fit worker
    "score": lambda w: _count(w, "multiprocess.forkserver") >= 3,  # datatrove's forkserver and its 2 workers
}


@pytest.fixture()
def watched_runs():
    """Commands started by a test; whatever of them is left when it fails is killed."""
    runs: list[Watched] = []
    yield runs
    for watched in runs:
        kill_group(watched)


def _start(runs, *args, logs, env=None) -> Watched:
    runs.append(Watched(*args, logs=logs, env=env))
    return runs[-1]


def _stderr_lines(watched: Watched) -> list[str]:
    return watched.stderr().strip().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_of_run_leaves_no_process(phase, watched_runs, tmp_path):
    run = _start(watched_runs, "run", _run_job(tmp_path), logs=tmp_path)
    run.wait_until(lambda: PHASES[phase](run), f"{phase} mid-work")
    running_then = run.live_cmdlines()
    run.send(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    assert run.left(timeout=STOP_WITHIN_S) == [], f"left behind; running at the kill: {running_then}"
    if phase == "score":  # the pool's Manager (a fork of curate) was among them
        assert any(line.endswith(f"curate run {tmp_path / 'job.yaml'}") for line in running_then), running_then


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_ctrl_c_stops_run_with_one_line_and_no_traceback(phase, watched_runs, tmp_path):
    run = _start(watched_runs, "run", _run_job(tmp_path), logs=tmp_path)
    run.wait_until(lambda: PHASES[phase](run), f"{phase} mid-work")
    run.send(signal.SIGINT, group=True)  # what a terminal's Ctrl-C does: every process of the group gets it
    sent = time.monotonic()
    assert run.wait() == 130, run.stderr()[-3000:]
    print(f"Ctrl-C during {phase}: stopped {time.monotonic() - sent:.1f}s after the signal")
    assert time.monotonic() - sent < STOP_WITHIN_S
    done = "stages done: train" if phase == "score" else "no stage finished"
    assert _stderr_lines(run)[-1] == f"curate run stopped by SIGINT: {done}; run the same command again to resume"
    assert "Traceback" not in run.stderr() and sum("stopped by" in line for line in _stderr_lines(run)) == 1
    assert run.left(timeout=STOP_WITHIN_S) == []


@pytest.mark.slow
def test_sigterm_stops_run_in_seconds_and_the_same_command_resumes(watched_runs, tmp_path):
    job = _run_job(tmp_path)
    run = _start(watched_runs, "run", job, logs=tmp_path)
    run.wait_until(lambda: PHASES["score"](run), "score mid-work")
    run.send(signal.SIGTERM)
    sent = time.monotonic()
    assert run.wait() == 143, run.stderr()[-3000:]
    print(f"SIGTERM during score: stopped {time.monotonic() - sent:.1f}s after the signal")
    assert time.monotonic() - sent < STOP_WITHIN_S
    assert _stderr_lines(run)[-1] == ("curate run stopped by SIGTERM: stages done: train; "
                                      "run the same command again to resume")
    assert "Traceback" not in run.stderr()
    assert run.left(timeout=STOP_WITHIN_S) == []
    assert not (tmp_path / "out" / "logs" / "score" / "stats.json").exists()

    again = _start(watched_runs, "run", job, logs=tmp_path)
    assert again.wait(timeout=600) == 0, again.stderr()[-3000:]
    assert "skipped train:" in again.stdout() and "ran: score, mix, report;" in again.stdout()
    assert again.left(timeout=STOP_WITHIN_S) == []


@pytest.fixture()
def label_sample(tmp_path):
    """The 4 shortest GSM8K documents of the bundled reference labels, as a sample file."""
    gold = pq.read_table(BUNDLED_LABELS)
    gsm = gold.filter(pc.starts_with(gold["url"], "gsm8k"))
    path = tmp_path / "sample.parquet"
    pq.write_table(gsm.take(pc.sort_indices(pc.utf8_length(gsm["text"]))).slice(0, 4).select(["url", "text"]), path)
    return path


@pytest.mark.slow
def test_sigkill_of_label_leaves_no_process(llama_server, label_sample, watched_runs, tmp_path):
    proxy = RecordingProxy(llama_server.url).start()
    try:
        label = _start(watched_runs, "label", label_sample, "--out", tmp_path / "labels", "--endpoint-url",
                       proxy.url, *LABEL_ARGS, logs=tmp_path)
        running_then = _kill_when(label, lambda: proxy.records, "a request to the server")
    finally:
        proxy.stop()
    assert running_then, "the labeler had no child process to test"  # datatrove's Manager
    assert label.left(timeout=STOP_WITHIN_S) == [], f"left behind; running at the kill: {running_then}"


@pytest.mark.slow
def test_sigterm_stops_label_and_the_same_command_resumes(llama_server, label_sample, watched_runs, tmp_path):
    proxy = RecordingProxy(llama_server.url).start()
    out = tmp_path / "labels"
    command = ["label", label_sample, "--out", out, "--endpoint-url", proxy.url, *LABEL_ARGS]
    try:
        label = _start(watched_runs, *command, logs=tmp_path)
        label.wait_until(lambda: len(proxy.answered()) >= 1 and len(proxy.records) >= 2, "a second request")
        label.send(signal.SIGTERM)
        sent = time.monotonic()
        assert label.wait() == 143, label.stderr()[-3000:]
        stopped_after = time.monotonic() - sent
        lines = _stderr_lines(label)
        n_before = len(proxy.records)
        again = _start(watched_runs, *command, logs=tmp_path)
        assert again.wait(timeout=600) == 0, again.stderr()[-3000:]
    finally:
        proxy.stop()
    print(f"SIGTERM while labeling: stopped {stopped_after:.1f}s after the signal")
    assert stopped_after < STOP_WITHIN_S
    done = int(lines[-1].split(": ")[1].split(" of ")[0])
    assert lines[-1] == (f"curate label stopped by SIGTERM: {done} of 4 documents labeled; "
                         f"run the same command again to resume")
    assert done >= 1 and "Traceback" not in label.stderr()
    # the re-run asks only the documents not labeled before, each once
    assert len(proxy.records) - n_before == 4 - done
    assert pq.read_table(out / LABELS_FILE).num_rows == 4
    assert f"this run {4 - done} documents" in again.stdout()
    assert label.left(timeout=STOP_WITHIN_S) == [] and again.left(timeout=STOP_WITHIN_S) == []


@pytest.mark.slow
def test_sigkill_of_label_stops_the_vllm_server_datatrove_started(label_sample, watched_runs, tmp_path):
    """server_type vllm: datatrove execs `vllm serve` (tests/bin/vllm: llama.cpp's server); killing curate
    stops it through its keeper (SIGTERM, then SIGKILL after procs.GRACE_S)."""
    require_llama_cpp()
    from curate.tokens import smollm2_gguf_path

    env = {**os.environ, "PATH": os.pathsep.join([str(REPO / "tests" / "bin"), os.path.dirname(sys.executable),
                                                  os.environ["PATH"]]),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests" / "bin" / "pyshim"),
                                                       os.environ.get("PYTHONPATH")])),
           "VLLM_COMPILE_LOCK_DIR": str(tmp_path / "locks")}
    out = tmp_path / "labels"
    label = _start(watched_runs, "label", label_sample, "--out", out, "--server-type", "vllm", "--model",
                   smollm2_gguf_path(), "--max-model-len", "2048", "--server-ready-timeout", "180",
                   "--engine", "llama.cpp", "--structured-output", "json_object", *LABEL_ARGS[2:], logs=tmp_path,
                   env=env)

    def server_up() -> bool:
        logs = list((out / "logs" / "label" / "work" / "server_logs").glob("*.log"))
        return _count(label, "llama_cpp.server") == 1 and any("Uvicorn running" in p.read_text() for p in logs)

    label.wait_until(server_up, "the server up")
    label.send(signal.SIGKILL)
    killed = time.monotonic()
    assert label.wait() == -signal.SIGKILL
    assert label.left(timeout=procs.GRACE_S + STOP_WITHIN_S) == []
    print(f"the vllm server and its keeper ended {time.monotonic() - killed:.1f}s after curate was killed")


@pytest.mark.slow
def test_sigkill_of_bootstrap_while_it_labels_leaves_no_process(llama_server, watched_runs, tmp_path):
    gold = pq.read_table(BUNDLED_LABELS)
    gsm = gold.filter(pc.starts_with(gold["url"], "gsm8k"))
    pool = gsm.take(pc.sort_indices(pc.utf8_length(gsm["text"]))).slice(0, 6)
    pq.write_table(pool.select(["url", "text"]), tmp_path / "pool.parquet")
    pq.write_table(gold.filter(pc.invert(pc.is_in(gold["id"], pool["id"]))), tmp_path / "initial.parquet")
    proxy = RecordingProxy(llama_server.url).start()
    job = write_job(tmp_path / "job.yaml", name="procs-bootstrap", output_dir=str(tmp_path / "out"),
                    input={"paths": [str(tmp_path / "pool.parquet")]},
                    train={**SMALL_TRAIN, "labels": str(tmp_path / "initial.parquet")},
                    score={"tasks": 2, "workers": 2, "calibration_docs": 20},
                    label={"endpoint_url": proxy.url, "model": "smollm2", "structured_output": "json_object",
                           "max_doc_tokens": 40, "max_tokens": 48, "concurrency": 1, "records_per_chunk": 1},
                    bootstrap={"rounds": 1, "per_round": 2, "uncertain_fraction": 0.5})
    try:
        bootstrap = _start(watched_runs, "bootstrap", job, logs=tmp_path)
        running_then = _kill_when(bootstrap, lambda: proxy.records, "a labeling request of round 1")
    finally:
        proxy.stop()
    assert bootstrap.left(timeout=STOP_WITHIN_S) == [], f"left behind; running at the kill: {running_then}"
    # by then it had run fit workers (round 0) and a scoring pool (round 1): all of them ended
    started = "\n".join(bootstrap.started)
    assert "multiprocessing.spawn" in started and "multiprocess.forkserver" in started, started


POOLS = """
import faulthandler
import sys
import multiprocess
from curate import procs


def square(x):
    return x * x


if __name__ == "__main__":
    faulthandler.dump_traceback_later(40, exit=True)  # a hang shows where it hangs
    procs.tie_children()
    procs.stop_on_signals()
    print("ready", flush=True)
    try:
        while True:  # datatrove's kind of pool, started and stopped over and over
            with multiprocess.get_context("forkserver").Pool(2) as pool:
                pool.map(square, range(4))
    except procs.Stopped as stop:
        sys.exit(stop.status)
"""


@pytest.mark.slow
def test_a_stop_signal_while_pools_start_leaves_no_half_started_worker(tmp_path):
    """Stopped inside Pool() a forkserver worker would wait for data its parent never sends, or for semaphores
    it deletes, and print a traceback: the stop is put off until the pool has started."""
    for delay in (0.5, 0.8, 1.1, 1.4, 1.7, 2.0, 2.3, 2.6):
        pools = _script(tmp_path, "pools", POOLS, stderr=subprocess.PIPE)
        assert pools.stdout.readline() == "ready\n"
        time.sleep(delay)
        stderr, _ = _sigterm(pools, timeout=60)
        assert pools.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]


FINALIZER = """
import sys, time
from curate import procs


class Slow:
    def __del__(self):
        print("finalizing", flush=True)
        time.sleep(1.0)


if __name__ == "__main__":
    procs.stop_on_signals()
    try:
        Slow()  # finalized at once, in the main thread
        while True:
            time.sleep(0.05)
    except procs.Stopped as stop:
        sys.exit(stop.status)
"""


def test_a_stop_signal_during_a_finalizer_is_put_off_not_lost(tmp_path):
    """Python drops an exception raised in `__del__` ("Exception ignored in"): a SIGTERM that comes while the main
    thread finalizes an object (as multiprocessing's connections are) stops the process once the finalizer is done."""
    script = _script(tmp_path, "finalizer", FINALIZER, stderr=subprocess.PIPE)
    assert script.stdout.readline() == "finalizing\n"
    stderr, _ = _sigterm(script, timeout=STOP_WITHIN_S)
    assert script.returncode == 143 and stderr == "", stderr[-3000:]


HANGING_CLEANUP = """
import sys, threading, time
from curate import procs

if __name__ == "__main__":
    procs.stop_on_signals()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(0.05)
    except procs.Stopped:
        threading.Event().wait()  # a clean-up that never ends, as a Pool.terminate() that hangs
"""


def test_a_clean_up_that_hangs_after_a_stop_signal_is_cut_short_with_the_stop_status(tmp_path):
    script = _script(tmp_path, "hanging", HANGING_CLEANUP, stderr=subprocess.PIPE)
    assert script.stdout.readline() == "ready\n"
    stderr, took = _sigterm(script, timeout=procs.STOP_DEADLINE_S + STOP_WITHIN_S)
    assert script.returncode == 143, stderr[-3000:]
    assert procs.STOP_DEADLINE_S <= took < procs.STOP_DEADLINE_S + 3
    assert stderr.splitlines() == [f"curate stopped by SIGTERM; its clean-up took over {procs.STOP_DEADLINE_S:.0f}s "
                                   "and was cut short (a stopped pool can hang); run the same command again to resume"]


def test_a_worker_whose_pools_semaphores_are_gone_ends_without_a_traceback_other_errors_print_one(capsys):
    """The forkserver workers' excepthook: the FileNotFoundError of unpickling a semaphore that the stopped pool
    has unlinked (a real SemLock rebuilt by a name that no longer exists) prints nothing; a FileNotFoundError
    anywhere else prints its traceback as before."""
    import multiprocess.synchronize

    gone = multiprocess.synchronize.SemLock.__new__(multiprocess.synchronize.SemLock)
    with pytest.raises(FileNotFoundError) as unpickling:
        gone.__setstate__((0, multiprocess.synchronize.SEMAPHORE, 1, f"/curate-gone-{os.getpid()}"))
    procs.quiet_when_the_pool_is_gone(unpickling.type, unpickling.value, unpickling.tb)
    assert capsys.readouterr().err == ""
    with pytest.raises(FileNotFoundError) as elsewhere:
        open(f"/nonexistent-{os.getpid()}")
    procs.quiet_when_the_pool_is_gone(elsewhere.type, elsewhere.value, elsewhere.tb)
    assert capsys.readouterr().err.startswith("Traceback")


BIG_TASKS = """
import multiprocessing, sys, time
from curate import procs


def work(lines):
    return len(lines)


if __name__ == "__main__":
    procs.stop_on_signals()
    lines = [f"__label__none word{i} " * 20 for i in range(100000)]  # about 30 MB pickled, as a fit's lines
    print("ready", flush=True)
    try:
        while True:
            with procs.tied_pool(multiprocessing.get_context("spawn"), 1, maxtasksperchild=1) as pool:
                for handle in [pool.apply_async(work, (lines,)) for _ in range(6)]:
                    handle.get()
    except procs.Stopped as stop:
        sys.exit(stop.status)
"""


@pytest.mark.slow
def test_a_stop_while_a_tied_pool_pickles_a_large_task_ends_in_seconds(tmp_path):
    """multiprocessing's Pool.terminate() hangs when it comes while a large task is being pickled (measured: 5 of
    15 stops here hung): `tied_pool` gives it procs.POOL_STOP_S."""
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0):
        pools = _script(tmp_path, "big", BIG_TASKS, stderr=subprocess.PIPE)
        assert pools.stdout.readline() == "ready\n"
        time.sleep(delay)
        stderr, took = _sigterm(pools, timeout=procs.POOL_STOP_S + STOP_WITHIN_S)
        assert pools.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
        assert took < procs.POOL_STOP_S + 3


def _sigterm(script: subprocess.Popen, timeout: float) -> tuple[str, float]:
    """SIGTERM to a `_script` and wait for its end: its stderr and the seconds it took to end; its process group
    is killed whatever happens (a hung script fails the test, it is not left running)."""
    script.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        _, stderr = script.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(script.pid, signal.SIGKILL)
    return stderr, time.monotonic() - sent


def _script(tmp_path, name: str, code: str, **popen):
    """Start `code` as a Python script (in its own session); its stdout lines are read as it runs."""
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    return subprocess.Popen([sys.executable, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


FORKS = """
import os, threading, time
from curate import procs

procs.tie_children()

def fork():
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    return pid

children = [fork()]
thread = threading.Thread(target=lambda: children.append(fork()))
thread.start()
thread.join()  # the thread that forked the second child has ended
print(*children, flush=True)
time.sleep(600)
"""


def test_children_forked_by_the_main_thread_or_by_an_ended_thread_end_with_their_process(tmp_path):
    """Where the parent-death signal follows the forking thread (prctl(2)), the second child would die with its
    thread if it relied on the signal: it watches its parent process instead."""
    parent = _script(tmp_path, "forks", FORKS)
    try:
        children = [psutil.Process(int(pid)) for pid in parent.stdout.readline().split()]
        time.sleep(2 * procs.POLL_S)
        assert len(running(children)) == 2
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert still_running(children, timeout=3) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)


KEEPER = """
import subprocess, sys, time
from curate import procs

STUBBORN = '''
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the grandchild inherits it across exec
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
time.sleep(600)
'''
server = subprocess.Popen([sys.executable, "-c", STUBBORN])
procs.keep(server.pid)
print(server.pid, flush=True)
time.sleep(600)
"""


def test_a_kept_server_that_ignores_sigterm_is_killed_with_its_children_when_its_starter_dies(tmp_path):
    parent = _script(tmp_path, "keeper", KEEPER)
    try:
        server = psutil.Process(int(parent.stdout.readline()))
        deadline = time.monotonic() + 30
        while not server.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = [server, *server.children(recursive=True)]
        [keeper] = [p for p in psutil.Process(parent.pid).children() if p.pid != server.pid]
        assert len(tree) == 2 and "curate.procs" in " ".join(keeper.cmdline())
        os.kill(parent.pid, signal.SIGKILL)
        killed = time.monotonic()
        parent.wait()
        assert still_running([*tree, keeper], timeout=procs.GRACE_S + 3) == []
        assert time.monotonic() - killed >= procs.GRACE_S - 1  # SIGTERM was ignored: killed after the grace time
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)


def test_a_keeper_ends_when_its_server_ends_first(tmp_path):
    parent = _script(tmp_path, "keeper", KEEPER)
    try:
        server = psutil.Process(int(parent.stdout.readline()))
        [keeper] = [p for p in psutil.Process(parent.pid).children() if p.pid != server.pid]
        server.kill()
        assert still_running([keeper], timeout=3) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
