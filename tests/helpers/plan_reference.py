"""References for the planner's tests (tests/unit/plan): what a REAL CPU training step keeps and peaks at, written
independently of vit_adapter_ds.plan's fake-tensor measurement (saved-tensor hooks telling storages apart by their
real addresses), and a deformable-attention function with the footprint of the fused kernel."""
from __future__ import annotations

import gc
import weakref

import torch

from vit_adapter_ds.ops import ms_deform_attn_reference


class RealFusedMSDA(torch.autograd.Function):
    """Reference values (the float64-checked reference); saved tensors as the fused CUDA / Triton kernel's
    (ops/msda.py ``_MSDeformAttnFunction``: value, shapes, starts, locations, weights)."""

    @staticmethod
    def forward(ctx, value, shapes, starts, loc, attn):
        args = (value.contiguous(), shapes, starts, loc.contiguous(), attn.contiguous())
        ctx.save_for_backward(*args)
        with torch.no_grad():
            return ms_deform_attn_reference(*args)

    @staticmethod
    def backward(ctx, grad):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        with torch.enable_grad():
            v, lo, a = (t.detach().requires_grad_() for t in (value, loc, attn))
            out = ms_deform_attn_reference(v, shapes, starts, lo, a)
            gv, gl, ga = torch.autograd.grad(out, (v, lo, a), grad)
        return gv, None, None, gl, ga


def real_msda(value, shapes, starts, loc, attn, backend=None):
    return RealFusedMSDA.apply(value, shapes, starts, loc, attn)


def real_saved_and_peak(model, batch, forward_loss):
    """(bytes saved for backward still alive when backward starts, peak live bytes) of a real step of ``model`` on
    ``batch()``; parameters' gradients released once accumulated (as the planner counts them with the states)."""
    from vit_adapter_ds.plan.activations import LiveBytes

    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    packed = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in own and st.nbytes():
            packed.setdefault(st.data_ptr(), (weakref.ref(st), st.nbytes()))
        return t

    hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None)) for p in model.parameters()]
    live = LiveBytes([t.untyped_storage() for t in (*model.parameters(), *model.buffers())])
    gc.collect()
    gc.freeze()  # as the planner does: its collections at new peaks walk only the step's objects
    try:
        with live:
            b = batch()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = forward_loss(model, b)
            gc.collect()
            saved = sum(n for ref, n in packed.values() if ref() is not None)
            loss.backward()
            del loss, b
    finally:
        gc.unfreeze()
        for h in hooks:
            h.remove()
    return saved, live.peak
