"""The real sbatch script (``launch/slurm/train.sbatch``) on a real SLURM: slurmctld + two slurmd acting as the nodes
n1 and n2 of this machine (``launch/slurm/local_cluster.sh``), 2 nodes x 1 task, the stub task with the real
engine (ZeRO-2 fp32, CPU, gloo).

Job A runs uninterrupted. Job B gets ``scancel --signal=USR1`` mid-run: its ranks save a complete checkpoint and
stop, the batch script requeues the job, the requeued job resumes with ``--resume auto`` and finishes with exactly
job A's final weights. Evaluation and prediction (``launch/eval.py``, ``launch/predict.py``) run as 2 tasks
through ``launch/slurm/srun.sh`` and agree with a single process. Skipped (with the reason) only where SLURM is missing and cannot be installed (not root, or
no apt-get).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launching import REPO, STUBS, env as _env, finished, losses  # noqa: E402,F401

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
CLUSTER = REPO / "launch" / "slurm" / "local_cluster.sh"
STATE = Path(os.environ.get("SLURM_LOCAL_DIR", "/run/vit-adapter-ds-slurm"))  # the script's default as root
ITERS = 10


@pytest.fixture(scope="module")
def slurm():
    env = dict(os.environ, SLURM_LOCAL_DIR=str(STATE))
    was_running = subprocess.run(["bash", str(CLUSTER), "running"], env=env).returncode == 0
    res = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, env=env, timeout=600)
    if res.returncode == 77:  # the script's "cannot install here" status
        pytest.skip(f"no SLURM on this machine and it cannot be installed: {res.stderr.strip()}")
    assert res.returncode == 0, res.stdout + res.stderr
    env["SLURM_CONF"] = str(STATE / "slurm.conf")
    yield env
    if not was_running:  # leave a cluster someone else brought up (and their jobs) alone
        subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, text=True, env=env, timeout=120)


def _sbatch(env, work_dir, extra_env=None):
    shards = work_dir.parent / "fake_shards"
    shards.mkdir(parents=True, exist_ok=True)
    job_env = _env(dict(env, TRAIN_SCRIPT=str(STUBS), LOG_DIR=str(work_dir.parent / f"{work_dir.name}_logs"),
                        PYTHON=sys.executable, **(extra_env or {})))
    args = ["--ds_config", str(REPO / "ds_configs" / "zero2_fp32.json"), "--work-dir", str(work_dir), "--no-progress",
            "--dist-timeout", "60", "--cfg-options", f"runner.max_iters={ITERS}", f"evaluation.interval={ITERS}",
            "log_config.interval=1", "data.samples_per_gpu=2", f"data.train.shard_dir={shards}",
            f"data.val.shard_dir={shards}", "global_batch_size=None", "evaluation.save_best=None",
            "checkpoint_config.interval=4", "lr_config.warmup_iters=3", "optimizer.lr=0.01",
            "model.decode_head.dropout_ratio=0.1"]
    res = subprocess.run(["sbatch", "--parsable", "-N", "2", "--ntasks-per-node", "1", "-D", str(REPO), "-o",
                          str(work_dir.parent / f"{work_dir.name}-%j.out"), "--export=ALL",
                          str(REPO / "launch" / "slurm" / "train.sbatch"), *args],
                         capture_output=True, text=True, env=job_env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def _job(env, job):
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def _wait_done(env, job, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        info = _job(env, job)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        time.sleep(1)
    subprocess.run(["scancel", job], env=env)
    pytest.fail(f"job {job} did not finish in {timeout} s: {_job(env, job)}")


def _weights(work_dir):
    sd = torch.load(work_dir / "checkpoints" / f"iter_{ITERS}" / "mp_rank_00_model_states.pt", map_location="cpu",
                    weights_only=False)["module"]
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def _logs(work_dir):
    return "\n".join(p.read_text() for p in sorted(work_dir.parent.glob(f"{work_dir.name}*.out"))
                     + sorted((work_dir.parent / f"{work_dir.name}_logs").glob("rank*.log")))


def test_sbatch_two_nodes_then_usr1_requeue_resumes_bitwise(slurm, tmp_path):
    ref, pre = tmp_path / "ref", tmp_path / "pre"
    job_a = _sbatch(slurm, ref)
    job_b = _sbatch(slurm, pre, {"STUB_STEP_SLEEP": "0.6"})
    # B: signal once iteration 2 is logged (the ranks stop after the iteration they are in)
    t0, metrics = time.time(), pre / "metrics.jsonl"
    while not (metrics.is_file() and '"iter": 2,' in metrics.read_text()):
        assert time.time() - t0 < 180, (_job(slurm, job_b), _logs(pre)[-3000:])
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job_b], check=True, env=slurm)

    info_a = _wait_done(slurm, job_a)
    assert info_a["JobState"] == "COMPLETED" and info_a["Restarts"] == "0", (info_a, _logs(ref)[-3000:])
    assert finished(ref)
    log_a = _logs(ref)
    assert "world size 2" in log_a and "resumed from" not in log_a
    assert set(losses(ref)) == set(range(1, ITERS + 1))

    info_b = _wait_done(slurm, job_b)
    log_b = _logs(pre)
    assert info_b["JobState"] == "COMPLETED" and info_b["Restarts"] == "1", (info_b, log_b[-4000:])
    assert "received SIGUSR1" in log_b and "requeueing" in log_b and "restart 1 on n[1-2]" in log_b, log_b[-4000:]
    stopped = [line for line in log_b.splitlines() if "stopped by SIGUSR1 after iteration" in line]
    n = int(stopped[0].split("after iteration ")[1].split(":")[0])
    assert 2 <= n < ITERS and f"resumed from {pre / 'checkpoints' / f'iter_{n}'}" in log_b, log_b[-4000:]
    a, b = losses(ref), losses(pre)
    assert [b[i]["loss"] for i in range(1, ITERS + 1)] == [a[i]["loss"] for i in range(1, ITERS + 1)]
    wa, wb = _weights(ref), _weights(pre)
    assert sorted(wa) == sorted(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_eval_and_predict_under_srun(slurm, tmp_path):
    """launch/eval.py and launch/predict.py as 2 SLURM tasks on n1 + n2 (launch/slurm/srun.sh): the 2-rank mIoU
    equals a single process's exactly (areas summed over ranks), every image is predicted once by one of the ranks.
    Weights: the quickstart recipe's model, randomly initialised (seed 0), saved as a plain state dict."""
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.models.registry import build_model

    shards = tmp_path / "syn"
    res = subprocess.run([sys.executable, "-m", "vit_adapter_ds.data.make_shards", "synthetic", "--out", str(shards),
                          "--num-train", "1", "--num-val", "4", "--size", "64", "96", "--workers", "1",
                          "--no-progress"], capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pth"
    torch.save(build_model(load_recipe(None).model, load_pretrained=False).state_dict(), ckpt)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    for i in range(3):
        Image.fromarray(torch.randint(0, 255, (48, 64, 3), generator=torch.Generator().manual_seed(i),
                                      dtype=torch.uint8).numpy()).save(images / f"im{i}.jpg")
    common = ["--checkpoint", str(ckpt), "--cfg-options", "data.val.pipeline.1.img_scale=(128,64)"]
    single = subprocess.Popen([sys.executable, str(REPO / "launch" / "eval.py"), "--shards", str(shards / "val"),
                               "--num-workers", "0", "--out", str(tmp_path / "single.json"), *common],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    script = tmp_path / "job.sh"
    q = " ".join(f"'{a}'" for a in common)
    script.write_text(f"""#!/bin/bash
cd {REPO}
launch/slurm/srun.sh --output {tmp_path}/eval-%t.log launch/eval.py --shards {shards / 'val'} --num-workers 0 \\
    --out {tmp_path / 'srun.json'} {q} || exit 1
launch/slurm/srun.sh --output {tmp_path}/predict-%t.log launch/predict.py --images {images} \\
    --out {tmp_path / 'pred'} {q}
""")
    res = subprocess.run(["sbatch", "--wait", "-N", "2", "--ntasks-per-node", "1", "-o", str(tmp_path / "job.out"),
                          "--export=ALL", str(script)], capture_output=True, text=True,
                         env=_env(dict(slurm, PYTHON=sys.executable)), timeout=400)
    out_single = single.communicate(timeout=300)[0]  # the single-process reference ran alongside the job
    assert single.returncode == 0, out_single[-3000:]
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.log")) + [tmp_path / "job.out"])
    assert res.returncode == 0, (res.stderr, logs[-4000:])
    import json
    a, b = json.loads((tmp_path / "single.json").read_text()), json.loads((tmp_path / "srun.json").read_text())
    assert b["num_images"] == a["num_images"] == 4
    for k in ("aAcc", "mIoU", "mAcc", "mDice", "per_class"):
        assert a[k] == b[k], k
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == ["im0.png", "im1.png", "im2.png"]
    by_rank = [(tmp_path / f"predict-{r}.log").read_text().count(" -> ") for r in (0, 1)]
    assert by_rank[0] >= 1 and by_rank[1] >= 1 and sum(by_rank) == 3, logs[-3000:]
