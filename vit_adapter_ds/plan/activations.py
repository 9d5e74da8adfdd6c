"""The memory and FLOPs of one training step (forward, loss, backward) measured on fake tensors: the recipe's own
model runs at the full crop size with no real memory (``torch._subclasses.FakeTensorMode``), and every tensor it
creates is followed from its creation to its release.

Three figures per step (bytes, on one rank, for the batch given):

* ``saved``: the distinct storages autograd keeps for backward at the end of forward + loss (saved-tensor hooks;
  parameters and buffers excluded: they are model states). With activation checkpointing (``with_cp``) a
  checkpointed block keeps only its inputs.
* ``retained``: the bytes of every tensor created in forward + loss that is still alive when backward starts
  (``saved`` plus the outputs and anything else held).
* ``peak``: the highest bytes alive at any moment of forward, loss and backward, counting the tensors the step
  creates (activations, temporaries, the recomputation of checkpointed blocks, gradients on their way to the
  optimizer; a parameter's gradient is released once accumulated: gradients are model states, :mod:`.states`).

FLOPs: ``torch.utils.flop_counter`` over the same run (matrix multiplications and convolutions, forward and
backward) plus the deformable attention by its formula (:mod:`.standins`). Parts that need real values run as
stand-ins of the same sizes (:mod:`.standins`); the result names them.
"""
from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .standins import stand_ins

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepMeasure:
    """One measured training step (bytes on one rank for ``batch_size`` images of ``image_size``)."""
    batch_size: int
    image_size: tuple
    dtype: str
    with_cp: bool
    saved: int
    retained: int
    peak: int
    flops: int
    stand_ins: list = field(default_factory=list)


class LiveBytes(TorchDispatchMode):
    """Follows every storage an op creates until it is released (weak references); ``current`` / ``peak`` bytes.
    Storages that existed before (parameters, buffers, inputs given from outside) are not counted."""

    def __init__(self, known=(), tolerance: float = 0.02):
        super().__init__()
        self.known = {id(s) for s in known}
        self.tolerance = float(tolerance)
        self.confirmed = 0
        self._refs = {}
        self.live = {}
        self.current = self.peak = 0

    def _release(self, key):
        n = self.live.pop(key, 0)
        self._refs.pop(key, None)
        self.current -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = id(st)
                if key in self.known or key in self.live:
                    continue
                n = st.nbytes()
                self.live[key] = n
                self._refs[key] = weakref.ref(st, lambda _, k=key: self._release(k))
                self.current += n
        slack = max(self.tolerance * self.confirmed, 65536)
        if self.current > self.confirmed + slack:
            # A new peak counts only what is still reachable: released tensors in reference cycles (autograd
            # nodes of a checkpointed block's recomputation) wait for the cycle collector. It runs when the
            # peak would rise by more than the slack (``tolerance`` of it, at least 64 KiB), so the reported
            # peak is at most that much too high.
            gc.collect()
            self.confirmed = max(self.confirmed, self.current)
        self.peak = max(self.peak, min(self.current, self.confirmed + slack))
        return out


class SavedBytes:
    """Saved-tensor hooks: the distinct storages autograd keeps, excluding ``known`` ones (parameters, buffers)."""

    def __init__(self, known=()):
        self.known = {id(s) for s in known}
        self._saved = {}

    def pack(self, t):
        st = t.untyped_storage()
        prev = self._saved.get(id(st))
        # an id is reused once its storage is gone: a dead entry under this id is another (freed) storage
        if id(st) not in self.known and (prev is None or prev[0]() is None):
            self._saved[id(st)] = (weakref.ref(st), st.nbytes())
        return t

    @staticmethod
    def unpack(t):
        return t

    def alive_bytes(self) -> int:
        return sum(n for ref, n in self._saved.values() if ref() is not None)

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def model_storages(model) -> list:
    return [t.untyped_storage() for t in (*model.parameters(), *model.buffers())]


def run_step(model, make_batch, forward_loss):
    """Forward + loss + backward of ``model`` on ``make_batch()`` (called inside the measurement, so its tensors
    are the step's): ``(saved, retained, peak)`` bytes. Works on real and on fake tensors. Each parameter's
    gradient is released once accumulated (gradients are model states)."""
    hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
             for p in model.parameters() if p.requires_grad]
    known = model_storages(model)
    live, saved = LiveBytes(known), SavedBytes(known)
    gc.collect()
    gc.freeze()  # the objects that exist now stay: the tracker's collections then only walk the step's own
    try:
        with live:
            batch = make_batch()
            with saved.hooks():
                loss = forward_loss(model, batch)
            gc.collect()  # what only a reference cycle still holds is not kept for backward
            retained, kept = live.current, saved.alive_bytes()
            loss.backward()
            del loss, batch
    finally:
        gc.unfreeze()
        for h in hooks:
            h.remove()
    return kept, retained, live.peak


def global_flop_counter():
    """torch's ``FlopCounterMode`` (its FLOP formulas and decompositions) counting the total only. Its per-module
    breakdown (``ModuleTracker``) hooks every module's outputs for the backward pass, and those hooks keep alive the
    autograd graph of outputs that never reach the loss (the ATSS / GFL backbone's unused stride-4 map): the step's
    saved bytes then included tensors a real step frees after the forward."""
    from torch.utils.flop_counter import FlopCounterMode

    class _NoModules:
        parents = ("Global",)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModules()
    return counter


def measure_step(model, make_batch, forward_loss, *, batch_size, image_size, dtype="fp32", with_cp=False,
                 segments_per_image=10) -> StepMeasure:
    """Measure one training step of ``model`` (built on the meta device: its parameters become fake tensors, no
    memory) on fake tensors. ``make_batch(dtype)`` creates the batch (called under fake mode);
    ``forward_loss(model, batch)`` returns the total loss. ``dtype``: the training dtype of the model and images."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} not in {sorted(_DTYPES)}")
    tdtype = _DTYPES[dtype]
    fake = FakeTensorMode(allow_non_fake_inputs=True)  # the meta parameters become fake by to_empty
    if tdtype != torch.float32:
        model = model.to(tdtype)  # on the meta device, as DeepSpeed casts the module for bf16 / fp16
    with fake:
        model = model.to_empty(device="cpu")
        model.train()
    counter = global_flop_counter()
    with fake, stand_ins(segments_per_image) as rec, counter:
        saved, retained, peak = run_step(model, lambda: make_batch(tdtype), forward_loss)
    h, w = image_size
    return StepMeasure(batch_size=int(batch_size), image_size=(int(h), int(w)), dtype=dtype, with_cp=bool(with_cp),
                       saved=int(saved), retained=int(retained), peak=int(peak),
                       flops=int(counter.get_total_flops() + rec.extra_flops), stand_ins=list(rec.notes))
