"""References for the planner's tests (tests/unit/plan): what a REAL CPU training step keeps and peaks at, written
independently of vit_adapter_ds.plan's fake-tensor measurement (saved-tensor hooks telling storages apart by their
real addresses), and deformable / softmax attention functions with the footprints of the fused GPU kernels."""
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
        n, lq, m, d = value.shape[0], loc.shape[1], value.shape[2], value.shape[3]
        out = value.new_empty((n, lq, m * d))
        with torch.no_grad():  # a few queries at a time (see backward): the kernel keeps no per-sample tensors
            for q0 in range(0, lq, 16):
                sl = slice(q0, q0 + 16)
                out[:, sl] = ms_deform_attn_reference(args[0], shapes, starts, args[3][:, sl], args[4][:, sl])
        return out

    @staticmethod
    def backward(ctx, grad):
        """The reference's gradients over chunks of queries: the fused kernel's backward allocates the three
        gradients and no per-sample intermediates; the reference (grid_sample per level) materialises
        (queries x points x channels) samples, so it runs a few queries at a time to stay near that footprint."""
        value, shapes, starts, loc, attn = ctx.saved_tensors
        v = value.detach().requires_grad_()
        gl, ga = torch.empty_like(loc), torch.empty_like(attn)
        step = 16
        for q0 in range(0, loc.shape[1], step):
            sl = slice(q0, q0 + step)
            with torch.enable_grad():
                lo, a = loc[:, sl].detach().requires_grad_(), attn[:, sl].detach().requires_grad_()
                ms_deform_attn_reference(v, shapes, starts, lo, a).backward(grad[:, sl])
            gl[:, sl], ga[:, sl] = lo.grad, a.grad
        return v.grad, None, None, gl, ga


def real_msda(value, shapes, starts, loc, attn, backend=None):
    return RealFusedMSDA.apply(value, shapes, starts, loc, attn)


def _softmax_attention(q, k, v, scale, bias, scale_q_first):
    scores = (q * scale) @ k.transpose(-2, -1) if scale_q_first else (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    return scores


class RealFusedAttention(torch.autograd.Function):
    """Softmax attention computed in full, saving what the fused GPU kernel (``F.scaled_dot_product_attention``'s
    memory-efficient / flash kernel) saves: q, k, v, the output and the float32 log-sum-exp of the scores; the
    backward recomputes the weights."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale, scale_q_first):
        with torch.no_grad():
            scores = _softmax_attention(q, k, v, scale, bias, scale_q_first)
            lse = torch.logsumexp(scores.float(), dim=-1)
            out = (scores.softmax(-1) @ v)
            del scores
        ctx.save_for_backward(q, k, v, out, lse, bias)
        ctx.scale, ctx.scale_q_first = scale, scale_q_first
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _, bias = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            b = bias.detach().requires_grad_() if bias is not None and ctx.needs_input_grad[3] else bias
            out = _softmax_attention(*leaves, ctx.scale, b, ctx.scale_q_first).softmax(-1) @ leaves[2]
            wrt = leaves + ([b] if b is not None and b.requires_grad else [])
            grads = torch.autograd.grad(out, wrt, grad)
        gb = grads[3] if len(grads) == 4 else None
        return grads[0], grads[1], grads[2], gb, None, None


def real_attention(q, k, v, scale, bias=None, dropout_p=0.0, scale_q_first=False):
    """``models/backbones/layers.attention`` (no dropout) with the fused GPU kernel's saved tensors."""
    assert dropout_p == 0.0
    return RealFusedAttention.apply(q, k, v, bias, scale, scale_q_first)


def use_fused_references(monkeypatch):
    """The real step with the fused kernels' footprints, as the planner models a GPU step: deformable attention
    (:func:`real_msda`) and the backbones' softmax attention (:func:`real_attention`)."""
    from vit_adapter_ds.models.backbones import beit, msdeform_attn, uniperceiver, vit

    monkeypatch.setattr(msdeform_attn, "ms_deform_attn", real_msda)
    for mod in (beit, vit, uniperceiver):
        monkeypatch.setattr(mod, "attention", real_attention)


def real_saved_and_peak(model, batch, forward_loss):
    """(bytes saved for backward still alive when backward starts, peak live bytes) of a real step of ``model`` on
    ``batch()``; parameters' gradients released once accumulated (as the planner counts them with the states)."""
    from vit_adapter_ds.plan.activations import LiveBytes

    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    packed = {}

    def pack(t):
        st = t.untyped_storage()
        prev = packed.get(st.data_ptr())
        # the allocator reuses the address of a freed storage: a dead entry there is another storage
        if st.data_ptr() not in own and st.nbytes() and (prev is None or prev[0]() is None):
            packed[st.data_ptr()] = (weakref.ref(st), st.nbytes())
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
