"""Recipe validation: every misspelled or ill-typed key anywhere in a recipe or ``--cfg-options`` is a clear
``ConfigError`` naming its dotted path, before any process group or worker starts; validation builds the model on
the meta device, so whatever validation accepts the builder builds (and the reverse)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vit_adapter_ds.config import ConfigError, load_recipe
from vit_adapter_ds.tasks import load_and_validate


@pytest.mark.parametrize("options,match", [
    (["bogus=1"], "unknown key 'bogus'.*valid top-level keys"),
    (["model.backbone.embed_dimm=96"], r"model\.backbone\.embed_dimm; valid keys of model\.backbone:.*embed_dim"),
    (["model.backbone.depth=2.5"], r"model\.backbone\.depth must be int, got float 2\.5"),
    (["optimizer.type=SGD"], "optimizer.type='SGD' is not supported"),
    (["runner.max_iters=0"], "runner.max_iters must be >= 1"),
    (["lr_config.policy=step"], "lr_config.policy='step'"),
    (["runner.max_itres=3"], r"runner\.max_itres; valid keys of runner: max_iters, type"),
    (["model.decode_head.chanels=3"], r"model\.decode_head\.chanels"),
    (["model.decode_head.loss_decode.loss_weigth=1.0"], r"model\.decode_head\.loss_decode\.loss_weigth"),
    (["model.decode_head.loss_decode.loss_weight=heavy"], r"loss_decode\.loss_weight must be float"),
    (["model.auxiliary_head.norm_cfg.type=GN"], r"model\.auxiliary_head\.norm_cfg\.type='GN'"),
    (["fp16.loss_scale.init_scal=512"], r"fp16\.loss_scale\.init_scal"),
    (["checkpoint_config.max_keep_ckpts=abc"], r"checkpoint_config\.max_keep_ckpts must be int or None"),
    (["checkpoint_config.max_keep_ckpts=0"], r"checkpoint_config\.max_keep_ckpts=0"),
    (["evaluation.save_best=mIoUU"], r"evaluation\.save_best='mIoUU' is not supported"),
    (["data.train.batch_size=3"], "must not set.*batch_size"),
    (["data.train.crop_sise=3"], r"data\.train\.crop_sise"),
    (["data.train.pipeline.6.to_rgb=False"], r"data\.train\.pipeline\[6\]\.to_rgb=False is not supported"),
    # one recipe dialect: the loader arguments and test settings are the official pipelines', not data / evaluation
    # keys of their own
    (["data.train.crop_size=(64,64)"], r"data\.train sets \['crop_size'\]: these come from data\.train\.pipeline"),
    (["data.val.img_norm_cfg={'mean':[0,0,0],'std':[1,1,1]}"], r"data\.val sets \['img_norm_cfg'\]"),
    (["data.val.pipeline=None"], r"data\.val\.pipeline is required: the official test_pipeline"),
    (["evaluation.img_scale=(128,64)"], r"evaluation\.img_scale is not a recipe key.*data\.val\.pipeline"),
    (["evaluation.flip=True"], r"evaluation\.flip is not a recipe key"),
    (["model.test_cfg.mode=sliding"], r"model\.test_cfg\.mode='sliding'"),
    (["optimizer.paramwise_cfg.custom_keys={'pos_embed': {'decay_mul': 0.0}}"],
     r"optimizer\.paramwise_cfg\.custom_keys\.pos_embed\.decay_mul"),
    (["noequals"], "expects key=value"),
])
def test_bad_recipe_values_are_rejected(options, match):
    with pytest.raises(ConfigError, match=match):
        load_and_validate(None, options)


def test_keys_the_builder_reads_are_accepted_and_used():
    # ignore_index: read by the builder, so validation accepts it (it used to reject it)
    _, _, model = load_and_validate(None, ["model.decode_head.ignore_index=254", "model.auxiliary_head.ignore_index=254"])
    assert model.ignore_index == 254
    with pytest.raises(ConfigError, match="auxiliary_head.ignore_index 255 differs"):
        load_and_validate(None, ["model.decode_head.ignore_index=254"])
    # SyncBN heads validate *and* build (the engine converts them only under NCCL)
    cfg, task, _ = load_and_validate(None, ["model.decode_head.norm_cfg.type=SyncBN"])
    model = task.build_model()
    img, gt = torch.randn(2, 3, 64, 64), torch.randint(0, 8, (2, 64, 64))
    model.train()(img, gt)["loss"].backward()
    # loss weights come from the heads' loss_decode
    _, _, model = load_and_validate(None, ["model.auxiliary_head.loss_decode.loss_weight=0.25"])
    assert model.aux_weight == 0.25


def test_dotted_override_below_a_none_value():
    """``optimizer_config.grad_clip.max_norm=1.0`` on a recipe with ``grad_clip=None`` creates the dict (it used to
    raise a raw TypeError inside mmengine)."""
    cfg = load_recipe("upernet_deit_adapter_tiny_512_160k_ade20k")
    assert cfg.optimizer_config.grad_clip is None
    cfg = load_recipe("upernet_deit_adapter_tiny_512_160k_ade20k", ["optimizer_config.grad_clip.max_norm=1.0"])
    assert cfg.optimizer_config.grad_clip == {"max_norm": 1.0}
    with pytest.raises(ConfigError, match=r"grad_clip\.max_norm must be > 0"):
        load_recipe("upernet_deit_adapter_tiny_512_160k_ade20k", ["optimizer_config.grad_clip.max_norm=0"])


@pytest.mark.parametrize("name", ["upernet_beit_adapter_large_640_160k_ade20k_ss",
                                  "mask2former_beit_adapter_large_896_80k_ade20k_ss"])
def test_large_recipes_validate_on_the_meta_device(name):
    _, _, model = load_and_validate(name)
    p = next(model.parameters())
    assert p.device.type == "meta"
    assert sum(q.numel() for q in model.parameters()) > 3e8


def test_cli_rejects_before_training(tmp_path, capsys, monkeypatch):
    from vit_adapter_ds.engine.cli import main
    monkeypatch.chdir(tmp_path)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ds = str(Path(__file__).resolve().parents[3] / "ds_configs" / "zero2_fp32.json")
    cases = [
        (["--ds_config", ds], "shard_dir shards/synthetic/train not found"),
        (["--ds_config", "missing.json"], "missing.json' not found"),
        (["--ds_config", ds, "--cfg-options", "foo=1"], "unknown key 'foo'"),
        (["--ds_config", ds, "--config", "nope"], "recipe 'nope' not found"),
        (["--ds_config", ds, "--cfg-options", "model.decode_head.loss_decode.loss_weigth=1"],
         "model.decode_head.loss_decode.loss_weigth"),
        (["--ds_config", ds, "--cfg-options", "data.train.shard_dir=.", "data.val.shard_dir=.", "load_from=x.pth"],
         "x.pth not found"),
        (["--ds_config", ds, "--resume", "nowhere", "--cfg-options", "data.train.shard_dir=.",
          "data.val.shard_dir=."], "--resume nowhere: not found"),
    ]
    for argv, match in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert match in err, (argv, err)
    with pytest.raises(SystemExit):
        main(["--bogus-flag"])
