"""The ``deepspeed`` launcher's signal holes, closed on the rank side (``runtime.bind_to_launcher``), and the
``work_dir/status.json`` record that wrappers read instead of the launcher's exit status (``engine/status.py``).

Measured without the binding (``../shared/notes/deepspeed-cpu-slurm.md`` §4): SIGKILL of ``deepspeed.launcher.launch``
makes the ``deepspeed`` runner exit 0 and leaves both ranks training; SIGTERM to the runner alone ends the runner
(it forwards nothing to ``launch.py``) and leaves ``launch.py`` and the ranks training. With it, in both cases the
ranks get SIGTERM (the kernel's parent-death signal, resp. the watch thread on the runner), take the stop path --
finish the iteration, save a complete checkpoint, exit 3 -- and nothing of the run is left.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cluster_resilience import _live_processes_of, complete  # noqa: E402
from launching import REPO, STUBS, env as _env, finished  # noqa: E402,F401
from support import free_port  # noqa: E402

ITERS = 12


def test_status_records_finished_stopped_failed(tmp_path):
    """Unit level: the record written around a run, for each way it can end."""
    from vit_adapter_ds.engine.status import read_status, recorded
    from vit_adapter_ds.engine.faults import TrainingInterrupted

    with recorded(tmp_path / "ok") as info:
        assert read_status(tmp_path / "ok")["state"] == "running"
        info["iteration"] = 8
    rec = read_status(tmp_path / "ok")
    assert (rec["state"], rec["iteration"], rec["pid"]) == ("finished", 8, os.getpid())
    with pytest.raises(TrainingInterrupted):
        with recorded(tmp_path / "stop"):
            raise TrainingInterrupted(6, signal.SIGUSR1)
    rec = read_status(tmp_path / "stop")
    assert (rec["state"], rec["iteration"], rec["signal"], rec["exit_status"]) == ("stopped", 6, "SIGUSR1", 3)
    with pytest.raises(RuntimeError):
        with recorded(tmp_path / "bad"):
            raise RuntimeError("Connection closed by peer")
    rec = read_status(tmp_path / "bad")
    assert rec["state"] == "failed" and rec["error"] == "RuntimeError: Connection closed by peer"
    with recorded(tmp_path / "rank1", main=False):
        pass
    assert read_status(tmp_path / "rank1") is None
    assert not list(tmp_path.glob("*/.status.json.*"))  # no temporary file left


def test_a_stop_is_recorded_before_any_rank_can_exit(tmp_path):
    """The trainer's stop path writes ``stopped`` (rank 0) before the barrier that lets the ranks exit: under
    DeepSpeed's launch.py the first rank to exit (status 3) gets the others terminated, so a record left to rank 0's
    way out was lost now and then (status.json still ``running``: the run read as crashed). Here the record must
    exist before ``TrainingInterrupted`` leaves ``_stop``, i.e. without ``recorded`` around it."""
    from types import SimpleNamespace

    from vit_adapter_ds.engine.faults import TrainingInterrupted
    from vit_adapter_ds.engine.status import read_status
    from vit_adapter_ds.engine.trainer import Trainer

    trainer = SimpleNamespace(work_dir=tmp_path, log=SimpleNamespace(info=lambda *a: None, close=lambda: None))
    with pytest.raises(TrainingInterrupted):
        Trainer._stop(trainer, 8, signal.SIGTERM)
    rec = read_status(tmp_path)
    assert (rec["state"], rec["iteration"], rec["signal"], rec["exit_status"]) == ("stopped", 8, "SIGTERM", 3)


def _children(pid):
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append((int(p), [c.decode(errors="replace") for c in cmd]))
    return out


def _launch_pid(runner_pid, timeout=60):
    """Pid of the ``python -m deepspeed.launcher.launch`` child of the runner, from /proc."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for pid, cmd in _children(runner_pid):
            if "deepspeed.launcher.launch" in cmd:
                return pid
        time.sleep(0.1)
    pytest.fail("deepspeed.launcher.launch did not start")


def _start(work, port):
    (work.parent / "fake_shards").mkdir(parents=True, exist_ok=True)
    opts = [f"runner.max_iters={ITERS}", f"evaluation.interval={ITERS}", "log_config.interval=1",
            "data.samples_per_gpu=2", f"data.train.shard_dir={work.parent / 'fake_shards'}",
            f"data.val.shard_dir={work.parent / 'fake_shards'}", "global_batch_size=None", "evaluation.save_best=None",
            "checkpoint_config.interval=4", "checkpoint_config.max_keep_ckpts=-1"]
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), str(STUBS), "--ds_config",
           str(REPO / "ds_configs" / "zero2_fp32.json"), "--work-dir", str(work), "--no-progress", "--dist-timeout",
           "60", "--cfg-options", *opts]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=_env({"STUB_STEP_SLEEP": "0.25"}), cwd=str(work.parent))


def _wait_for_iter(work, it, proc, timeout=180):
    path, t0 = work / "metrics.jsonl", time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if path.is_file() and any(f'"iter": {it},' in line for line in open(path)):
            return
        time.sleep(0.05)
    pytest.fail(f"iteration {it} was not logged")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("victim", ["launch.py SIGKILL", "runner SIGTERM"])
def test_ranks_stop_when_the_deepspeed_launcher_dies(tmp_path, victim):
    work = tmp_path / "run"
    port = free_port()
    proc = _start(work, port)
    try:
        launch = _launch_pid(proc.pid)
        _wait_for_iter(work, 2, proc)
        if victim.startswith("launch"):
            os.kill(launch, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        try:  # the pipe closes once the ranks (which inherited it) have exited; the timeout only detects a hang
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the ranks kept running for 180 s after the {victim}: {_live_processes_of(work, 0)}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # (the ranks run in this group too)
        except ProcessLookupError:
            pass
        for f in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            f.unlink(missing_ok=True)
    # The runner's own exit status is DeepSpeed's business (its releases differ: 0 after launch.py's death by a
    # signal, death by SIGTERM of its own, ...), so it is not checked; what this project guarantees is: no rank
    # outlives the launcher, the run stopped at a complete checkpoint, and status.json says so (wrappers read it).
    assert _live_processes_of(work) == [], "ranks outlived their launcher"
    stopped = [line for line in out.splitlines() if "stopped by SIGTERM after iteration" in line]
    assert stopped, out[-4000:]
    n = int(stopped[0].split("after iteration ")[1].split(":")[0])
    assert 2 <= n < ITERS and complete(work)[-1] == f"iter_{n}", (n, complete(work))
    status = json.loads((work / "status.json").read_text())
    assert (status["state"], status["iteration"], status["signal"]) == ("stopped", n, "SIGTERM"), status
    assert status["exit_status"] == 3 and status["state"] != "finished", status
    assert not finished(work)
    if victim.startswith("runner"):
        assert "the deepspeed runner (pid" in out and "has exited: sending SIGTERM" in out, out[-3000:]
