"""Mask R-CNN + detection ViT-Adapter: losses, training signal, inference outputs, config translation, and the
mmdet conventions kept over torchvision's (anchors, RoI level mapping, low-quality matching), checked against
hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.detectors import FPN, MaskRCNN
from vit_adapter_ds.models.detectors.mask_rcnn import FixedStrideAnchorGenerator, MaxIoUMatcher, mask_targets
from vit_adapter_ds.models.detectors.roi_extractor import LevelRoIAlign

I12 = [[0, 2], [3, 5], [6, 8], [9, 11]]


def tiny_cfg(num_classes=7, depth=12, **backbone):
    b = dict(type="ViTAdapter", patch_size=16, embed_dim=192, depth=depth, num_heads=3, mlp_ratio=4,
             drop_path_rate=0.0, conv_inplane=64, n_points=4, deform_num_heads=6, cffn_ratio=0.25, deform_ratio=1.0,
             interaction_indexes=I12 if depth == 12 else [[i, i] for i in range(4)],
             window_attn=([True, True, False] * 4)[:depth], window_size=([14, 14, None] * 4)[:depth])
    b.update(backbone)
    return dict(type="MaskRCNN", backbone=b, neck=dict(type="FPN", in_channels=[192] * 4, out_channels=256, num_outs=5),
                roi_head=dict(bbox_head=dict(num_classes=num_classes), mask_head=dict(num_classes=num_classes)))


def _targets(h=128, w=160):
    m0 = torch.zeros(2, h, w, dtype=torch.uint8)
    m0[0, 20:60, 30:90] = 1
    m0[1, 70:110, 100:150] = 1
    m1 = torch.zeros(1, h, w, dtype=torch.uint8)
    m1[0, 50:120, 10:70] = 1
    return [dict(boxes=torch.tensor([[30., 20, 90, 60], [100, 70, 150, 110]]), labels=torch.tensor([2, 0]), masks=m0,
                 img_shape=(120, 150)),
            dict(boxes=torch.tensor([[10., 50, 70, 120]]), labels=torch.tensor([6]), masks=m1)]


def test_forward_backward_finite_losses_vit_adapter_t():
    torch.manual_seed(0)
    model = MaskRCNN.from_config(tiny_cfg())
    model.train()
    losses = model(torch.randn(2, 3, 128, 160), _targets())
    keys = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask", "loss", "acc"}
    assert set(losses) == keys
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    torch.testing.assert_close(losses["loss"], total)
    assert not losses["acc"].requires_grad
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:20])
    assert model.backbone.spm.stem[0].weight.grad.abs().sum() > 0
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_image_without_annotations_gives_finite_losses():
    torch.manual_seed(0)
    model = MaskRCNN.from_config(tiny_cfg(depth=4))
    model.train()
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                 masks=torch.zeros(0, 64, 64, dtype=torch.uint8))
    losses = model(torch.randn(1, 3, 64, 64), [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"] == 0 and losses["loss_rpn_bbox"] == 0 and losses["loss_mask"] == 0
    losses["loss"].backward()


def test_a_few_steps_on_one_image_lower_the_loss():
    torch.manual_seed(0)
    model = MaskRCNN.from_config(tiny_cfg(depth=4))
    model.train()
    x = torch.randn(1, 3, 128, 128)
    m = torch.zeros(1, 128, 128, dtype=torch.uint8)
    m[0, 32:96, 40:100] = 1
    t = [dict(boxes=torch.tensor([[40., 32, 100, 96]]), labels=torch.tensor([3]), masks=m)]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.05)

    def loss():
        torch.manual_seed(1)  # same anchor / RoI sampling each time
        return model(x, t)["loss"]

    first = loss()
    for _ in range(6):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        last = loss()
    assert last < 0.7 * first.detach(), (float(first), float(last))


def test_predict_outputs_in_original_pixels():
    torch.manual_seed(0)
    model = MaskRCNN.from_config(tiny_cfg(depth=4))
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    sizes, ori = [(60, 90), (64, 96)], [(120, 180), (80, 144)]  # x2 both ways; 1.25 in y, 1.5 in x
    with torch.no_grad():
        out = model.predict(x, image_sizes=sizes, ori_shapes=ori)
        at_inference = model.predict(x, image_sizes=sizes)  # boxes in resized-image pixels
    assert len(out) == 2
    for o, r, (h, w), (ih, iw) in zip(out, at_inference, ori, sizes, strict=True):
        k = o["boxes"].shape[0]
        assert 0 < k <= 100
        # the same detections, boxes times the per-axis scale (mmdet rescale=True: bboxes / scale_factor)
        assert torch.equal(o["labels"], r["labels"]) and torch.equal(o["scores"], r["scores"])
        scale = torch.tensor([w / iw, h / ih, w / iw, h / ih], dtype=torch.float64)
        torch.testing.assert_close(o["boxes"].double(), r["boxes"].double() * scale, atol=1e-4, rtol=1e-6)
        assert r["masks"].shape == (k, ih, iw)
        assert o["labels"].shape == o["scores"].shape == (k,) and o["masks"].shape == (k, h, w)
        assert o["masks"].dtype == torch.bool
        assert o["labels"].min() >= 0 and o["labels"].max() < 7
        assert o["boxes"][:, 2].max() <= w + 1e-3 and o["boxes"][:, 3].max() <= h + 1e-3
        assert (o["scores"] >= 0.05).all() and (o["scores"][:-1] >= o["scores"][1:]).all()
    # eval-mode forward is predict
    assert model(torch.randn(1, 3, 64, 64))[0]["boxes"].shape[1] == 4


def test_builds_on_meta_device_without_reading_pretrained():
    with torch.device("meta"):
        model = MaskRCNN.from_config(tiny_cfg(pretrained="does/not/exist.pth"))
    assert model.pretrained == "does/not/exist.pth"
    assert next(model.parameters()).device.type == "meta"


@pytest.mark.parametrize("path,value,msg", [
    ("rpn_head.anchor_generator.scale", [8],
     "model.rpn_head.anchor_generator.scale; valid keys of model.rpn_head.anchor_generator:"),
    ("roi_head.bbox_head.loss_bbox.loss_weigth", 1.0, "model.roi_head.bbox_head.loss_bbox.loss_weigth"),
    ("train_cfg.rcnn.sampler.add_gt_as_proposals", False, "train_cfg.rcnn.sampler.add_gt_as_proposals=False"),
    ("roi_head.bbox_head.reg_class_agnostic", True, "reg_class_agnostic=True is not supported"),
    ("neck.add_extra_convs", "on_input", "model.neck.add_extra_convs='on_input'"),
    ("test_cfg.rcnn.score_thr", "0.05", "model.test_cfg.rcnn.score_thr must be float"),
    ("backbone.windows", 3, "model.backbone.windows; valid keys of model.backbone:"),
    ("roi_head.mask_head.num_classes", 5, "differs from bbox_head.num_classes=7"),
])
def test_config_errors_name_the_dotted_path(path, value, msg):
    cfg = tiny_cfg(depth=4)
    node = cfg
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("(", r"\(")):
        with torch.device("meta"):
            MaskRCNN.from_config(cfg)


def test_official_values_are_accepted():
    cfg = tiny_cfg(depth=4)
    cfg["rpn_head"] = dict(type="RPNHead", in_channels=256, feat_channels=256,
                           anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                                 strides=[4, 8, 16, 32, 64]),
                           bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[.0, .0, .0, .0],
                                           target_stds=[1.0, 1.0, 1.0, 1.0]),
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0))
    cfg["train_cfg"] = dict(rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3,
                                                   min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
                                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                                  add_gt_as_proposals=False),
                                     allowed_border=-1, pos_weight=-1, debug=False))
    with torch.device("meta"):
        model = MaskRCNN.from_config(cfg)
    assert model.rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert model.roi_heads.box_coder.weights == pytest.approx((10.0, 10.0, 5.0, 5.0))
    assert model.rpn._pre_nms_top_n == dict(training=2000, testing=1000)
    assert model.rpn._post_nms_top_n == dict(training=1000, testing=1000)
    assert (model.roi_heads.score_thresh, model.roi_heads.nms_thresh, model.roi_heads.detections_per_img) == \
        (0.05, 0.5, 100)


def test_fpn_levels_and_max_pool_level():
    fpn = FPN([8, 8, 8, 8], 16, 5)
    feats = [torch.randn(1, 8, 100 // s, 96 // s) for s in (4, 8, 16, 32)]  # 25x24, 12x12, 6x6, 3x3
    out = fpn(feats)
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(25, 24), (12, 12), (6, 6), (3, 3), (2, 2)]
    torch.testing.assert_close(out["pool"], out["3"][..., ::2, ::2])  # max_pool2d(kernel 1, stride 2)


def test_anchors_equal_mmdet_formula_hand_computed():
    gen = FixedStrideAnchorGenerator((4, 8), (8,), (0.5, 1.0, 2.0))
    from torchvision.models.detection.image_list import ImageList
    feats = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)]
    anchors = gen(ImageList(torch.zeros(1, 3, 8, 12), [(8, 12)]), feats)[0]
    # mmdet: base 32 at stride 4; ratio 0.5 -> w = 32 / sqrt(.5) = 45.2548, h = 32 * sqrt(.5) = 22.6274
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)
    torch.testing.assert_close(anchors[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    torch.testing.assert_close(anchors[1], torch.tensor([-16., -16, 16, 16]))
    torch.testing.assert_close(anchors[2], torch.tensor([-h / 2, -w / 2, h / 2, w / 2]))
    # location (y=0, x=1) of level 0: shifted by stride 4 in x
    torch.testing.assert_close(anchors[4], torch.tensor([-16. + 4, -16, 16 + 4, 16]))
    assert anchors.shape == (2 * 3 * 3 + 1 * 2 * 3, 4)
    # level 1 (stride 8, base 64) at (y=0, x=1)
    torch.testing.assert_close(anchors[18 + 3 + 1], torch.tensor([-32. + 8, -32, 32 + 8, 32]))


def test_roi_levels_follow_mmdet_finest_scale_rule():
    pool = LevelRoIAlign(("0", "1", "2", "3"), 7, (4, 8, 16, 32))
    # sqrt(area): 40 -> 0, 111.9 -> 0 (log2(1.998)<1), 112 -> 1, 224 -> 2, 448 -> 3, 2000 -> 3 (clamped)
    sides = [40, 111.9, 112, 224, 448, 2000]
    rois = torch.tensor([[0, 0, 0, s, s] for s in sides], dtype=torch.float32)
    assert pool.map_levels(rois).tolist() == [0, 0, 1, 2, 3, 3]


def test_low_quality_matches_need_min_pos_iou():
    # one gt, three anchors with IoU 0.25, 0.2, 0.1: mmdet (min_pos_iou 0.3) leaves them all negative/ignored;
    # torchvision's allow_low_quality_matches would make the 0.25 one positive.
    iou = torch.tensor([[0.25, 0.2, 0.1]])
    assert MaxIoUMatcher(0.7, 0.3, 0.3)(iou).tolist() == [-1, -1, -1]
    assert MaxIoUMatcher(0.7, 0.3, 0.2)(iou).tolist() == [0, -1, -1]
    iou = torch.tensor([[0.5, 0.4, 0.1]])
    assert MaxIoUMatcher(0.7, 0.3, 0.3)(iou).tolist() == [0, -2, -1]


def test_mask_targets_are_binarised_aligned_crops():
    m = torch.zeros(1, 8, 8, dtype=torch.uint8)
    m[0, 2:6, 2:6] = 1
    # box exactly the square -> all ones; box covering the left half of it + 2 px outside -> left half zeros
    t = mask_targets(m, torch.tensor([[2., 2, 6, 6], [0, 2, 4, 6]]), torch.tensor([0, 0]), 4)
    assert t[0].eq(1).all()
    assert t[1][:, :2].eq(0).all() and t[1][:, 2:].eq(1).all()


def test_paste_masks_follows_mmdet_pixel_centres():
    from vit_adapter_ds.models.detectors.mask_rcnn import paste_masks

    ones = torch.ones(1, 28, 28)
    m = paste_masks(ones, torch.tensor([[2., 3, 6, 8]]), 10, 12)
    expect = torch.zeros(10, 12, dtype=torch.bool)
    expect[3:8, 2:6] = True  # pixels whose centre (x + 0.5, y + 0.5) lies inside the box
    assert torch.equal(m[0], expect)
    # left half of the mask on: the pasted region is the left half of the box
    half = torch.zeros(1, 28, 28)
    half[:, :, :14] = 1
    m = paste_masks(half, torch.tensor([[0., 0, 8, 4]]), 4, 8)
    assert m[0, :, :4].all() and not m[0, :, 4:].any()
    # a box outside the image pastes nothing; sub-pixel box at the border does not crash
    assert not paste_masks(ones, torch.tensor([[20., 20, 30, 30]]), 10, 12).any()
    assert paste_masks(ones, torch.tensor([[11.5, 9.5, 11.9, 9.9]]), 10, 12).shape == (1, 10, 12)


def test_beit_adapter_htc_backbone_dict_builds_on_meta():
    cfg = tiny_cfg()
    cfg["backbone"] = dict(type="BEiTAdapter", img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                           mlp_ratio=4, qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6,
                           drop_path_rate=0.4, conv_inplane=64, n_points=4, deform_num_heads=16, cffn_ratio=0.25,
                           deform_ratio=0.5, interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
                           window_attn=[True] * 24, window_size=[14, 14, 14, 14, 14, 56] * 4,
                           pretrained="pretrained/beitv2_large_patch16_224_pt1k_ft21k.pth")
    cfg["neck"]["in_channels"] = [1024] * 4
    with torch.device("meta"):
        model = MaskRCNN.from_config(cfg)
    assert type(model.backbone).__name__ == "BEiTAdapter" and model.backbone.task == "detection"
    assert model.pretrained.endswith("beitv2_large_patch16_224_pt1k_ft21k.pth")


@pytest.mark.parametrize("mode", ["bf16_model", "autocast"])
def test_low_precision_keeps_box_math_in_float32(mode):
    torch.manual_seed(0)
    # few RoIs and narrow heads: bf16 convolutions run about 30x slower than fp32 on CPUs without bf16 units, and
    # what is checked here (the dtypes of the box math) does not depend on the sizes
    cfg = dict(tiny_cfg(depth=4), train_cfg=dict(rpn_proposal=dict(max_per_img=64), rcnn=dict(sampler=dict(num=32))),
               test_cfg=dict(rpn=dict(max_per_img=64), rcnn=dict(max_per_img=4)))
    cfg["neck"] = dict(cfg["neck"], out_channels=64)
    cfg["rpn_head"] = dict(in_channels=64, feat_channels=64)
    cfg["roi_head"] = dict(cfg["roi_head"], bbox_head=dict(cfg["roi_head"]["bbox_head"], in_channels=64,
                                                           fc_out_channels=128),
                           mask_head=dict(cfg["roi_head"]["mask_head"], in_channels=64, conv_out_channels=64),
                           bbox_roi_extractor=dict(out_channels=64), mask_roi_extractor=dict(out_channels=64))
    model = MaskRCNN.from_config(cfg)
    x = torch.randn(2, 3, 128, 160)
    if mode == "bf16_model":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        losses = model(x, _targets())
        assert all(torch.isfinite(v.float()) for v in losses.values())
        losses["loss"].backward()
        model.eval()
        out = model.predict(x, [(120, 150), (128, 160)])
    assert out[0]["boxes"].dtype == torch.float32 and out[0]["scores"].dtype == torch.float32
    # proposals are decoded in float32
    feats = model.extract_feat(x)
    from torchvision.models.detection.image_list import ImageList
    with torch.no_grad():
        props, _ = model.rpn(ImageList(x, [(128, 160)] * 2), feats)
    assert props[0].dtype == torch.float32
