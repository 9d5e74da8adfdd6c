"""``launch/quickstart.sh`` against the README's Quickstart (cheap: the script's training steps themselves -- synthetic
shards, ``launch/train.py`` on 2 DeepSpeed ranks with ZeRO-2 fp32 -- run in ``test_engine_quickstart.py``; running the
script costs a pip install and minutes of training). Checked here: bash syntax, that every command the script runs
is what the README names (pins, install, shard folder, launcher, ds_config, work dir), that the arguments are
accepted by the project's own parsers, that the recipe it trains by default reads the shards it writes, and that its
closing report runs on a work dir laid out as the trainer writes it."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "launch" / "quickstart.sh"
README = (REPO / "README.md").read_text()
QUICKSTART = README[README.index("## Quickstart"):README.index("\n## ", README.index("## Quickstart") + 5)]


def _commands():
    """The script's command lines (continuations joined, comments dropped) as shlex token lists."""
    text = SCRIPT.read_text().split("<<'PY'")[0].replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            tokens = shlex.split(line)
            while "||" in tokens:  # `test || command`: two commands
                out.append(tokens[:tokens.index("||")])
                tokens = tokens[tokens.index("||") + 1:]
            out.append(tokens)
    return out


def _command(first, *then):
    found = [c for c in _commands() if c[:1 + len(then)] == [first, *then]]
    assert len(found) == 1, (first, then, found)
    return found[0]


def _after(tokens, flag):
    return tokens[tokens.index(flag) + 1]


def test_script_syntax():
    p = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_install_steps_match_the_readme_and_ci():
    torch_line = _command("python", "-m", "pip", "install", "-q", "torch==2.14.1")
    pins = [t for t in torch_line if "==" in t]
    assert pins == ["torch==2.14.1", "torchvision==0.29.1"]
    for pin in pins:  # the README's Quickstart and CI install the same versions
        assert f"`{pin}`" in QUICKSTART
        assert f'"{pin}"' in (REPO / ".ci" / "run").read_text()
    project = _command("python", "-m", "pip", "install", "-q", "-c")
    assert project[6:] == ["constraints/references.txt", "-e", ".[train]"]
    assert "`pip install -c constraints/references.txt -e '.[train]'`" in QUICKSTART
    assert (REPO / "constraints" / "references.txt").is_file()


def test_shards_step_writes_what_the_recipe_reads(tmp_path):
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.data import read_manifest
    from vit_adapter_ds.data.make_shards import main

    cmd = _command("python", "-m", "vit_adapter_ds.data.make_shards")
    args = cmd[3:]
    out = _after(args, "--out")
    assert out == "shards/synthetic" and "(`shards/synthetic`)" in QUICKSTART
    guard = [c for c in _commands() if c[:2] == ["[", "-f"]]
    assert guard and guard[0][2] == f"{out}/val/manifest.json"  # written once, val last
    recipe = load_recipe(None)  # what launch/train.py trains without --config
    assert (recipe.data.train.shard_dir, recipe.data.val.shard_dir) == (f"{out}/train", f"{out}/val")
    assert recipe.runner.max_iters == 200 and "(200\niterations)" in QUICKSTART
    # the script's arguments, with a tiny dataset in a temporary folder, are accepted and write both splits
    small = list(args)
    small[small.index("--out") + 1] = str(tmp_path / "syn")
    small[small.index("--num-train") + 1], small[small.index("--num-val") + 1] = "2", "1"
    assert main(small + ["--workers", "1"]) == 0
    assert read_manifest(str(tmp_path / "syn"), "train")["num_samples"] == 2
    assert read_manifest(str(tmp_path / "syn"), "val")["num_samples"] == 1
    size = args[args.index("--size") + 1:args.index("--size") + 3]
    assert size == ["128", "170"]


def test_training_step_is_the_readme_command():
    from vit_adapter_ds.engine.cli import build_parser

    cmd = _command("deepspeed")
    i = cmd.index("launch/train.py")
    launcher, train_args = cmd[1:i], cmd[i + 1:]
    assert launcher[:2] == ["--num_gpus", "2"] and launcher[2] == "--master_port"
    readme_cmd = "deepspeed --num_gpus 2 launch/train.py --ds_config ds_configs/zero2_fp32.json"
    assert f"`{readme_cmd}`" in QUICKSTART.replace("\n", " ")
    args = build_parser().parse_args([a.replace('"$WORK_DIR"', "W").replace("$WORK_DIR", "W") for a in train_args])
    assert args.ds_config == "ds_configs/zero2_fp32.json" and (REPO / args.ds_config).is_file()
    assert args.work_dir == "W" and args.resume == "auto" and args.config is None
    default = re.search(r'^WORK_DIR="\$\{WORK_DIR:-([^}]+)\}"$', SCRIPT.read_text(), re.M)
    assert default and default[1] == "work_dirs/synthetic_quickstart"
    assert "(`work_dirs/synthetic_quickstart`)" in QUICKSTART
    assert (REPO / "launch" / "train.py").is_file()


def test_closing_report_reads_the_trainer_outputs(tmp_path):
    """The report at the end of the script, on a work dir laid out as the trainer writes it (status.json
    ``finished`` with 'metrics', predictions/iter_N, checkpoints, metrics.jsonl): it names the newest predictions by
    number; a run that did not finish is said so, with a non-zero status."""
    code = SCRIPT.read_text().split("<<'PY'\n")[1].split("\nPY\n")[0]
    w = tmp_path / "w"
    for it in (2, 10, 9):
        (w / "predictions" / f"iter_{it}").mkdir(parents=True)
    (w / "status.json").write_text(json.dumps({"state": "finished", "iteration": 10, "metrics": {"mIoU": 0.5},
                                                "time": 0.0}))
    p = subprocess.run([sys.executable, "-", str(w)], input=code, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "final evaluation: {'mIoU': 0.5}" in p.stdout
    assert f"predictions:  {w / 'predictions' / 'iter_10'}" in p.stdout
    assert f"python launch/export.py {w} --out {w / 'model.pth'}" in p.stdout
    (w / "status.json").write_text(json.dumps({"state": "failed", "error": "KeyError: 'x'", "time": 0.0}))
    p = subprocess.run([sys.executable, "-", str(w)], input=code, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "training did not finish" in p.stderr and "'failed'" in p.stderr, p.stderr


def test_trainer_test_runs_the_same_steps():
    """The expensive part is exercised by test_engine_quickstart.py through the shared launcher (tests/helpers/
    launching.py) with the same launcher script, rank count, ds_config and synthetic shards as the quickstart."""
    import inspect

    import launching

    cmd = launching.command(launching.TRAIN, launching.train_args("w"), port=1)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert cmd[cmd.index("--ds_config") + 1] == str(REPO / "ds_configs" / "zero2_fp32.json")
    assert launching.TRAIN == REPO / "launch" / "train.py"
    assert '"vit_adapter_ds.data.make_shards", "synthetic"' in inspect.getsource(launching.make_synthetic_shards)
    test = (REPO / "tests" / "integration" / "engine" / "test_engine_quickstart.py").read_text()
    assert "seg_shards" in test and "return train(work, " in test and "ds=" not in test


def test_ci_runs_the_readme_test_command():
    """``.ci/run`` runs the test command the README's Quickstart names (after its install steps)."""
    command = re.search(r"OMP_NUM_THREADS=1 (python -m pytest [^\n]+)", QUICKSTART).group(1)
    ci = (REPO / ".ci" / "run").read_text()
    assert "export OMP_NUM_THREADS=1" in ci
    assert any(line.startswith(command + " ") or line == command for line in ci.splitlines()), command
