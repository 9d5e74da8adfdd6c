"""Translation of the official ``decode_head=dict(type='Mask2FormerHead', ...)`` (mmseg_custom / mmdet 2.x / mmcv
1.x key names) into :class:`~.head.Mask2FormerHead` arguments. Every key at every level is checked: unknown keys,
wrong types and values this port does not implement raise :class:`~vit_adapter_ds.config.errors.ConfigError`
naming the dotted path. Keys without effect (``im2col_step``, ``init_cfg=None``, ``batch_first=False``, ...) are
accepted only with their official/neutral values.
"""
from __future__ import annotations

from collections.abc import Mapping

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.config.keys import check_keys, take

from .criterion import Mask2FormerCriterion
from .matcher import HungarianMatcher

HEAD_KEYS = {"type", "in_channels", "feat_channels", "out_channels", "in_index", "num_things_classes",
             "num_stuff_classes", "num_queries", "num_transformer_feat_level", "pixel_decoder",
             "enforce_decoder_input_project", "transformer_decoder", "positional_encoding", "loss_cls", "loss_mask",
             "loss_dice", "train_cfg", "test_cfg", "init_cfg", "align_corners", "ignore_index", "dropout_ratio",
             "norm_cfg", "act_cfg", "channels", "num_classes"}
TRAIN_CFG_KEYS = {"num_points", "oversample_ratio", "importance_sample_ratio", "assigner", "sampler"}
POSITIONAL_KEYS = {"type", "num_feats", "temperature", "normalize", "scale", "eps", "offset"}


def fixed(cfg: Mapping, key: str, values, where: str) -> None:
    """Accept ``cfg[key]`` only if absent or one of ``values`` (keys without effect, or the only value
    implemented)."""
    if key in cfg and not any(_same(cfg[key], v) for v in values):
        raise ConfigError(f"recipe: {where}.{key}={cfg[key]!r} is not supported here; allowed: "
                          f"{', '.join(repr(v) for v in values)}")


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def node(cfg: Mapping, key: str, where: str, allowed, required: bool = True) -> dict:
    if cfg.get(key) is None:
        if required:
            raise ConfigError(f"recipe: {where}.{key} is required")
        return {}
    check_keys(cfg[key], allowed, f"{where}.{key}")
    return dict(cfg[key])


def _type(cfg: Mapping, where: str, *names: str, required: bool = False) -> None:
    if "type" not in cfg:
        if required:
            raise ConfigError(f"recipe: {where}.type is required ({' or '.join(names)})")
        return
    if cfg["type"] not in names:
        raise ConfigError(f"recipe: {where}.type={cfg['type']!r} is not supported; allowed: {', '.join(names)}")


def _relu(cfg: Mapping, key: str, where: str) -> bool:
    """act_cfg: ReLU only; returns its ``inplace`` flag."""
    act = node(cfg, key, where, {"type", "inplace"}, required=False)
    if act:
        _type(act, f"{where}.{key}", "ReLU", required=True)
    return bool(take(act, "inplace", bool, f"{where}.{key}", default=True))


def positional_encoding(cfg: Mapping, key: str, where: str, feat_channels: int) -> dict:
    pe = node(cfg, key, where, POSITIONAL_KEYS, required=False)
    w = f"{where}.{key}"
    if not pe:
        return {"num_feats": feat_channels // 2, "normalize": True}
    _type(pe, w, "SinePositionalEncoding", required=True)
    out = {"num_feats": take(pe, "num_feats", int, w)}
    for k, t in (("temperature", float), ("normalize", bool), ("scale", float), ("eps", float), ("offset", float)):
        if k in pe:
            out[k] = take(pe, k, t, w)
    if 2 * out["num_feats"] != feat_channels:
        raise ConfigError(f"recipe: {w}.num_feats={out['num_feats']} must be half of feat_channels={feat_channels}")
    return out


def _ffn(layer: Mapping, where: str, embed_dims: int) -> dict:
    """ffn_cfgs (+ the deprecated layer-level feedforward_channels / ffn_dropout / ffn_num_fcs)."""
    ffn = node(layer, "ffn_cfgs", where, {"type", "embed_dims", "feedforward_channels", "num_fcs", "ffn_drop",
                                          "act_cfg", "with_cp", "dropout_layer", "add_identity", "add_residual",
                                          "init_cfg"}, required=False)
    w = f"{where}.ffn_cfgs"
    _type(ffn, w, "FFN")
    if take(ffn, "embed_dims", int, w, default=embed_dims) != embed_dims:
        raise ConfigError(f"recipe: {w}.embed_dims={ffn['embed_dims']} must equal the attention width {embed_dims}")
    layer_fc = take(layer, "feedforward_channels", int, where, default=None)
    fc = take(ffn, "feedforward_channels", int, w, default=layer_fc)
    if fc is None:
        raise ConfigError(f"recipe: {w}.feedforward_channels is required")
    if layer_fc is not None and layer_fc != fc:
        raise ConfigError(f"recipe: {where}.feedforward_channels={layer_fc} disagrees with {w}.feedforward_channels="
                          f"{fc}")
    fixed(ffn, "num_fcs", (2,), w)
    fixed(layer, "ffn_num_fcs", (2,), where)
    fixed(ffn, "dropout_layer", (None,), w)
    fixed(ffn, "add_identity", (True,), w)
    fixed(ffn, "add_residual", (True,), w)
    fixed(ffn, "init_cfg", (None,), w)
    drop = take(ffn, "ffn_drop", float, w, default=take(layer, "ffn_dropout", float, where, default=0.0))
    _relu(ffn, "act_cfg", w)
    return {"feedforward_channels": fc, "ffn_drop": drop, "with_cp": take(ffn, "with_cp", bool, w, default=False)}


def _layer_common(layer: Mapping, where: str) -> None:
    fixed(layer, "init_cfg", (None,), where)
    fixed(layer, "batch_first", (False,), where)
    norm = node(layer, "norm_cfg", where, {"type", "eps", "requires_grad"}, required=False)
    if norm:
        _type(norm, f"{where}.norm_cfg", "LN", required=True)
        fixed(norm, "eps", (1e-5,), f"{where}.norm_cfg")
        fixed(norm, "requires_grad", (True,), f"{where}.norm_cfg")
    if "act_cfg" in layer:
        _relu(layer, "act_cfg", where)


def pixel_decoder(cfg: Mapping, where: str, in_channels, feat_channels: int, out_channels: int,
                  num_levels: int) -> dict:
    w = f"{where}.pixel_decoder"
    pd = node(cfg, "pixel_decoder", where, {"type", "in_channels", "strides", "feat_channels", "out_channels",
                                            "num_outs", "norm_cfg", "act_cfg", "encoder", "positional_encoding",
                                            "init_cfg"})
    _type(pd, w, "MSDeformAttnPixelDecoder", required=True)
    for k, v in (("in_channels", list(in_channels)), ("feat_channels", feat_channels),
                 ("out_channels", out_channels)):
        fixed(pd, k, (v,), w)  # the official head overwrites these with its own values
    fixed(pd, "strides", ([4, 8, 16, 32],), w)
    fixed(pd, "init_cfg", (None,), w)
    norm = node(pd, "norm_cfg", w, {"type", "num_groups", "requires_grad"}, required=False)
    num_groups = 32
    if norm:
        _type(norm, f"{w}.norm_cfg", "GN", required=True)
        num_groups = take(norm, "num_groups", int, f"{w}.norm_cfg")
        fixed(norm, "requires_grad", (True,), f"{w}.norm_cfg")
    _relu(pd, "act_cfg", w)
    enc = node(pd, "encoder", w, {"type", "num_layers", "transformerlayers", "init_cfg", "post_norm_cfg"})
    we = f"{w}.encoder"
    _type(enc, we, "DetrTransformerEncoder", required=True)
    fixed(enc, "init_cfg", (None,), we)
    # post-norm layers: mmcv builds no final norm whatever post_norm_cfg says
    post = enc.get("post_norm_cfg")
    if post is not None:
        check_keys(post, {"type"}, f"{we}.post_norm_cfg")
        _type(post, f"{we}.post_norm_cfg", "LN", required=True)
    layer = node(enc, "transformerlayers", we, {"type", "attn_cfgs", "ffn_cfgs", "operation_order",
                                                "feedforward_channels", "ffn_dropout", "ffn_num_fcs", "norm_cfg",
                                                "init_cfg", "batch_first", "act_cfg"})
    wl = f"{we}.transformerlayers"
    _type(layer, wl, "BaseTransformerLayer", required=True)
    order = tuple(take(layer, "operation_order", tuple, wl))
    if order != ("self_attn", "norm", "ffn", "norm"):
        raise ConfigError(f"recipe: {wl}.operation_order={order} is not supported; "
                          "only ('self_attn', 'norm', 'ffn', 'norm')")
    _layer_common(layer, wl)
    attn = node(layer, "attn_cfgs", wl, {"type", "embed_dims", "num_heads", "num_levels", "num_points",
                                         "im2col_step", "dropout", "batch_first", "norm_cfg", "init_cfg"})
    wa = f"{wl}.attn_cfgs"
    _type(attn, wa, "MultiScaleDeformableAttention", required=True)
    if take(attn, "embed_dims", int, wa) != feat_channels:
        raise ConfigError(f"recipe: {wa}.embed_dims={attn['embed_dims']} must equal feat_channels={feat_channels}")
    if take(attn, "num_levels", int, wa, default=4) != num_levels:
        raise ConfigError(f"recipe: {wa}.num_levels={attn.get('num_levels', 4)} must equal "
                          f"num_transformer_feat_level={num_levels}")
    take(attn, "im2col_step", int, wa, default=64)  # a kernel tiling detail without effect on the result
    fixed(attn, "batch_first", (False,), wa)
    fixed(attn, "norm_cfg", (None,), wa)
    fixed(attn, "init_cfg", (None,), wa)
    ffn = _ffn(layer, wl, feat_channels)
    num_outs = take(pd, "num_outs", int, w, default=3)
    return {"num_outs": num_outs, "num_groups": num_groups,
            "num_layers": take(enc, "num_layers", int, we),
            "num_heads": take(attn, "num_heads", int, wa, default=8),
            "num_levels": num_levels,
            "num_points": take(attn, "num_points", int, wa, default=4),
            "attn_drop": take(attn, "dropout", float, wa, default=0.1),
            "feedforward_channels": ffn["feedforward_channels"], "ffn_drop": ffn["ffn_drop"],
            "with_cp": ffn["with_cp"],
            "positional_encoding": positional_encoding(pd, "positional_encoding", w, feat_channels)}


def transformer_decoder(cfg: Mapping, where: str, feat_channels: int) -> dict:
    w = f"{where}.transformer_decoder"
    dec = node(cfg, "transformer_decoder", where, {"type", "return_intermediate", "num_layers", "transformerlayers",
                                                   "init_cfg", "post_norm_cfg"})
    _type(dec, w, "DetrTransformerDecoder", required=True)
    take(dec, "return_intermediate", bool, w, default=False)  # the head runs the layers itself
    fixed(dec, "init_cfg", (None,), w)
    post = dec.get("post_norm_cfg", {"type": "LN"})
    if post is None:
        raise ConfigError(f"recipe: {w}.post_norm_cfg=None is not supported (Mask2Former needs the post norm)")
    check_keys(post, {"type"}, f"{w}.post_norm_cfg")
    _type(post, f"{w}.post_norm_cfg", "LN", required=True)
    layer = node(dec, "transformerlayers", w, {"type", "attn_cfgs", "ffn_cfgs", "operation_order",
                                               "feedforward_channels", "ffn_dropout", "ffn_num_fcs", "norm_cfg",
                                               "init_cfg", "batch_first", "act_cfg"})
    wl = f"{w}.transformerlayers"
    _type(layer, wl, "DetrTransformerDecoderLayer", required=True)
    order = tuple(take(layer, "operation_order", tuple, wl))
    if order != ("cross_attn", "norm", "self_attn", "norm", "ffn", "norm"):
        raise ConfigError(f"recipe: {wl}.operation_order={order} is not supported; only "
                          "('cross_attn', 'norm', 'self_attn', 'norm', 'ffn', 'norm')")
    _layer_common(layer, wl)
    attn = node(layer, "attn_cfgs", wl, {"type", "embed_dims", "num_heads", "attn_drop", "proj_drop",
                                         "dropout_layer", "batch_first", "init_cfg"})
    wa = f"{wl}.attn_cfgs"
    _type(attn, wa, "MultiheadAttention", required=True)
    embed = take(attn, "embed_dims", int, wa)
    if embed != feat_channels:
        raise ConfigError(f"recipe: {wa}.embed_dims={embed} must equal feat_channels={feat_channels} "
                          "(decoder input projections are not implemented)")
    fixed(attn, "dropout_layer", (None,), wa)
    fixed(attn, "batch_first", (False,), wa)
    fixed(attn, "init_cfg", (None,), wa)
    ffn = _ffn(layer, wl, embed)
    return {"num_layers": take(dec, "num_layers", int, w), "embed_dims": embed,
            "num_heads": take(attn, "num_heads", int, wa),
            "attn_drop": take(attn, "attn_drop", float, wa, default=0.0),
            "proj_drop": take(attn, "proj_drop", float, wa, default=0.0), **ffn}


def _loss(cfg: Mapping, key: str, where: str, kind: str, sigmoid: bool, num_classes: int):
    w = f"{where}.{key}"
    allowed = {"type", "use_sigmoid", "loss_weight", "reduction", "class_weight", "avg_non_ignore", "loss_name",
               "use_mask"} if kind == "CrossEntropyLoss" else {"type", "use_sigmoid", "activate", "reduction",
                                                               "naive_dice", "loss_weight", "eps"}
    loss = node(cfg, key, where, allowed)
    _type(loss, w, kind, required=True)
    fixed(loss, "use_sigmoid", (sigmoid,), w)
    fixed(loss, "reduction", ("mean",), w)
    out = {"weight": take(loss, "loss_weight", float, w, default=1.0)}
    if kind == "CrossEntropyLoss":
        fixed(loss, "use_mask", (False,), w)
        fixed(loss, "avg_non_ignore", (False,), w)
        take(loss, "loss_name", str, w, default="loss_ce")
        cw = take(loss, "class_weight", (list, type(None)), w, default=None)
        if sigmoid:
            fixed(loss, "class_weight", (None,), w)
        elif cw is not None:
            if len(cw) != num_classes + 1:
                raise ConfigError(f"recipe: {w}.class_weight has {len(cw)} entries; needs num_classes + 1 = "
                                  f"{num_classes + 1} (the last one is the no-object weight)")
            out["class_weight"] = [float(_num(v, f"{w}.class_weight")) for v in cw]
    else:
        fixed(loss, "activate", (True,), w)
        out["naive_dice"] = take(loss, "naive_dice", bool, w, default=False)
        out["eps"] = take(loss, "eps", float, w, default=1e-3)
    return out


def _num(v, where):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"recipe: {where} entries must be numbers, got {v!r}")
    return v


def train_cfg(cfg: Mapping, where: str, losses: dict) -> dict:
    """``model.train_cfg`` (point sampling and the assigner, whose cost weights must equal the loss weights as
    mmdet asserts for MaskFormer)."""
    tc = cfg.get("train_cfg")
    w = f"{where}.train_cfg"
    if tc is None:
        tc = {}
    check_keys(tc, TRAIN_CFG_KEYS, w)
    out = {"num_points": take(tc, "num_points", int, w, default=12544),
           "oversample_ratio": take(tc, "oversample_ratio", float, w, default=3.0),
           "importance_sample_ratio": take(tc, "importance_sample_ratio", float, w, default=0.75)}
    sampler = node(tc, "sampler", w, {"type"}, required=False)
    if sampler:
        _type(sampler, f"{w}.sampler", "MaskPseudoSampler", required=True)
    asg = node(tc, "assigner", w, {"type", "cls_cost", "mask_cost", "dice_cost"}, required=False)
    wa = f"{w}.assigner"
    costs = {"cls": losses["cls"]["weight"], "mask": losses["mask"]["weight"], "dice": losses["dice"]["weight"]}
    dice_eps = losses["dice"]["eps"]
    if asg:
        _type(asg, wa, "MaskHungarianAssigner", required=True)
        c = node(asg, "cls_cost", wa, {"type", "weight"}, required=False)
        if c:
            _type(c, f"{wa}.cls_cost", "ClassificationCost", required=True)
            costs["cls"] = take(c, "weight", float, f"{wa}.cls_cost", default=1.0)
        m = node(asg, "mask_cost", wa, {"type", "weight", "use_sigmoid"}, required=False)
        if m:
            _type(m, f"{wa}.mask_cost", "CrossEntropyLossCost", required=True)
            fixed(m, "use_sigmoid", (True,), f"{wa}.mask_cost")
            costs["mask"] = take(m, "weight", float, f"{wa}.mask_cost", default=1.0)
        d = node(asg, "dice_cost", wa, {"type", "weight", "pred_act", "eps"}, required=False)
        if d:
            _type(d, f"{wa}.dice_cost", "DiceCost", required=True)
            if take(d, "pred_act", bool, f"{wa}.dice_cost", default=False) is not True:
                raise ConfigError(f"recipe: {wa}.dice_cost.pred_act must be True (costs are on mask logits)")
            costs["dice"] = take(d, "weight", float, f"{wa}.dice_cost", default=1.0)
            dice_eps = take(d, "eps", float, f"{wa}.dice_cost", default=1e-3)
    out["matcher"] = HungarianMatcher(costs["cls"], costs["mask"], costs["dice"], dice_eps)
    return out


def head_kwargs_from_config(cfg: Mapping, where: str = "model.decode_head") -> dict:
    check_keys(cfg, HEAD_KEYS, where)
    _type(cfg, where, "Mask2FormerHead")
    in_channels = take(cfg, "in_channels", list, where)
    in_channels = [_int(v, f"{where}.in_channels") for v in in_channels]
    if len(in_channels) != 4:
        raise ConfigError(f"recipe: {where}.in_channels must list the 4 backbone maps, got {in_channels}")
    fixed(cfg, "in_index", ([0, 1, 2, 3],), where)
    fixed(cfg, "init_cfg", (None,), where)
    fixed(cfg, "align_corners", (False,), where)
    fixed(cfg, "norm_cfg", (None,), where)
    fixed(cfg, "act_cfg", (None,), where)
    take(cfg, "dropout_ratio", float, where, default=0.1)  # mmseg's conv_seg dropout: conv_seg is unused
    feat = take(cfg, "feat_channels", int, where)
    fixed(cfg, "channels", (feat,), where)
    out_ch = take(cfg, "out_channels", int, where)
    things = take(cfg, "num_things_classes", int, where, default=80)
    stuff = take(cfg, "num_stuff_classes", int, where, default=53)
    num_classes = things + stuff
    fixed(cfg, "num_classes", (num_classes,), where)
    levels = take(cfg, "num_transformer_feat_level", int, where, default=3)
    losses = {"cls": _loss(cfg, "loss_cls", where, "CrossEntropyLoss", False, num_classes),
              "mask": _loss(cfg, "loss_mask", where, "CrossEntropyLoss", True, num_classes),
              "dice": _loss(cfg, "loss_dice", where, "DiceLoss", True, num_classes)}
    tc = train_cfg(cfg, where, losses)
    if cfg.get("test_cfg") is not None and not isinstance(cfg["test_cfg"], Mapping):
        raise ConfigError(f"recipe: {where}.test_cfg must be a dict")
    criterion = Mask2FormerCriterion(
        num_classes, class_weight=losses["cls"].get("class_weight", [1.0] * (num_classes + 1)),
        cls_weight=losses["cls"]["weight"], mask_weight=losses["mask"]["weight"],
        dice_weight=losses["dice"]["weight"], dice_eps=losses["dice"]["eps"], naive_dice=losses["dice"]["naive_dice"],
        num_points=tc["num_points"], oversample_ratio=tc["oversample_ratio"],
        importance_sample_ratio=tc["importance_sample_ratio"], matcher=tc["matcher"])
    return {"in_channels": in_channels, "feat_channels": feat, "out_channels": out_ch, "num_classes": num_classes,
            "num_queries": take(cfg, "num_queries", int, where, default=100), "num_transformer_feat_level": levels,
            "pixel_decoder": pixel_decoder(cfg, where, in_channels, feat, out_ch, levels),
            "decoder": transformer_decoder(cfg, where, feat),
            "positional_encoding": positional_encoding(cfg, "positional_encoding", where, feat),
            "enforce_decoder_input_project": take(cfg, "enforce_decoder_input_project", bool, where, default=False),
            "criterion": criterion, "ignore_index": take(cfg, "ignore_index", int, where, default=255)}


def _int(v, where):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"recipe: {where} entries must be ints, got {v!r}")
    return v
