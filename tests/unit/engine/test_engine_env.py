"""Launcher environment mapping: deepspeed/torchrun variables win, SLURM (srun) is mapped, plain python = 1 rank."""
from support import free_port
from vit_adapter_ds.runtime import setup_env

KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
        "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST")


def _clean(monkeypatch):
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)


def test_plain_python_is_rank_0_of_1(monkeypatch):
    _clean(monkeypatch)
    port = free_port()
    env = setup_env(default_port=port)
    assert env == {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}


def test_slurm_variables_are_mapped(monkeypatch):
    _clean(monkeypatch)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "45678")
    env = setup_env()
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "1")
    assert env["MASTER_PORT"] == str(20000 + 45678 % 20000)


def test_launcher_variables_win_over_slurm(monkeypatch):
    _clean(monkeypatch)
    port = free_port()
    for k, v in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT=str(port),
                     SLURM_PROCID="0", SLURM_NTASKS="1").items():
        monkeypatch.setenv(k, v)
    env = setup_env()
    assert env == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1",
                   "MASTER_PORT": str(port)}


# ---------------------------------------------------------------------------------------------- launcher binding
# A rank must not outlive its launcher: these start real process chains (no DeepSpeed, a few seconds each).
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

RANK_SCRIPT = """
import os, signal, sys, time
import vit_adapter_ds.runtime as rt
marker = sys.argv[1]
def on_term(signum, frame):
    open(marker, "w").write("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("rank", os.getpid(), flush=True)
go = os.environ.get("WAIT_FOR")
while go and not os.path.exists(go):
    time.sleep(0.05)
print("bound", rt.bind_to_launcher(), flush=True)
time.sleep(60)
"""

# a parent that starts ``argv[1:]`` and waits (stands in for a launcher)
PARENT_SCRIPT = """
import os, subprocess, sys
print("parent", os.getpid(), flush=True)
subprocess.Popen(sys.argv[1:]).wait()
"""


def _chain(tmp_path, env_extra, *, layers=(), wait_for=None):
    """Start ``layers`` (a list of script paths, outermost first, each a PARENT_SCRIPT) above a rank running
    RANK_SCRIPT; return (outer Popen, {name: pid}, marker file, the stdout lines read so far)."""
    rank = tmp_path / "rank.py"
    rank.write_text(RANK_SCRIPT)
    marker = tmp_path / "terminated"
    env = {k: v for k, v in os.environ.items() if k != "VIT_ADAPTER_DS_LAUNCHER_WATCH"}
    env.update(PYTHONPATH=str(REPO), RANK="1", WORLD_SIZE="2", **env_extra)
    if wait_for:
        env["WAIT_FOR"] = str(wait_for)
    cmd = [sys.executable, str(rank), str(marker)]
    for script in reversed(layers):
        cmd = [sys.executable, str(script), *cmd]
    outer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    pids, lines = {}, []
    want = {"rank"} | ({"parent"} if layers else set()) | (set() if wait_for else {"bound"})
    t0 = time.time()
    while not want <= set(pids) and time.time() - t0 < 60:
        line = outer.stdout.readline()
        if not line:
            break
        lines.append(line)
        word, rest = line.split(" ", 1)
        pids.setdefault(word, []).append(rest.strip())
    assert want <= set(pids), lines
    return outer, pids, marker, lines


def _gone(pid, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _parent_script(tmp_path, rel="parent.py"):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PARENT_SCRIPT)
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_rank_gets_sigterm_when_its_launcher_is_killed(tmp_path):
    outer, pids, marker, _ = _chain(tmp_path, {}, layers=[_parent_script(tmp_path)])
    rank, parent = int(pids["rank"][0]), int(pids["parent"][0])
    try:
        assert "'pdeathsig': True" in pids["bound"][0]
        os.kill(parent, signal.SIGKILL)  # the launcher dies without passing anything on
        assert _gone(rank, 10), "the rank outlived its launcher"
        assert marker.read_text() == "SIGTERM"
    finally:
        _kill(rank)
        _kill(parent)
        outer.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_launcher_watch_can_be_turned_off(tmp_path):
    outer, pids, marker, _ = _chain(tmp_path, {"VIT_ADAPTER_DS_LAUNCHER_WATCH": "0"},
                                    layers=[_parent_script(tmp_path)])
    rank, parent = int(pids["rank"][0]), int(pids["parent"][0])
    try:
        assert pids["bound"] == ["None"]
        os.kill(parent, signal.SIGKILL)
        assert not _gone(rank, 3) and not marker.exists()  # an orphan, as asked
    finally:
        _kill(rank)
        outer.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_launcher_that_died_before_the_binding_is_noticed(tmp_path):
    go = tmp_path / "go"
    outer, pids, marker, _ = _chain(tmp_path, {}, layers=[_parent_script(tmp_path)], wait_for=go)
    rank, parent = int(pids["rank"][0]), int(pids["parent"][0])
    try:
        os.kill(parent, signal.SIGKILL)  # after runtime was imported (parent recorded), before bind_to_launcher()
        assert _gone(parent, 10)
        time.sleep(0.2)
        go.touch()
        assert _gone(rank, 10), "the rank did not notice that its launcher had already died"
        assert marker.read_text() == "SIGTERM"
    finally:
        _kill(rank)
        outer.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_sigterm_to_the_deepspeed_runner_alone_stops_the_rank(tmp_path):
    """Stand-ins with deepspeed's command lines: ``bin/deepspeed`` (the runner) starts
    ``deepspeed/launcher/launch.py``, which starts the rank. SIGTERM to the runner alone ends only the runner (as
    deepspeed's does: it forwards nothing), launch.py lives on; the rank's watch thread notices the runner is gone."""
    runner = _parent_script(tmp_path, "bin/deepspeed")
    launch = _parent_script(tmp_path, "deepspeed/launcher/launch.py")
    outer, pids, marker, _ = _chain(tmp_path, {}, layers=[runner, launch])
    rank, (runner_pid, launch_pid) = int(pids["rank"][0]), map(int, pids["parent"])
    try:
        assert f"'watch': {{{runner_pid}: 'the deepspeed runner'}}" in pids["bound"][0], pids["bound"]
        os.kill(runner_pid, signal.SIGTERM)
        assert _gone(rank, 10), "the rank kept running after the deepspeed runner died"
        assert marker.read_text() == "SIGTERM"
    finally:
        for pid in (rank, launch_pid, runner_pid):
            _kill(pid)
        outer.wait()
