"""Launcher environment mapping: deepspeed/torchrun variables win, SLURM (srun) is mapped, plain python = 1 rank."""
from vit_adapter_ds.runtime import setup_env

KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
        "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST")


def _clean(monkeypatch):
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)


def test_plain_python_is_rank_0_of_1(monkeypatch):
    _clean(monkeypatch)
    env = setup_env(default_port=29123)
    assert env == {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": "29123"}


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
    for k, v in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="29999",
                     SLURM_PROCID="0", SLURM_NTASKS="1").items():
        monkeypatch.setenv(k, v)
    env = setup_env()
    assert env == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1",
                   "MASTER_PORT": "29999"}
