"""The planner's activation memory (vit_adapter_ds.plan), measured on fake tensors, against a real forward /
backward of the same model on the CPU at a size where it fits: the bytes autograd actually saves for backward
(saved-tensor hooks written here, storages told apart by their real addresses) must agree within 5 %, with and
without activation checkpointing; the peak of live bytes likewise (the same follower on real tensors).

The real run uses a deformable-attention function written here that keeps what the fused CUDA / Triton kernel
keeps (its inputs; ops/msda.py ``_MSDeformAttnFunction``), computing its values with the float64-checked
reference, so the real and the planned step hold the same tensors; Mask2Former's label maps hold exactly
``segments_per_image`` classes, so its real matching makes the pairs the planner's stand-in assumes."""
from __future__ import annotations


import pytest
import torch

from plan_reference import real_saved_and_peak, use_fused_references

from vit_adapter_ds.plan.activations import measure_step
from vit_adapter_ds.plan.step import set_checkpointing, uses_checkpointing
from vit_adapter_ds.tasks import load_and_validate

SEGMENTS = 3


def _labels(n, h, w):
    """Label maps holding exactly SEGMENTS classes (0 .. SEGMENTS - 1) each, in bands."""
    lab = torch.zeros(n, h, w, dtype=torch.long)
    for k in range(SEGMENTS):
        lab[:, k * h // SEGMENTS:(k + 1) * h // SEGMENTS] = k
    return lab


@pytest.mark.parametrize("with_cp", [False, True], ids=["no_cp", "cp"])
@pytest.mark.parametrize("recipe", ["synthetic_quickstart", "synthetic_mask2former"])
def test_fake_step_memory_equals_a_real_step(recipe, with_cp, monkeypatch):
    size, n = (64, 96), 2
    cfg, task, meta = load_and_validate(recipe)
    torch.manual_seed(0)
    real = task.build_model(load_pretrained=False).train()
    assert set_checkpointing(real, with_cp) and set_checkpointing(meta, with_cp) and uses_checkpointing(meta) == with_cp

    def batch(dtype=torch.float32):
        return {"img": torch.randn(n, 3, *size, dtype=dtype), "gt_semantic_seg": _labels(n, *size)}

    def forward_loss(m, b):
        return task.forward_loss(m, b, torch.device("cpu"), torch.float32)["loss"]

    planned = measure_step(meta, batch, forward_loss, batch_size=n, image_size=size, segments_per_image=SEGMENTS)
    use_fused_references(monkeypatch)  # deformable and softmax attention as the fused GPU kernels keep them
    saved, peak = real_saved_and_peak(real, batch, forward_loss)
    assert saved > 0 and planned.saved == pytest.approx(saved, rel=0.05), (planned.saved, saved)
    assert planned.peak == pytest.approx(peak, rel=0.05), (planned.peak, peak)
    assert planned.flops > 0 and any("deformable attention" in s for s in planned.stand_ins)


def test_softmax_attention_is_planned_as_the_fused_gpu_kernel():
    """A ViT attention at 1024 tokens: the planner keeps what F.scaled_dot_product_attention's fused kernel keeps for
    backward -- the qkv projection's output (q, k, v are views of it), the attention output and the float32
    log-sum-exp -- and no (heads, N, N) weights (the CPU float32 path materialises 2 of them, 8x the rest here);
    its FLOPs are the two products' 2 * B * h * N * N * (d + d) forward plus twice that backward."""
    from vit_adapter_ds.models.backbones.vit import Attention

    b, n, c, heads = 2, 1024, 64, 4
    with torch.device("meta"):
        model = Attention(c, num_heads=heads, qkv_bias=True)

    def batch(dtype=torch.float32):
        return {"x": torch.randn(b, n, c, dtype=dtype, requires_grad=True)}

    def forward_loss(m, bt):
        return m(bt["x"], 32, 32).sum()

    planned = measure_step(model, batch, forward_loss, batch_size=b, image_size=(32, 32))
    f = 4  # bytes per float32
    x_and_qkv = b * n * c * f + b * n * 3 * c * f  # the linear's input, its output (the views q, k, v)
    out, lse, merged = b * n * c * f, b * heads * n * f, b * n * c * f  # output, log-sum-exp, proj's input
    assert planned.saved == x_and_qkv + out + lse + merged, planned.saved
    weights = b * heads * n * n * f
    assert planned.saved < weights / 4 and any("softmax attention" in s for s in planned.stand_ins)
    d = c // heads
    attn_flops = 3 * 2 * b * heads * n * n * 2 * d
    linear_flops = 3 * (2 * b * n * c * 3 * c + 2 * b * n * c * c)  # qkv + proj, forward and backward (2x)
    assert planned.flops == attn_flops + linear_flops, (planned.flops, attn_flops + linear_flops)


def test_a_branch_that_does_not_reach_the_loss_is_not_kept():
    """A module output the loss never uses (as the ATSS / GFL backbone's stride-4 map): a real step frees its graph
    after the forward, so its saved tensors are not kept for backward; the planner (FLOPs counted as well) agrees
    with the real step to the byte, and still counts the unused branch's FLOPs."""
    from torch import nn

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(64, 64), nn.Sequential(nn.Linear(64, 256), nn.GELU())

        def forward(self, x):
            return self.used(x), self.unused(x)

    with torch.device("meta"):
        meta = TwoHeads()
    real = TwoHeads()

    def batch(dtype=torch.float32):
        return {"x": torch.randn(8, 512, 64, dtype=dtype, requires_grad=True)}

    def forward_loss(m, b):
        return m(b["x"])[0].sum()

    planned = measure_step(meta, batch, forward_loss, batch_size=8, image_size=(1, 512))
    saved, peak = real_saved_and_peak(real, batch, forward_loss)
    assert planned.saved == saved == 8 * 512 * 64 * 4  # the used Linear's input only
    forward = 2 * 8 * 512 * 64 * (64 + 256)  # both branches run
    assert planned.flops == forward + 2 * 2 * 8 * 512 * 64 * 64, planned.flops  # backward of the used one
