"""``launch/slurm/local_cluster.sh`` keeps its state folder private (its daemons run as root and write their pid and
log files there; whoever controls the folder controls them). Checked with ``prepare`` (the folder and slurm.conf,
no daemons) and with ``down`` / ``running`` / ``status`` on planted folders and files, so no SLURM is started here:
the real two-node bring-up is ``tests/integration/cluster/test_cluster_slurm.py``.

* the folder is created with mode 0700; a folder owned by another user, a symlinked folder, a group-writable one
  and one in a parent that others can write to (not sticky) are refused, naming the path and the reason;
* a symlink planted at slurm.conf, a pid file or a log file (``-> victim``) is refused and the victim is unchanged;
* ``down`` kills only processes that its pid files name *and* that are a slurmctld/slurmd.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CLUSTER = REPO / "launch" / "slurm" / "local_cluster.sh"
REFUSED = 3  # the script's exit status for a refused folder or file


def _run(state, cmd="prepare"):
    env = dict(os.environ, SLURM_LOCAL_DIR=str(state))
    return subprocess.run(["bash", str(CLUSTER), cmd], capture_output=True, text=True, env=env, timeout=60)


def _assert_refused(res, path, reason):
    assert res.returncode == REFUSED, (res.returncode, res.stdout, res.stderr)
    assert f"refusing {path}: " in res.stderr and reason in res.stderr, res.stderr


def _mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_prepare_makes_a_private_folder_and_replaces_the_config(tmp_path):
    state = tmp_path / "state"
    res = _run(state)
    assert res.returncode == 0, res.stderr
    conf = state / "slurm.conf"
    assert res.stdout.strip() == str(conf)
    assert _mode(state) == 0o700 and os.lstat(state).st_uid == os.geteuid()
    for sub in ("state", "log", "spool-n1", "spool-n2"):
        assert _mode(state / sub) == 0o700, sub
    text = conf.read_text()
    assert f"StateSaveLocation={state}/state" in text and f"SlurmctldPidFile={state}/slurmctld.pid" in text
    assert stat.S_ISREG(os.lstat(conf).st_mode) and not _mode(conf) & 0o022
    inode = os.lstat(conf).st_ino
    res = _run(state)  # again: the folder is accepted, slurm.conf is a new file renamed over the old one
    assert res.returncode == 0, res.stderr
    assert os.lstat(conf).st_ino != inode and conf.read_text() == text
    assert sorted(p.name for p in state.iterdir()) == ["log", "slurm.conf", "spool-n1", "spool-n2", "state"]


def _planted(tmp_path, case):
    """A state folder path with something planted; returns (state, the refused path, the reason)."""
    state = tmp_path / "state"
    if case == "other_owner":
        if os.geteuid() != 0:
            pytest.skip("needs root (chown)")
        state.mkdir(mode=0o700)
        os.chown(state, 65534, -1)
        return state, state, "owned by uid 65534"
    if case == "symlinked_folder":
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        state.symlink_to(real)
        return state, state, "it is a symlink"
    if case == "group_writable":
        state.mkdir()
        state.chmod(0o770)
        return state, state, "group or others can write to it"
    if case == "open_parent":
        parent = tmp_path / "open"
        parent.mkdir()
        (parent / "state").mkdir(mode=0o700)
        parent.chmod(0o777)  # not sticky: anyone could rename the state folder away and put a symlink there
        return parent / "state", parent, "not sticky"
    if case == "symlinked_subfolder":
        state.mkdir(mode=0o700)
        (tmp_path / "elsewhere").mkdir()
        (state / "log").symlink_to(tmp_path / "elsewhere")
        return state, state / "log", "it is a symlink"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["other_owner", "symlinked_folder", "group_writable", "open_parent",
                                  "symlinked_subfolder"])
@pytest.mark.parametrize("cmd", ["prepare", "down", "running", "status"])
def test_unsafe_state_folder_is_refused(tmp_path, case, cmd):
    state, path, reason = _planted(tmp_path, case)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    _assert_refused(_run(state, cmd), path, reason)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing was written


@pytest.mark.parametrize("name", ["slurm.conf", "slurmctld.pid", "slurmd-n2.pid", "log/slurmctld.log",
                                  "log/slurmd-n1.log"])
def test_planted_symlink_to_a_victim_is_refused(tmp_path, name):
    state = tmp_path / "state"
    assert _run(state).returncode == 0
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = state / name
    target.unlink(missing_ok=True)
    target.symlink_to(victim)
    for cmd in ("prepare", "down"):
        _assert_refused(_run(state, cmd), target, "it is a symlink")
    assert victim.read_text() == "precious\n" and target.is_symlink()


def test_down_kills_only_slurm_daemons_named_by_the_pid_files(tmp_path):
    """A pid file that names some other process (stale after a reboot, or written by someone) is not obeyed."""
    state = tmp_path / "state"
    assert _run(state).returncode == 0
    other = subprocess.Popen(["sleep", "300"])
    try:
        for name in ("slurmctld.pid", "slurmd-n1.pid"):
            (state / name).write_text(f"{other.pid}\n")
        (state / "slurmd-n2.pid").write_text("-1\n")  # `kill -9 -1` would kill every process
        res = _run(state, "down")
        assert res.returncode == 0, res.stderr
        assert other.poll() is None, "down killed a process that is not a slurm daemon"
        assert not list(state.glob("*.pid"))  # the stale pid files are gone
        assert _run(state, "running").returncode == 1
    finally:
        other.kill()
        other.wait()


def test_missing_folder_down_and_running(tmp_path):
    state = tmp_path / "none"
    res = _run(state, "down")
    assert res.returncode == 0 and "nothing to stop" in res.stderr, res.stderr
    assert _run(state, "running").returncode == 1
    assert not state.exists()


def test_relative_folder_is_refused(tmp_path):
    res = subprocess.run(["bash", str(CLUSTER), "prepare"], capture_output=True, text=True, cwd=str(tmp_path),
                         env=dict(os.environ, SLURM_LOCAL_DIR="rel"), timeout=60)
    _assert_refused(res, "rel", "absolute path")
    assert not (tmp_path / "rel").exists()
