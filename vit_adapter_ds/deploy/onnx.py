"""ONNX export of a recipe's model with a checkpoint, and its check against PyTorch with ONNX Runtime (CPU).

``launch/export.py CKPT --format onnx --config RECIPE --out model.onnx [--input-size H W] [--no-verify]`` calls
:func:`export_recipe`: the model is built from the recipe and the checkpoint (any kind, loaded strictly:
``task.build_eval_model``), traced by torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``,
opset 17) and, by default, run by ONNX Runtime next to PyTorch on the same inputs (:func:`verify_onnx`).

**Input.** ``img``: float32 (1, 3, H, W), RGB, normalised as the recipe's test pipeline does
(``Normalize(mean, std, to_rgb=True)``: ``(pixel - mean) / std`` per channel, pixel values 0-255; both are written
into the file's metadata, ``mean`` / ``std``); H and W multiples of 32. One batch image.

**Static size.** The graph takes exactly the H x W it was exported at (``--input-size``; default: the recipe's
test scale, short x long side, rounded up to multiples of 32, or the sliding-window crop of a ``slide`` recipe).
Dynamic height / width do not export (checked with torch 2.14): the deformable attention's PyTorch path reads the
level shapes as Python numbers (``spatial_shapes.tolist()`` for ``grid_sample`` views), so a trace bakes them in;
UperNet's pyramid pooling (``AdaptiveAvgPool2d``) has no ONNX form for a symbolic input size; and the
``torch.export``-based exporter (``dynamo=True``) stops at the op's data-dependent geometry check
(``ops/checks.py``). Export once per input size (each takes seconds); ONNX Runtime refuses another size.

**What is exported** (the model's test path, minus what depends on the data in Python):

* segmentors (``EncoderDecoder`` UperNet / FPN, ``EncoderDecoderMask2Former`` and ``...Aug``), whole-image
  inference: ``logits`` (1, C, H, W) float32, what ``model.logits(img, mode='whole')`` returns (UperNet: class
  logits; Mask2Former: the semantic score map; ``softmax`` over dim 1 gives ``model.predict``'s probabilities),
  and ``labels`` (1, H, W) int64, their argmax. A ``slide`` recipe exports one window (the crop); tiling is the
  caller's.
* ``MaskRCNN``, ``CascadeRCNN``: ``boxes`` (K, 4) x1y1x2y2 in input pixels, ``scores`` (K,), ``labels`` (K,)
  0-based, ``mask_probs`` (K, M, M) the RoI mask probabilities of each box's class (M = 28); pasting them into the
  image (a Python loop over boxes: ``models.detectors.mask_rcnn.paste_masks``) is left to the caller.
* ``ATSS``, ``GFL``, ``SparseRCNN``: ``boxes``, ``scores``, ``labels``.
* ``Mask2Former`` (COCO panoptic): ``mask_cls`` (Q, C + 1) query class logits and ``mask_logits`` (Q, H, W) at the
  input size, the inputs of its panoptic / instance post-processing (a Python loop over queries: left to the caller,
  ``models.detectors.mask2former_panoptic.panoptic_postprocess`` / ``instance_postprocess``).
* Refused with :class:`ExportError` (model type and reason): ``HybridTaskCascade`` (its R-CNN test uses
  soft-NMS, a NumPy loop with data-dependent length) and ``HybridTaskCascadeAug`` (multi-scale + flip test-time
  augmentation as well).

**Graph changes during export only** (:func:`traceable`; undone afterwards): the deformable attention is forced onto
its pure PyTorch path (``$VIT_ADAPTER_MSDA_BACKEND=pytorch``, the ``grid_sample`` reference; the CUDA / Triton
kernels are autograd functions that do not export), ``AdaptiveAvgPool2d`` runs as two products with constant
averaging matrices (the same averages; the TorchScript exporter refuses output sizes that do not divide the input),
the RoI extractor pools every RoI from every level and keeps its own level's result (``torch.where``: the same
values, no data-dependent level split), the one-stage heads' score filter takes the top ``nms_pre`` of all
(anchor, class) scores and then drops those under ``score_thr`` (the same set as threshold-then-top-k), and their
NMS step loses its early return for no boxes (a trace would record whichever branch the example input took).

**Tolerance** (:data:`RTOL`). Both runtimes compute in float32 but sum in different orders (oneDNN / MKL vs MLAS
kernels, the pooling as a matrix product): with unit roundoff u = 2^-24 ~ 6e-8, one reduction of length n differs by
about sqrt(n) u relative (at most n u); the quickstart's longest reductions (n ~ 3,000: UperNet's 3 x 3 convs over
352 channels) give ~3e-6 per layer, and a few such layers compound to ~1e-5. An output passes when
``max |onnx - torch| <= RTOL * max(1, max |torch|)`` with ``RTOL = 1e-4``: ten times that estimate, while a real
mistake (other weights, normalisation, attention path) moves outputs by 1e-2 or more. Measured on the tiny
recipes (``benchmarks/RESULTS.md``, the tests): logits, scores and boxes 1e-7 to 6e-6 relative; the RoI mask
probabilities come closest (up to 4.6e-5 of the 1e-4), since they are sampled at box corners that already differ
by ~5e-5 pixels between the runtimes. Integer outputs: segmentation ``labels`` may differ
only where the two best PyTorch logits are within ``2 * tol``; detections are matched one to one (same label, boxes
and scores within tolerance), so the counts must agree.
"""
from __future__ import annotations

import contextlib
import io
import os
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

RTOL = 1e-4  # see the module docstring: |onnx - torch| <= RTOL * max(1, max |torch|) per output
OPSET = 17
SIZE_DIVISOR = 32
HTC_REFUSAL = ("its R-CNN test uses soft-NMS (models/detectors/soft_nms.py), a NumPy loop whose length depends on "
               "the data, which a trace cannot record")


class ExportError(Exception):
    """A refusal or failure of the ONNX export, naming the model type / file and the reason."""


# ---------------------------------------------------------------------------------------------------- graphs
class SegmentorGraph(nn.Module):
    """Whole-image inference of a segmentor: ``(logits, labels)``."""

    outputs = ("logits", "labels")

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, img):
        logits = self.model.logits(img, mode="whole")
        return logits, logits.argmax(dim=1)


def _single_size(img):
    return [(int(img.shape[-2]), int(img.shape[-1]))]


class MaskRCNNGraph(nn.Module):
    """``MaskRCNN.predict`` before pasting: ``(boxes, scores, labels, mask_probs)``."""

    outputs = ("boxes", "scores", "labels", "mask_probs")

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, img):
        from torchvision.models.detection.image_list import ImageList

        m, sizes = self.model, _single_size(img)
        feats = m.extract_feat(img)
        proposals, _ = m.rpn(ImageList(img, sizes), feats)
        d = m.roi_heads(feats, proposals, sizes)[0][0]
        return d["boxes"].float(), d["scores"].float(), d["labels"] - 1, d["masks"][:, 0].float()


class CascadeGraph(MaskRCNNGraph):
    """``CascadeRCNN.predict`` before pasting: ``(boxes, scores, labels, mask_probs)``."""

    def forward(self, img):
        from torchvision.models.detection.image_list import ImageList

        m, sizes = self.model, _single_size(img)
        feats = m.extract_feat(img)
        proposals, _ = m.rpn(ImageList(img, sizes), feats)
        r = m.roi_head.simple_test(feats, proposals, sizes)[0]
        return r["boxes"].float(), r["scores"].float(), r["labels"], r["mask_probs"].float()


class BoxGraph(nn.Module):
    """``predict`` of a box-only detector (ATSS, GFL, Sparse R-CNN): ``(boxes, scores, labels)``."""

    outputs = ("boxes", "scores", "labels")

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, img):
        r = self.model.predict(img)[0]
        return r["boxes"].float(), r["scores"].float(), r["labels"]


class PanopticGraph(nn.Module):
    """The panoptic Mask2Former's last-layer query outputs: ``(mask_cls, mask_logits)`` at the input size (what
    ``Mask2Former.predict`` post-processes)."""

    outputs = ("mask_cls", "mask_logits")

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, img):
        import torch.nn.functional as F

        cls_list, mask_list = self.model.panoptic_head(self.model.extract_feat(img))
        masks = F.interpolate(mask_list[-1].float(), size=tuple(img.shape[-2:]), mode="bilinear",
                              align_corners=False)
        return cls_list[-1][0].float(), masks[0]


def graph_class(model_class: type):
    """The exported module for a model class (by its family: subclasses included), or ``(None, why not)``. Model
    types come from the model registry (``models.registry``); nothing here lists them by name."""
    from ..models.detectors.cascade_mask_rcnn import CascadeRCNN
    from ..models.detectors.htc import HybridTaskCascade
    from ..models.detectors.mask2former_panoptic import Mask2Former
    from ..models.detectors.mask_rcnn import MaskRCNN
    from ..models.detectors.single_stage import SingleStageDetector
    from ..models.detectors.sparse_rcnn import SparseRCNN
    from ..models.segmentor import EncoderDecoder

    if issubclass(model_class, EncoderDecoder):
        return SegmentorGraph, ""
    if issubclass(model_class, HybridTaskCascade):
        tta = " (and its multi-scale + flip test-time augmentation is Python too)" if model_class.__name__.endswith(
            "Aug") else ""
        return None, HTC_REFUSAL + tta
    for family, graph in ((MaskRCNN, MaskRCNNGraph), (CascadeRCNN, CascadeGraph), (SingleStageDetector, BoxGraph),
                          (SparseRCNN, BoxGraph), (Mask2Former, PanopticGraph)):
        if issubclass(model_class, family):
            return graph, ""
    return None, "no ONNX graph is defined for this model family (vit_adapter_ds/deploy/onnx.py graph_class)"


def onnx_support(model_type: str) -> tuple[bool, str]:
    """``(exportable, its outputs / why not)`` for a recipe's ``model.type`` (a registered segmentor or detector)."""
    from ..models.registry import DETECTORS, SEGMENTORS

    cls = SEGMENTORS.get(model_type) or DETECTORS.get(model_type)
    if cls is None:
        return False, "not a registered segmentor or detector"
    graph, why = graph_class(cls)
    return (True, f"outputs {', '.join(graph.outputs)}") if graph is not None else (False, why)


def graph_for(model) -> nn.Module:
    """The exported module around ``model``, or :class:`ExportError` naming the model type and the reason."""
    graph, why = graph_class(type(model))
    if graph is None:
        raise ExportError(f"{type(model).__name__} cannot be exported to ONNX: {why}")
    return graph(model).eval()


# ---------------------------------------------------------------------------------------- export-only changes
@contextlib.contextmanager
def pytorch_attention():
    """Force the deformable attention onto its pure PyTorch path (``$VIT_ADAPTER_MSDA_BACKEND=pytorch``), then
    restore the variable as it was."""
    from ..ops import ENV_VAR

    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "pytorch"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def _averaging_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in): row i averages PyTorch's adaptive-pooling bin i, ``[floor(i n / o), ceil((i + 1) n / o))``."""
    p = torch.zeros(n_out, n_in, dtype=like.dtype, device=like.device)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        p[i, start:end] = 1.0 / (end - start)
    return p


def _adaptive_pool_as_matmul(self, x):
    out = self.output_size if isinstance(self.output_size, (tuple, list)) else (self.output_size,) * 2
    h, w = int(x.shape[-2]), int(x.shape[-1])
    oh, ow = (h if out[0] is None else int(out[0])), (w if out[1] is None else int(out[1]))
    return _averaging_matrix(h, oh, x) @ x @ _averaging_matrix(w, ow, x).t()


def _level_roi_align_traceable(self, features, boxes, image_shapes=None):
    from torchvision.ops import roi_align

    from ..models.detectors.roi_extractor import boxes_to_rois

    feats = [features[n] for n in self.featmap_names]
    rois = boxes_to_rois(boxes).to(device=feats[0].device, dtype=torch.float32)
    lvl, o, out = self.map_levels(rois), self.output_size, None
    for i, (f, s) in enumerate(zip(feats, self.featmap_strides)):
        pooled = roi_align(f.float(), rois, (o, o), spatial_scale=1.0 / s, sampling_ratio=self.sampling_ratio,
                           aligned=self.aligned)
        out = pooled if out is None else torch.where((lvl == i)[:, None, None, None], pooled, out)
    return out.to(feats[0].dtype)


def _filter_topk_traceable(scores, score_thr, nms_pre):
    c = scores.shape[1]
    flat = scores.reshape(-1)
    top, idx = flat.topk(min(int(nms_pre), flat.shape[0]))
    keep = top > score_thr
    top, idx = top[keep], idx[keep]
    return top, idx % c, torch.div(idx, c, rounding_mode="floor")


def _nms_post_process_traceable(boxes, scores, labels, nms_iou, max_per_img):
    from torchvision.ops import batched_nms

    keep = batched_nms(boxes.float(), scores.float(), labels, float(nms_iou))[:int(max_per_img)]
    return boxes[keep], scores[keep], labels[keep]


@contextlib.contextmanager
def traceable(model):
    """The export-only changes of the module docstring on ``model`` (and the one-stage heads' module), undone on
    exit."""
    from ..models.detectors import dense_heads
    from ..models.detectors.roi_extractor import LevelRoIAlign

    patched = []
    for mod in model.modules():
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            mod.forward = types.MethodType(_adaptive_pool_as_matmul, mod)
            patched.append(mod)
        elif isinstance(mod, LevelRoIAlign):
            mod.forward = types.MethodType(_level_roi_align_traceable, mod)
            patched.append(mod)
    saved = dense_heads.filter_topk, dense_heads.nms_post_process
    dense_heads.filter_topk, dense_heads.nms_post_process = _filter_topk_traceable, _nms_post_process_traceable
    try:
        with pytorch_attention():
            yield model
    finally:
        dense_heads.filter_topk, dense_heads.nms_post_process = saved
        for mod in patched:
            del mod.forward


# ----------------------------------------------------------------------------------------------------- export
def _first_lines(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).strip().splitlines()[:2]) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def check_input_size(input_size, model_type: str = "model") -> tuple[int, int]:
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ExportError(f"--input-size must be two integers H W, got {input_size!r}") from None
    if h <= 0 or w <= 0 or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
        raise ExportError(f"{model_type}: input size {h} x {w} must be positive multiples of {SIZE_DIVISOR}")
    return h, w


def export_onnx(model, out, input_size, *, metadata: dict | None = None, opset: int = OPSET) -> Path:
    """Trace ``model`` (eval mode, CPU, float32) at ``input_size`` (H, W) and write ``out`` (ONNX, one input ``img``,
    outputs of :func:`graph_class`, ``metadata`` as string metadata props). :class:`ExportError` for a model type that
    does not export, a size the model refuses, or an exporter failure."""
    import onnx

    model_type = type(model).__name__
    graph = graph_for(model)
    h, w = check_input_size(input_size, model_type)
    model = model.float().eval()
    example = torch.zeros(1, 3, h, w).normal_(generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with traceable(model), torch.no_grad():
        try:
            graph(example)  # the PyTorch model's own refusals (e.g. a BEiT that needs img_size) come first
        except Exception as e:  # noqa: BLE001 - any model error is the reason for the refusal
            raise ExportError(f"{model_type} does not run at input size {h} x {w}: {type(e).__name__}: "
                              f"{_first_lines(e)}") from e
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(graph, (example,), str(out), dynamo=False, opset_version=opset,
                                  input_names=["img"], output_names=list(graph.outputs), do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - the exporter's errors carry a whole graph dump: first lines only
            raise ExportError(f"{model_type}: torch.onnx.export failed: {type(e).__name__}: {_first_lines(e)}") from e
    proto = onnx.load(str(out))
    meta = {"model_type": model_type, "input_size": f"{h} {w}", "outputs": ",".join(graph.outputs),
            "input": "img: float32 (1, 3, H, W) RGB, (pixel - mean) / std", **(metadata or {})}
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=str(k), value=str(v))
    onnx.save(proto, str(out))
    return out


# ----------------------------------------------------------------------------------------------- verification
@dataclass
class VerifyReport:
    """What :func:`verify_onnx` measured: per output the max abs difference, its tolerance and the max difference
    relative to ``max(1, max |torch|)``; detection counts per input; the problems (empty: passed)."""

    model_type: str
    input_size: tuple
    num_inputs: int
    rtol: float = RTOL
    max_abs: dict = field(default_factory=dict)
    max_rel: dict = field(default_factory=dict)
    tol: dict = field(default_factory=dict)
    counts: list = field(default_factory=list)
    differing_labels: int = 0  # segmentation: label-map pixels that differ (allowed at near-ties only)
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def note(self, name: str, diff: float, scale: float) -> None:
        tol = self.rtol * max(1.0, scale)
        self.max_abs[name] = max(self.max_abs.get(name, 0.0), diff)
        self.max_rel[name] = max(self.max_rel.get(name, 0.0), diff / max(1.0, scale))
        self.tol[name] = max(self.tol.get(name, 0.0), tol)
        if diff > tol:
            self.problems.append(f"{name}: max |onnx - torch| {diff:.3g} > tolerance {tol:.3g}")

    def summary(self) -> str:
        h, w = self.input_size
        parts = [f"{n} max abs {self.max_abs[n]:.2e} (rel {self.max_rel[n]:.2e}, tol {self.tol[n]:.2e})"
                 for n in self.max_abs]
        if "logits" in self.max_abs:
            parts.append(f"{self.differing_labels} label pixels differ")
        if self.counts:
            parts.append(f"detections per input {self.counts}")
        verdict = "OK" if self.ok else "FAILED: " + "; ".join(self.problems)
        return (f"ONNX Runtime vs PyTorch, {self.model_type} at {h} x {w}, {self.num_inputs} inputs: "
                + "; ".join(parts) + f" -> {verdict}")

    def as_dict(self) -> dict:
        return {"model_type": self.model_type, "input_size": list(self.input_size), "num_inputs": self.num_inputs,
                "rtol": self.rtol, "max_abs": self.max_abs, "max_rel": self.max_rel, "tol": self.tol,
                "counts": self.counts, "differing_labels": self.differing_labels, "problems": self.problems,
                "ok": self.ok}


def verification_inputs(input_size, num_inputs: int = 3, mean=None, std=None, seed: int = 0) -> list[torch.Tensor]:
    """(1, 3, H, W) inputs: the built-in synthetic images (objects on textures) normalised with ``mean`` / ``std``
    (the recipe's), alternating with standard-normal noise."""
    import numpy as np

    from ..data.synthetic import generate_sample

    h, w = input_size
    mean = torch.tensor(mean if mean is not None else (123.675, 116.28, 103.53)).view(1, 3, 1, 1)
    std = torch.tensor(std if std is not None else (58.395, 57.12, 57.375)).view(1, 3, 1, 1)
    gen, rng, out = torch.Generator().manual_seed(seed), np.random.default_rng(seed), []
    for i in range(num_inputs):
        if i % 2 == 0:
            rgb = generate_sample(rng, (h, w))[0]
            x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
            out.append(((x - mean) / std).contiguous())
        else:
            out.append(torch.randn(1, 3, h, w, generator=gen))
    return out


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _compare_segmentation(report, onnx_out, model, x):
    logits = model.logits(x, mode="whole").float()  # the model's own test path, independent of the exported graph
    labels = model.predict_labels(x, mode="whole")
    o_logits, o_labels = (torch.from_numpy(v) for v in onnx_out)
    if tuple(o_logits.shape) != tuple(logits.shape):
        report.problems.append(f"logits shape {tuple(o_logits.shape)} != PyTorch {tuple(logits.shape)}")
        return
    scale = float(logits.abs().max())
    report.note("logits", float((o_logits - logits).abs().max()), scale)
    wrong = o_labels != labels
    report.differing_labels += int(wrong.sum())
    if wrong.any():  # allowed only at near-ties of the two labels' PyTorch logits
        lo = logits.gather(1, o_labels[:, None].long())[:, 0][wrong]
        lt = logits.gather(1, labels[:, None])[:, 0][wrong]
        gap = float((lt - lo).abs().max())
        if gap > 2 * RTOL * max(1.0, scale):
            report.problems.append(f"labels: {int(wrong.sum())} pixels differ, PyTorch logit gap up to {gap:.3g}")


def _match(report, o_boxes, o_scores, o_labels, boxes, scores, labels):
    """One-to-one matching of ONNX and PyTorch detections (same label, nearest box and score); returns the pairs."""
    from scipy.optimize import linear_sum_assignment

    if len(o_labels) != len(labels):
        report.problems.append(f"{len(o_labels)} ONNX detections vs {len(labels)} PyTorch")
        return None
    if len(labels) == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    box_tol = RTOL * max(1.0, float(boxes.abs().max()))
    cost = torch.maximum((o_boxes[:, None] - boxes[None]).abs().amax(-1) / box_tol,
                         (o_scores[:, None] - scores[None]).abs() / RTOL)
    cost = torch.where(o_labels[:, None] == labels[None], cost, torch.full_like(cost, 1e9))
    rows, cols = linear_sum_assignment(cost.double().numpy())
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    if bool((o_labels[rows] != labels[cols]).any()):
        report.problems.append("detections: labels differ after matching")
    return rows, cols


def _compare_detection(report, onnx_out, model, graph, x):
    outs = [torch.from_numpy(v) for v in onnx_out]
    pred = model.predict(x)[0]  # the model's own test path (boxes / scores / labels as predict returns them)
    o_boxes, o_scores, o_labels = outs[0], outs[1], outs[2].long()
    boxes, scores, labels = pred["boxes"].float(), pred["scores"].float(), pred["labels"].long()
    report.counts.append(int(len(labels)))
    pairs = _match(report, o_boxes, o_scores, o_labels, boxes, scores, labels)
    if pairs is None:
        return
    rows, cols = pairs
    if len(rows):
        report.note("boxes", float((o_boxes[rows] - boxes[cols]).abs().max()), float(boxes.abs().max()))
        report.note("scores", float((o_scores[rows] - scores[cols]).abs().max()), float(scores.abs().max()))
    if "mask_probs" in graph.outputs:  # before pasting: against the same model path run by PyTorch
        ref = graph(x)[3]
        if len(rows):
            report.note("mask_probs", float((outs[3][rows] - ref[cols]).abs().max()), float(ref.abs().max()))


def _compare_raw(report, onnx_out, graph, x):
    for name, o, r in zip(graph.outputs, onnx_out, graph(x)):
        o = torch.from_numpy(o)
        if tuple(o.shape) != tuple(r.shape):
            report.problems.append(f"{name} shape {tuple(o.shape)} != PyTorch {tuple(r.shape)}")
            continue
        report.note(name, float((o.float() - r.float()).abs().max()), float(r.float().abs().max()))


def verify_onnx(path, model, inputs=None, *, num_inputs: int = 3, mean=None, std=None) -> VerifyReport:
    """Run the ONNX file with ONNX Runtime (CPU) and ``model`` with PyTorch on the same ``inputs`` (default
    :func:`verification_inputs` at the file's input size) and compare them (module docstring: tolerance, matching).
    The PyTorch side is the model's public test path (``logits`` / ``predict_labels``, ``predict``) wherever the
    exported outputs are the same quantities; RoI mask probabilities and the panoptic query outputs are compared
    with the same model code run by PyTorch."""
    model = model.float().eval()
    model_type = type(model).__name__
    graph = graph_for(model)
    sess = _session(path)
    shape = sess.get_inputs()[0].shape
    size = (int(shape[2]), int(shape[3]))
    if inputs is None:
        inputs = verification_inputs(size, num_inputs, mean, std)
    report = VerifyReport(model_type, size, len(inputs))
    with torch.no_grad():
        for x in inputs:
            if tuple(x.shape[-2:]) != size:
                raise ExportError(f"{path}: exported for {size[0]} x {size[1]} inputs, got {tuple(x.shape[-2:])} "
                                  "(the graph has a static size: export again with --input-size)")
            onnx_out = sess.run(None, {"img": x.numpy()})
            if isinstance(graph, SegmentorGraph):
                _compare_segmentation(report, onnx_out, model, x)
            elif isinstance(graph, (MaskRCNNGraph, BoxGraph)):
                _compare_detection(report, onnx_out, model, graph, x)
            else:
                _compare_raw(report, onnx_out, graph, x)
    if report.counts and not any(report.counts):
        report.problems.append("no detections on any verification input, so no box was compared (a model that "
                               "detects nothing here; export without verification only knowingly)")
    return report


# ----------------------------------------------------------------------------------------- recipe + checkpoint
def preprocessing(cfg, task) -> dict:
    """The recipe's test normalisation and size: ``mean``, ``std`` (0-255 RGB), ``scale`` ((long, short) or None),
    ``mode`` / ``crop_size`` (segmentors)."""
    from ..config.keys import to_plain

    data = to_plain(cfg.get("data") or {})
    model_cfg = to_plain(cfg.get("model") or {})
    test_cfg = dict(model_cfg.get("test_cfg") or {})
    out = {"mean": None, "std": None, "scale": None, "mode": test_cfg.get("mode"),
           "crop_size": test_cfg.get("crop_size")}
    split = "test" if data.get("test") else "val"
    try:
        if getattr(task, "name", "") == "semantic_segmentation":
            from ..data.datasets import SegmentationShards

            st = SegmentationShards.test_settings(data, to_plain(cfg.get("evaluation") or {}), split)
            out.update(mean=st["mean"], std=st["std"], scale=st["img_scale"])
        else:
            from ..tasks.detection import test_settings

            st = test_settings(data, split)
            out.update(mean=st.mean, std=st.std, scale=st.scale)
    except Exception:  # noqa: BLE001 - a recipe without a readable test pipeline: no defaults
        pass
    return out


def default_input_size(prep: dict) -> tuple[int, int] | None:
    """A ``slide`` recipe's crop, else its test scale as (short, long) rounded up to multiples of 32."""
    if prep.get("mode") == "slide" and prep.get("crop_size"):
        return tuple(int(v) for v in prep["crop_size"])
    scale = prep.get("scale")
    if not scale:
        return None
    long_side, short_side = max(scale), min(scale)
    up = lambda v: -(-int(v) // SIZE_DIVISOR) * SIZE_DIVISOR  # noqa: E731
    return up(short_side), up(long_side)


def load_model(recipe, checkpoint, options=None):
    """``(cfg, task, model)``: the recipe's model with ``checkpoint`` loaded strictly (``task.build_eval_model``) on
    the CPU; :class:`ExportError` for a recipe or checkpoint that does not fit."""
    from ..checkpoint.reader import CheckpointError
    from ..config import ConfigError, load_recipe
    from ..tasks import task_for

    try:
        cfg = load_recipe(recipe, options)
        task = task_for(cfg)
    except ConfigError as e:
        raise ExportError(str(e)) from e
    model_type = (cfg.get("model") or {}).get("type", "EncoderDecoder")
    ok, why = onnx_support(model_type)
    if not ok:  # before reading a possibly large checkpoint
        raise ExportError(f"{model_type} cannot be exported to ONNX (recipe {recipe}): {why}")
    try:
        model = task.build_eval_model(str(checkpoint), "cpu")
    except (CheckpointError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        raise ExportError(f"{checkpoint} does not load into the {model_type} of recipe {recipe}: "
                          f"{_first_lines(e, 600)}") from e
    return cfg, task, model


def export_recipe(recipe, checkpoint, out, *, input_size=None, verify: bool = True, num_inputs: int = 3,
                  options=None) -> dict:
    """``launch/export.py --format onnx``: build ``recipe``'s model with ``checkpoint``, export it at
    ``input_size`` (default :func:`default_input_size`) to ``out`` and (``verify``) check it with ONNX Runtime.
    Returns a record (model type, input size, normalisation, outputs, verification); raises :class:`ExportError`
    (also when the verification fails: the file stays, the message says by how much)."""
    cfg, task, model = load_model(recipe, checkpoint, options)
    prep = preprocessing(cfg, task)
    model_type = type(model).__name__
    if input_size is None:
        input_size = default_input_size(prep)
        if input_size is None:
            raise ExportError(f"{model_type}: the recipe has no test scale; give --input-size H W")
    h, w = check_input_size(input_size, model_type)
    meta = {"recipe": str(recipe), "checkpoint": str(checkpoint),
            "mean": " ".join(f"{v:g}" for v in prep["mean"]) if prep["mean"] else "unknown",
            "std": " ".join(f"{v:g}" for v in prep["std"]) if prep["std"] else "unknown"}
    graph = graph_for(model)
    if isinstance(graph, SegmentorGraph) and prep.get("mode") == "slide":
        meta["note"] = (f"one sliding window: the recipe tests with mode='slide', crop {prep['crop_size']}, "
                        f"stride {(cfg.model.get('test_cfg') or {}).get('stride')}; tile and average the logits")
    path = export_onnx(model, out, (h, w), metadata=meta)
    record = {"out": str(path), "format": "onnx", "model_type": model_type, "input_size": [h, w],
              "mean": list(prep["mean"] or []), "std": list(prep["std"] or []), "outputs": list(graph.outputs),
              "opset": OPSET}
    if verify:
        report = verify_onnx(path, model, num_inputs=num_inputs, mean=prep["mean"], std=prep["std"])
        record["verify"] = report.as_dict()
        if not report.ok:
            raise ExportError(f"{path}: {report.summary()}")
        record["verify_summary"] = report.summary()
    return record


__all__ = ["ExportError", "VerifyReport", "RTOL", "OPSET", "graph_class", "onnx_support", "graph_for",
           "pytorch_attention", "traceable", "export_onnx", "verify_onnx", "verification_inputs", "preprocessing",
           "default_input_size", "load_model", "export_recipe"]
