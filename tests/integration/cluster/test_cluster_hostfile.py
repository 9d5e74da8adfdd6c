"""Clusters without SLURM: DeepSpeed's hostfile launcher through ``launch/hostfile/train_hostfile.sh``.

* which ranks a hostfile gives with ``--num_gpus`` / ``--include`` and, without ssh, with ``NODE_RANK`` on every
  node (a probe script records every rank's environment and arguments);
* a one-host hostfile (``localhost slots=2``) trains the stub task on 2 ranks, started locally (no ssh);
* two network namespaces act as two hosts with an sshd each: the launcher on the first starts both nodes' ranks
  over ssh with pdsh (DeepSpeed's default multi-node launcher), passing the variables the ranks need
  (``GLOO_SOCKET_IFNAME``, ...) through the script's private variables file (only its path is on DeepSpeed's pdsh
  command); the losses and weights equal the one-host run's bit for bit;
* variables with JSON, quotes, ``$(...)``, backticks and a newline reach the ranks of both hosts byte for byte and
  are never evaluated, and no secret appears in the launcher's output or its logged ``cmd = ...``; unsafe
  ``.deepspeed_env`` files, folders and variables files are refused.

(``NODE_RANK``, the script started on every node without ssh, is checked with the probe; training across two
namespaces without a launcher in between is ``tests/integration/cluster/test_cluster_resilience.py``'s.)

The ssh test installs ``openssh-server`` and ``pdsh`` with apt where they are missing (as root), and is skipped
with the reason only where that is impossible (not root, no apt-get).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from launching import REPO, STUBS, env as _env, finished, losses  # noqa: E402,F401

from support import free_port  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
SCRIPT = REPO / "launch" / "hostfile" / "train_hostfile.sh"
ITERS = 6
PROBE = textwrap.dedent("""\
    import json, os, sys
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
    with open(os.path.join(os.environ["PROBE_OUT"], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump({"env": {k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:]}, f)
""")


def _hostfile(path, lines):
    path.write_text("# written by the test\n" + "".join(f"{line}\n" for line in lines))
    return path


def _launch(tmp, hostfile, args, extra_env=None, port=None, timeout=240, prefix=()):
    """Run train_hostfile.sh (under ``prefix``, e.g. ``ip netns exec``) in its own session; (returncode, output).
    ``port``: the master port (default: a free one)."""
    port = free_port() if port is None else port
    env = _env(dict({"TRAIN_SCRIPT": str(STUBS)}, **(extra_env or {}), HOSTFILE=str(hostfile), MASTER_PORT=str(port)))
    proc = subprocess.Popen([*prefix, "bash", str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=str(tmp), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
        pytest.fail(f"train_hostfile.sh did not finish in {timeout} s:\n{out[-4000:]}")
    finally:
        _kill_group(proc.pid)
    return proc.returncode, out


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_num_gpus_include_and_node_rank(tmp_path):
    """Four launches of the probe at once (start-up dominates): ``--num_gpus 1`` and ``--include localhost:1`` on a
    ``localhost slots=2`` hostfile, and the two nodes of a 2 + 1 slot hostfile started without ssh (NODE_RANK)."""
    (tmp_path / "probe.py").write_text(PROBE)
    one = _hostfile(tmp_path / "hostfile", ["localhost slots=2"])
    two = _hostfile(tmp_path / "hostfile2", ["nodeA slots=2", "nodeB slots=1"])
    runs = {"num_gpus": dict(HOSTFILE=one, DS_LAUNCHER_ARGS="--num_gpus 1"),
            "include": dict(HOSTFILE=one, DS_LAUNCHER_ARGS="--include localhost:1"),
            "node0": dict(HOSTFILE=two, NODE_RANK="0", MASTER_ADDR="127.0.0.1", PROBE_OUT=tmp_path / "nodes"),
            "node1": dict(HOSTFILE=two, NODE_RANK="1", MASTER_ADDR="127.0.0.1", PROBE_OUT=tmp_path / "nodes")}
    procs = {}
    try:
        ports = {name: free_port() for name in runs}
        for name, env in runs.items():
            port = ports[name]
            env = {k: str(v) for k, v in dict(dict(PROBE_OUT=tmp_path / name, MASTER_PORT=port), **env).items()}
            Path(env["PROBE_OUT"]).mkdir(exist_ok=True)
            procs[name] = subprocess.Popen(["bash", str(SCRIPT), "--x", "1"], stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path),
                                           start_new_session=True,
                                           env=_env(dict(env, TRAIN_SCRIPT=str(tmp_path / "probe.py"))))
        outs = {name: p.communicate(timeout=240)[0] for name, p in procs.items()}
    finally:
        for p in procs.values():
            _kill_group(p.pid)
    assert all(p.returncode == 0 for p in procs.values()), outs

    def ranks(name):
        return {int(p.stem[4:]): json.loads(p.read_text()) for p in (tmp_path / name).glob("rank*.json")}

    got = ranks("num_gpus")  # the first slot of every host
    assert sorted(got) == [0]
    env = got[0]["env"]
    assert env["WORLD_SIZE"] == "1" and env["CUDA_VISIBLE_DEVICES"] == "0" and env["OMP_NUM_THREADS"] == "1"
    assert env["MASTER_ADDR"] == "localhost" and env["MASTER_PORT"] == str(ports["num_gpus"])  # the hostfile's first host
    assert got[0]["argv"] == ["--local_rank=0", "--resume", "auto", "--x", "1"]
    got = ranks("include")  # exactly slot 1: one rank, on device 1
    assert sorted(got) == [0] and got[0]["env"]["CUDA_VISIBLE_DEVICES"] == "1" and got[0]["env"]["LOCAL_RANK"] == "0"
    got = {r: v["env"] for r, v in ranks("nodes").items()}  # ranks 0, 1 on node 0 and rank 2 on node 1
    assert sorted(got) == [0, 1, 2]
    assert [(got[r]["LOCAL_RANK"], got[r]["WORLD_SIZE"], got[r]["MASTER_ADDR"]) for r in range(3)] == [
        ("0", "3", "127.0.0.1"), ("1", "3", "127.0.0.1"), ("0", "3", "127.0.0.1")]


def _train_args(work_dir):
    shards = work_dir.parent / "fake_shards"
    shards.mkdir(parents=True, exist_ok=True)
    return ["--ds_config", str(REPO / "ds_configs" / "zero2_fp32.json"), "--work-dir", str(work_dir), "--no-progress",
            "--dist-timeout", "60", "--cfg-options", f"runner.max_iters={ITERS}", f"evaluation.interval={ITERS}",
            "log_config.interval=1", "data.samples_per_gpu=2", f"data.train.shard_dir={shards}",
            f"data.val.shard_dir={shards}", "global_batch_size=None", "evaluation.save_best=None",
            "checkpoint_config.interval=3", "lr_config.warmup_iters=3", "optimizer.lr=0.01",
            "model.decode_head.dropout_ratio=0.1"]


def final_weights(work_dir):
    sd = torch.load(work_dir / "checkpoints" / f"iter_{ITERS}" / "mp_rank_00_model_states.pt", map_location="cpu",
                    weights_only=False)["module"]
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def assert_same_run(a, b):
    la, lb = losses(a), losses(b)
    assert [lb[i]["loss"] for i in range(1, ITERS + 1)] == [la[i]["loss"] for i in range(1, ITERS + 1)]
    wa, wb = final_weights(a), final_weights(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def one_host_run(tmp_path_factory):
    """The stub task, 2 ranks from a one-host hostfile (``localhost slots=2``): started locally, no ssh."""
    tmp = tmp_path_factory.mktemp("hostfile")
    work = tmp / "one_host"
    rc, out = _launch(tmp, _hostfile(tmp / "hostfile", ["localhost slots=2"]), _train_args(work))
    assert rc == 0, out[-4000:]
    assert "ssh" not in out.lower().replace("no_ssh", "")  # nothing went through ssh
    assert finished(work)
    return work


def test_one_host_hostfile_trains(one_host_run):
    rec = losses(one_host_run)
    assert sorted(rec) == list(range(1, ITERS + 1))
    assert all(r.get("world_size", 2) == 2 for r in rec.values())
    assert (one_host_run / "checkpoints" / f"iter_{ITERS}" / "COMPLETE").is_file()


# ------------------------------------------------------------------------------- two hosts: network namespaces
IFACE = "hostnet0"  # the same interface name on both "hosts", as on a real cluster (GLOO_SOCKET_IFNAME=hostnet0)


@pytest.fixture()
def two_hosts(tmp_path):
    """Two network namespaces joined by a veth pair (the interface is called ``hostnet0`` in both); yields
    ``(namespaces, addresses)``. Removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns)")
    if shutil.which("ip") is None:
        pytest.fail("iproute2 ('ip') is not installed (.ci/run installs it with apt)")
    tag = f"{os.getpid() % 10000}"
    ns, dev = [f"vads{tag}h1", f"vads{tag}h2"], [f"vadsh{tag}a", f"vadsh{tag}b"]
    net = f"10.232.{os.getpid() % 250}"
    addrs = [f"{net}.1", f"{net}.2"]
    cmds = [["ip", "netns", "add", ns[0]], ["ip", "netns", "add", ns[1]],
            ["ip", "link", "add", dev[0], "type", "veth", "peer", "name", dev[1]]]
    for i in (0, 1):
        cmds += [["ip", "link", "set", dev[i], "netns", ns[i]],
                 ["ip", "-n", ns[i], "link", "set", dev[i], "name", IFACE],
                 ["ip", "-n", ns[i], "addr", "add", f"{addrs[i]}/24", "dev", IFACE],
                 ["ip", "-n", ns[i], "link", "set", "lo", "up"], ["ip", "-n", ns[i], "link", "set", IFACE, "up"]]
    try:
        for cmd in cmds:
            res = subprocess.run(cmd, capture_output=True, text=True)
            assert res.returncode == 0, (cmd, res.stderr)
        yield ns, addrs
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def _ssh_tools():
    """Install openssh-server and pdsh with apt where missing (as root); skip only where that is impossible."""
    if shutil.which("sshd") or Path("/usr/sbin/sshd").exists():
        if shutil.which("pdsh") and shutil.which("ssh-keygen"):
            return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("sshd/pdsh are not installed and cannot be installed here (not root or no apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for _ in range(3):  # another apt run may hold the lock for a while
        ok = (subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300).returncode == 0
              and subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server",
                                  "openssh-client", "pdsh"], capture_output=True, env=env, timeout=600).returncode == 0)
        if ok:
            return
        subprocess.run(["sleep", "10"])
    pytest.fail("apt-get could not install openssh-server/pdsh")


@pytest.fixture()
def sshd_hosts(two_hosts, tmp_path):
    """An sshd in each namespace (root login with a key made here; nothing of the machine's ssh set-up is used or
    changed) and an ``ssh`` on PATH that uses this set-up, as a user's ~/.ssh/config would. Yields
    ``(namespaces, addresses, bin_dir)``."""
    _ssh_tools()
    ns, addrs = two_hosts
    d = tmp_path / "ssh"
    d.mkdir()
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    daemons = []
    try:
        for n, a in zip(ns, addrs):
            cfg = d / f"sshd_{a}.conf"
            cfg.write_text(textwrap.dedent(f"""\
                ListenAddress {a}
                Port 22
                HostKey {d / 'host_key'}
                PidFile {d / f'sshd_{a}.pid'}
                AuthorizedKeysFile {d / 'authorized_keys'}
                PermitRootLogin prohibit-password
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                UsePAM no
                StrictModes no
                """))
            daemons.append(subprocess.Popen(["ip", "netns", "exec", n, shutil.which("sshd") or "/usr/sbin/sshd", "-D",
                                             "-e", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True))
        (d / "client.conf").write_text(textwrap.dedent(f"""\
            Host *
                IdentityFile {d / 'id'}
                StrictHostKeyChecking no
                UserKnownHostsFile /dev/null
                BatchMode yes
                LogLevel ERROR
            """))
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "ssh").write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {d / 'client.conf'} \"$@\"\n")
        (bin_dir / "ssh").chmod(0o755)
        for n, a in zip(ns, addrs):  # both sshds answer (from the first host, as the launcher will connect)
            for _ in range(50):
                res = subprocess.run(["ip", "netns", "exec", ns[0], str(bin_dir / "ssh"), a, "true"],
                                     capture_output=True, text=True, timeout=30)
                if res.returncode == 0:
                    break
                subprocess.run(["sleep", "0.2"])
            assert res.returncode == 0, (a, res.stderr, [p.poll() for p in daemons])
        yield ns, addrs, bin_dir
    finally:
        for p in daemons:
            p.kill()
            p.wait()


def test_two_hosts_over_ssh_with_pdsh(one_host_run, sshd_hosts, tmp_path):
    """The launcher runs on the first host only; pdsh + ssh start the ranks of both. The ranks need
    GLOO_SOCKET_IFNAME (the hostname resolves to 127.0.0.1 in both namespaces), which DeepSpeed passes to the
    other node only through the env file that train_hostfile.sh writes."""
    ns, addrs, bin_dir = sshd_hosts
    hf = _hostfile(tmp_path / "hostfile", [f"{a} slots=1" for a in addrs])
    work = tmp_path / "ssh_run"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GLOO_SOCKET_IFNAME": IFACE}
    rc, out = _launch(tmp_path, hf, _train_args(work), env, prefix=["ip", "netns", "exec", ns[0]])
    assert rc == 0, out[-4000:]
    cmd = _logged_cmd(out)  # DeepSpeed's pdsh command carries only the variables file's path, no value
    assert "export VIT_ADAPTER_DS_LAUNCH_ENV=" in cmd and "GLOO_SOCKET_IFNAME" not in cmd, cmd
    assert f"{addrs[1]}:" in out  # pdsh prefixes every line of the second host with its name
    assert_same_run(one_host_run, work)


# ------------------------------------------------------------------- variables: verbatim, never evaluated, no leak
ENV_PROBE = textwrap.dedent("""\
    import json, os, stat, sys
    f = os.environ.get("VIT_ADAPTER_DS_LAUNCH_ENV")
    mode = (lambda p: stat.S_IMODE(os.lstat(p).st_mode)) if f else (lambda p: None)
    info = {"env": {k: os.environ.get(k) for k in os.environ["PROBE_NAMES"].split()}, "argv": sys.argv[1:],
            "file": f, "file_mode": mode(f), "dir_mode": mode(os.path.dirname(f)) if f else None}
    with open(os.path.join(os.environ["PROBE_OUT"], f"rank{os.environ['RANK']}.json"), "w") as fh:
        json.dump(info, fh)
""")
SECRETS = {"AWS_SECRET_ACCESS_KEY": "sekretAWS4f1c", "MLFLOW_TRACKING_PASSWORD": "sekretMLFLOW9e2"}


def _hostile(tmp):
    """Values that a shell would mangle or run: JSON (quotes, spaces), $(...), backticks, a newline, blanks at the
    ends; each command would create a marker file. Returns (variables, .deepspeed_env text, markers)."""
    marks = [tmp / f"marker{i}" for i in range(4)]
    options = json.dumps({"endpoint_url": "http://h:9000/a b", "quote": "it's \"q\"", "cost": "$HOME 5$",
                          "run": f"$(touch {marks[0]})", "tick": f"`touch {marks[1]}`"})
    value = f" {options}\nsecond line $(touch {marks[2]}) \\ \t'end' "
    dsenv = f"# a comment\n\nDSENV_VALUE =  $(touch {marks[3]}) \"q\" 'x' \n"
    return dict(SECRETS, VIT_ADAPTER_DS_REMOTE_OPTIONS=value), dsenv, marks


def _logged_cmd(out):
    cmds = [line for line in out.splitlines() if "cmd = " in line]
    assert len(cmds) == 1, out[-4000:]
    return cmds[0]


def _check_ranks(tmp, out, probe_out, variables, marks, nranks):
    assert [m for m in marks if m.exists()] == [], "a value was evaluated by a shell"
    for v in SECRETS.values():
        assert v not in out, "a secret reached a command line or a log"
    ranks = {int(p.stem[4:]): json.loads(p.read_text()) for p in probe_out.glob("rank*.json")}
    assert sorted(ranks) == list(range(nranks)), out[-4000:]
    want = dict(variables, DSENV_VALUE=f"$(touch {marks[3]}) \"q\" 'x'")  # as written, blanks at the ends stripped
    for r, info in ranks.items():
        assert info["env"] == want, (r, info["env"])
        assert info["file_mode"] == 0o600 and info["dir_mode"] == 0o700, info
        assert info["argv"][-4:] == ["--resume", "auto", "--x", "1"]
    assert not list(tmp.glob(".vit-adapter-ds-launch.*"))  # the private folder is gone after the run


def _probe_env(tmp, variables, dsenv):
    (tmp / "probe.py").write_text(ENV_PROBE)
    (tmp / ".deepspeed_env").write_text(dsenv)
    (tmp / ".deepspeed_env").chmod(0o600)
    probe_out = tmp / "probe_out"
    probe_out.mkdir()
    env = dict(variables, TRAIN_SCRIPT=str(tmp / "probe.py"), PROBE_OUT=str(probe_out),
               PROBE_NAMES=" ".join([*variables, "DSENV_VALUE"]), EXPORT_VARS="PROBE_OUT PROBE_NAMES")
    return env, probe_out


def test_variables_verbatim_on_this_host(tmp_path, free_port):
    """One host, no ssh: the ranks (started through the script) get every variable byte for byte from the file,
    MLFLOW_* too (taken out of the launcher's environment, where DeepSpeed would have put it on its command line)."""
    variables, dsenv, marks = _hostile(tmp_path)
    env, probe_out = _probe_env(tmp_path, variables, dsenv)
    rc, out = _launch(tmp_path, _hostfile(tmp_path / "hostfile", ["localhost slots=2"]), ["--x", "1"], env,
                      port=free_port())
    assert rc == 0, out[-4000:]
    _check_ranks(tmp_path, out, probe_out, variables, marks, 2)


def test_two_hosts_variables_verbatim_and_off_the_command_line(sshd_hosts, tmp_path, free_port):
    """Over ssh (pdsh): JSON with quotes and spaces, $(...), backticks and a newline arrive byte for byte on the
    second host and nothing is run; no secret is on DeepSpeed's logged pdsh command (only the file's path is)."""
    ns, addrs, bin_dir = sshd_hosts
    variables, dsenv, marks = _hostile(tmp_path)
    env, probe_out = _probe_env(tmp_path, variables, dsenv)
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    hf = _hostfile(tmp_path / "hostfile", [f"{a} slots=1" for a in addrs])
    rc, out = _launch(tmp_path, hf, ["--x", "1"], env, port=free_port(), prefix=["ip", "netns", "exec", ns[0]])
    cmd = _logged_cmd(out)
    assert f"{addrs[1]}:" in out, out[-4000:]  # the second host's launcher ran (pdsh prefixes its lines)
    _check_ranks(tmp_path, out, probe_out, variables, marks, 2)
    assert rc == 0, out[-4000:]
    assert "export VIT_ADAPTER_DS_LAUNCH_ENV=" in cmd and "--no_python" in cmd, cmd
    for name in (*variables, "DSENV_VALUE", "GLOO", "touch"):
        assert name not in cmd, (name, cmd)


def _refused(tmp, env, args=("--x", "1"), prefix_args=()):
    hf = _hostfile(tmp / "hostfile", ["localhost slots=1"])
    res = subprocess.run(["bash", str(SCRIPT), *prefix_args, *args], capture_output=True, text=True, cwd=str(tmp),
                         env=_env(dict(env, HOSTFILE=str(hf), TRAIN_SCRIPT=str(tmp / "never.py"))), timeout=60)
    assert res.returncode == 2 and "deepspeed" not in res.stderr.lower().replace("deepspeed_env", ""), res
    return res.stderr


@pytest.mark.parametrize("case", ["dsenv_group_writable", "dsenv_other_owner", "dir_shell_chars", "no_python"])
def test_launcher_refusals(tmp_path, case):
    """Refused before anything starts, naming the file or variable and the reason."""
    env = {}
    dsenv = tmp_path / ".deepspeed_env"
    if case.startswith("dsenv"):
        dsenv.write_text("A=1\n")
        if case == "dsenv_group_writable":
            dsenv.chmod(0o664)
            want = (str(dsenv.name), "group or others can write")
        else:
            if os.geteuid() != 0:
                pytest.skip("needs root (chown)")
            os.chown(dsenv, 65534, -1)
            want = (str(dsenv.name), "owned by uid 65534")
    elif case == "dir_shell_chars":
        d = tmp_path / "a$(touch x)"
        d.mkdir()
        env["LAUNCH_ENV_DIR"] = str(d)
        want = (str(d), "characters that the remote shell would")
    else:
        env["DS_LAUNCHER_ARGS"] = "--no_python"
        want = ("DS_LAUNCHER_ARGS", "--no_python")
    err = _refused(tmp_path, env)
    assert "refusing" in err and all(w in err for w in want), err
    assert not list(tmp_path.glob(".vit-adapter-ds-launch.*")) and not (tmp_path / "x").exists()


@pytest.mark.parametrize("case", ["symlink", "group_readable", "unset"])
def test_rank_start_refuses_an_unsafe_variables_file(tmp_path, case):
    """The rank side loads only a plain 0600 file of this user in a private folder; never a symlink."""
    priv = tmp_path / "priv"
    priv.mkdir(mode=0o700)
    real = priv / "real"
    real.write_text("A=" + base64.b64encode(b"1").decode() + "\n")
    real.chmod(0o600)
    f = priv / "env"
    if case == "symlink":
        f.symlink_to(real)
    else:
        f.write_text(real.read_text())
        f.chmod(0o640)
    env = _env()
    env.pop("VIT_ADAPTER_DS_LAUNCH_ENV", None)
    if case != "unset":
        env["VIT_ADAPTER_DS_LAUNCH_ENV"] = str(f)
    (tmp_path / "p.py").write_text("open('ran', 'w')\n")
    res = subprocess.run(["bash", str(SCRIPT), "--local_rank=0", "--vit-adapter-ds-rank", sys.executable,
                          str(tmp_path / "p.py")], capture_output=True, text=True, cwd=str(tmp_path), env=env,
                         timeout=60)
    assert res.returncode == 2 and "refusing" in res.stderr, res
    assert (str(f) if case != "unset" else "VIT_ADAPTER_DS_LAUNCH_ENV") in res.stderr, res.stderr
    assert not (tmp_path / "ran").exists()
