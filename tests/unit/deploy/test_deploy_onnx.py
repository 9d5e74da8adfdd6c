"""ONNX export (``vit_adapter_ds/deploy/onnx.py``, ``launch/export.py --format onnx``): every exportable model family
of the tiny recipes goes through ONNX Runtime and is compared with the PyTorch model (the independent reference:
``model.logits`` / ``predict_labels`` / ``predict``, run here, not through the module's own comparison alone), at
several static sizes including non-square ones; refusals are clear errors; and the comparison has the power to fail
(other weights, a wrong normalisation, the fused attention path left on)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from vit_adapter_ds.deploy import onnx as deploy  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def _export_cli():
    spec = importlib.util.spec_from_file_location("launch_export_onnx_under_test", REPO / "launch" / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``checkpoint(recipe)``: a seeded, untrained model of the recipe saved as ``{'state_dict': ...}`` (cached)."""
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.tasks import task_for

    made = {}

    def make(recipe):
        if recipe not in made:
            torch.manual_seed(0)
            model = task_for(load_recipe(recipe)).build_model(load_pretrained=False)
            path = tmp_path_factory.mktemp("ckpt") / f"{recipe}.pth"
            torch.save({"state_dict": model.state_dict()}, path)
            made[recipe] = path
        return made[recipe]

    return make


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _tol(ref: torch.Tensor) -> float:
    return deploy.RTOL * max(1.0, float(ref.abs().max()))


def _export(recipe, checkpoint, tmp_path, size, options=None):
    out = tmp_path / f"{recipe}.onnx"
    record = deploy.export_recipe(recipe, checkpoint(recipe), out, input_size=size, options=options)
    assert record["verify"]["ok"], record["verify"]
    assert record["input_size"] == list(size)
    _, _, model = deploy.load_model(recipe, checkpoint(recipe), options)
    return out, model, record


# ------------------------------------------------------------------------------------------------------ segmentors
@pytest.mark.parametrize("recipe,size", [("synthetic_quickstart", (128, 256)),  # the quickstart's test size
                                         ("synthetic_quickstart", (128, 128)),
                                         ("synthetic_quickstart", (96, 160)),
                                         ("synthetic_mask2former", (96, 160))],
                         ids=["quickstart-128x256", "quickstart-128x128", "quickstart-96x160", "mask2former-96x160"])
def test_segmentor_round_trip(recipe, size, checkpoint, tmp_path):
    out, model, record = _export(recipe, checkpoint, tmp_path, size)
    assert record["outputs"] == ["logits", "labels"]
    assert record["mean"] == [123.675, 116.28, 103.53] and record["std"] == [58.395, 57.12, 57.375]
    assert record["verify"]["max_rel"]["logits"] < deploy.RTOL
    sess = _session(out)
    assert [i.shape for i in sess.get_inputs()] == [[1, 3, *size]]  # static: exactly the exported size
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(123))
    logits, labels = sess.run(None, {"img": x.numpy()})
    with torch.no_grad():
        ref = model.logits(x, mode="whole")
        ref_labels = model.predict_labels(x, mode="whole")
    assert logits.shape == (1, model.num_classes, *size)
    assert float((torch.from_numpy(logits) - ref).abs().max()) <= _tol(ref)
    assert (torch.from_numpy(labels) != ref_labels).float().mean() < 1e-3  # near-ties only
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # another size is refused by the runtime
        sess.run(None, {"img": np.zeros((1, 3, size[0] + 32, size[1]), np.float32)})


# ------------------------------------------------------------------------------------------------------ detectors
DETECTORS = [("synthetic_mask_rcnn", None), ("synthetic_cascade_mask_rcnn", None),
             # untrained one-stage heads start at the focal-loss prior (scores ~0.01): a lower threshold gives boxes
             ("synthetic_atss", ["model.test_cfg.score_thr=0.005"]),
             ("synthetic_gfl", ["model.test_cfg.score_thr=0.005"]),
             ("synthetic_sparse_rcnn", None)]


@pytest.mark.parametrize("recipe,options", DETECTORS, ids=[r for r, _ in DETECTORS])
def test_detector_round_trip(recipe, options, checkpoint, tmp_path):
    size = (128, 192)
    out, model, record = _export(recipe, checkpoint, tmp_path, size, options)
    assert all(n > 0 for n in record["verify"]["counts"]), record["verify"]
    for name in ("boxes", "scores"):
        assert record["verify"]["max_abs"][name] <= record["verify"]["tol"][name]
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(123))
    outs = _session(out).run(None, {"img": x.numpy()})
    with torch.no_grad():
        pred = model.predict(x)[0]
    boxes, scores, labels = (torch.from_numpy(v) for v in outs[:3])
    assert len(scores) == len(pred["scores"]) > 0
    # order-free checks: the sorted scores, the label multiset, the sorted box coordinates of each label
    assert float((scores.sort().values - pred["scores"].sort().values).abs().max()) <= deploy.RTOL
    assert sorted(labels.tolist()) == sorted(pred["labels"].tolist())
    for lab in set(labels.tolist()):
        a = boxes[labels == lab].flatten().sort().values
        b = pred["boxes"][pred["labels"] == lab].flatten().sort().values
        assert float((a - b).abs().max()) <= _tol(pred["boxes"])
    if "mask_probs" in record["outputs"]:
        assert outs[3].shape == (len(scores), 28, 28) and 0.0 <= outs[3].min() <= outs[3].max() <= 1.0


def test_panoptic_mask2former_query_outputs(checkpoint, tmp_path):
    out, model, record = _export("synthetic_mask2former_panoptic", checkpoint, tmp_path, (128, 192))
    assert record["outputs"] == ["mask_cls", "mask_logits"]
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(123))
    mask_cls, mask_logits = _session(out).run(None, {"img": x.numpy()})
    with torch.no_grad():
        cls_list, mask_list = model.panoptic_head(model.extract_feat(x))
        ref = torch.nn.functional.interpolate(mask_list[-1], size=(128, 192), mode="bilinear", align_corners=False)
    assert float((torch.from_numpy(mask_cls) - cls_list[-1][0]).abs().max()) <= _tol(cls_list[-1])
    assert float((torch.from_numpy(mask_logits) - ref[0]).abs().max()) <= _tol(ref)


# ------------------------------------------------------------------------------------------------------ refusals
def test_htc_is_refused_with_the_reason_before_reading_the_checkpoint(tmp_path):
    with pytest.raises(deploy.ExportError,
                       match=r"HybridTaskCascade cannot be exported to ONNX \(recipe synthetic_htc\): .*soft-NMS"):
        deploy.load_model("synthetic_htc", tmp_path / "never_read.pth")
    ok, why = deploy.onnx_support("HybridTaskCascadeAug")
    assert not ok and "test-time augmentation" in why


def test_cli_needs_config_and_refuses_another_recipes_checkpoint(checkpoint, tmp_path, capsys):
    cli = _export_cli()
    ckpt = checkpoint("synthetic_mask_rcnn")
    assert cli.main([str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--format onnx needs --config RECIPE" in capsys.readouterr().err
    assert cli.main([str(ckpt), "--format", "onnx", "--config", "synthetic_quickstart",
                     "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "does not load into the EncoderDecoder of recipe synthetic_quickstart" in err and "Traceback" not in err
    assert cli.main([str(ckpt), "--format", "onnx", "--config", "synthetic_htc",
                     "--out", str(tmp_path / "m.onnx")]) == 2
    assert "HybridTaskCascade cannot be exported to ONNX" in capsys.readouterr().err
    assert cli.main([str(ckpt), "--format", "mmcv", "--config", "synthetic_mask_rcnn",
                     "--out", str(tmp_path / "m.pth")]) == 2
    assert "--config is only read by --format onnx" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_input_size_must_be_multiples_of_32(checkpoint, tmp_path):
    with pytest.raises(deploy.ExportError, match="multiples of 32"):
        deploy.export_recipe("synthetic_quickstart", checkpoint("synthetic_quickstart"), tmp_path / "q.onnx",
                             input_size=(100, 128))


# ------------------------------------------------------------------------------------------------------ power
def test_a_wrong_export_fails_the_comparison(checkpoint, tmp_path):
    """The same file checked against other weights, and fed a wrongly normalised image, fails."""
    recipe, size = "synthetic_quickstart", (128, 128)
    _, _, model = deploy.load_model(recipe, checkpoint(recipe))
    out = deploy.export_onnx(model, tmp_path / "q.onnx", size)
    assert deploy.verify_onnx(out, model).ok
    other = deploy.load_model(recipe, checkpoint(recipe))[2]
    with torch.no_grad():
        other.decode_head.fpn_bottleneck.bn.running_mean += 0.05  # one BatchNorm statistic off by 0.05
    report = deploy.verify_onnx(out, other)
    assert not report.ok and "logits: max |onnx - torch|" in report.problems[0], report.summary()
    # the image normalised with 0.5 / 0.25 (0-1 pixels) instead of the recipe's 0-255 mean / std
    rgb = deploy.verification_inputs(size, 1)[0] * torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1) + \
        torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    wrong = ((rgb / 255 - 0.5) / 0.25).float()
    right = deploy.verification_inputs(size, 1)[0]
    logits = torch.from_numpy(_session(out).run(None, {"img": wrong.numpy()})[0])
    with torch.no_grad():
        ref = model.logits(right, mode="whole")
    assert float((logits - ref).abs().max()) > 100 * _tol(ref)


def test_attention_is_forced_onto_the_pytorch_path_and_restored(monkeypatch):
    from vit_adapter_ds.ops import ENV_VAR, resolve_backend

    monkeypatch.setenv(ENV_VAR, "cuda")
    with deploy.pytorch_attention():
        assert resolve_backend(torch.device("cpu")) == "pytorch"
    assert os.environ[ENV_VAR] == "cuda"
    monkeypatch.delenv(ENV_VAR)
    with deploy.pytorch_attention():
        assert os.environ[ENV_VAR] == "pytorch"
    assert ENV_VAR not in os.environ


def test_export_changes_are_undone(checkpoint):
    from vit_adapter_ds.models.detectors import dense_heads
    from vit_adapter_ds.models.detectors.roi_extractor import LevelRoIAlign

    _, _, model = deploy.load_model("synthetic_mask_rcnn", checkpoint("synthetic_mask_rcnn"))
    pools = [m for m in model.modules() if isinstance(m, LevelRoIAlign)]
    before = dense_heads.filter_topk, dense_heads.nms_post_process
    with deploy.traceable(model):
        assert all("forward" in vars(m) for m in pools)
        assert dense_heads.filter_topk is not before[0]
    assert pools and not any("forward" in vars(m) for m in pools)
    assert (dense_heads.filter_topk, dense_heads.nms_post_process) == before


MSDA_EXPORT = r"""
import sys, contextlib, torch
from vit_adapter_ds.models.backbones.msdeform_attn import MSDeformAttn
from vit_adapter_ds.deploy.onnx import pytorch_attention
torch.manual_seed(0)
attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2).eval()
shapes, starts = torch.tensor([[8, 8], [4, 4]]), torch.tensor([0, 64])
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = attn
    def forward(self, q, ref, feat):
        return self.a(q, ref, feat, shapes, starts)
args = (torch.randn(1, 10, 32), torch.rand(1, 10, 2, 2), torch.randn(1, 80, 32))
with (pytorch_attention() if sys.argv[1] == "forced" else contextlib.nullcontext()), torch.no_grad():
    try:
        torch.onnx.export(M(), args, sys.argv[2], dynamo=False, opset_version=17)
    except Exception as e:
        print("EXPORT FAILED", type(e).__name__)
        sys.exit(3)
import onnxruntime as ort
out = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"]).run(None, {
    i.name: a.numpy() for i, a in zip(ort.InferenceSession(sys.argv[2]).get_inputs(), args)})[0]
with pytorch_attention(), torch.no_grad():
    ref = M()(*args)
print("MAXDIFF", float((torch.from_numpy(out) - ref).abs().max()))
"""


def test_fused_attention_path_does_not_export_unless_forced(tmp_path):
    """With the Triton kernels selected (``TRITON_INTERPRET=1`` makes them run on the CPU), tracing the deformable
    attention without forcing its PyTorch path fails; forced, it exports and matches."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "VIT_ADAPTER_MSDA_BACKEND": "triton", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = {mode: subprocess.run([sys.executable, "-c", MSDA_EXPORT, mode, str(tmp_path / f"{mode}.onnx")], env=env,
                                 capture_output=True, text=True, timeout=300) for mode in ("forced", "plain")}
    assert runs["forced"].returncode == 0, runs["forced"].stderr[-2000:]
    assert float(runs["forced"].stdout.split("MAXDIFF")[1]) < 1e-5
    assert runs["plain"].returncode == 3 and "EXPORT FAILED" in runs["plain"].stdout, runs["plain"].stderr[-2000:]
