"""The ViT-Adapter parts shared by ``ViTAdapter`` and ``BEiTAdapter``: spatial prior module, injector,
extractor, interaction blocks, and the adapter forward pass (docs/official-architecture.md §1-§2).

``task='segmentation'`` fuses the ViT output of each interaction into c1..c4 (the official segmentation code);
``task='detection'`` fuses the final ViT output into all four levels (the official detection code).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..layer_decay import VIT_NO_WEIGHT_DECAY, vit_layer_id
from ..norm import norm_class
from .layers import init_adapter_weights, make_drop_path, maybe_checkpoint
from .msdeform_attn import MSDeformAttn

TASKS = ("segmentation", "detection")


def get_reference_points(spatial_shapes, device) -> torch.Tensor:
    """Pixel-centre reference points ``((j+0.5)/W, (i+0.5)/H)`` of each level, concatenated: (1, sum HW, 1, 2)."""
    points = []
    for h, w in spatial_shapes:
        ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                                      torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                                      indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1)[None] / w, ref_y.reshape(-1)[None] / h), -1))
    return torch.cat(points, 1)[:, :, None]


def _shapes_and_starts(shapes, device):
    spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    return spatial_shapes, level_start_index


def deform_inputs(x: torch.Tensor):
    """Reference points / shapes / level starts for the injector (ViT tokens query the strides 8/16/32 of the
    SPM) and the extractor (SPM tokens query the stride-16 ViT map)."""
    _, _, h, w = x.shape
    levels = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
    shapes1, starts1 = _shapes_and_starts(levels, x.device)
    inputs1 = [get_reference_points([(h // 16, w // 16)], x.device), shapes1, starts1]
    shapes2, starts2 = _shapes_and_starts([(h // 16, w // 16)], x.device)
    inputs2 = [get_reference_points(levels, x.device), shapes2, starts2]
    return inputs1, inputs2


class DWConv(nn.Module):
    """3x3 depth-wise conv shared by the three SPM levels (tokens split 16:4:1, each level padded separately)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        b, n, c = x.shape
        n = n // 21
        # .contiguous() as in the official code: conv2d takes other kernels (other float32 rounding) for these
        # strided views than for the official contiguous NCHW maps.
        x1 = x[:, 0:16 * n, :].transpose(1, 2).reshape(b, c, H * 2, W * 2).contiguous()
        x2 = x[:, 16 * n:20 * n, :].transpose(1, 2).reshape(b, c, H, W).contiguous()
        x3 = x[:, 20 * n:, :].transpose(1, 2).reshape(b, c, H // 2, W // 2).contiguous()
        parts = [self.dwconv(p).flatten(2).transpose(1, 2) for p in (x1, x2, x3)]
        return torch.cat(parts, dim=1)


class ConvFFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.act(self.dwconv(self.fc1(x), H, W))
        x = self.fc2(self.drop(x))
        return self.drop(x)


class Extractor(nn.Module):
    """``c = c + MSDeformAttn(norm(c), norm(x))`` then ``c = c + drop_path(ConvFFN(norm(c)))``."""

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, n_levels: int = 1, deform_ratio: float = 1.0,
                 with_cffn: bool = True, cffn_ratio: float = 0.25, drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), with_cp: bool = False):
        super().__init__()
        self.query_norm = norm_layer(dim)
        self.feat_norm = norm_layer(dim)
        self.attn = MSDeformAttn(d_model=dim, n_levels=n_levels, n_heads=num_heads, n_points=n_points,
                                 ratio=deform_ratio)
        self.with_cffn = with_cffn
        self.with_cp = with_cp
        if with_cffn:
            self.ffn = ConvFFN(in_features=dim, hidden_features=int(dim * cffn_ratio), drop=drop)
            self.ffn_norm = norm_layer(dim)
            self.drop_path = make_drop_path(drop_path)

    def forward(self, query, reference_points, feat, spatial_shapes, level_start_index, H, W):
        def _inner(query, feat):
            query = query + self.attn(self.query_norm(query), reference_points, self.feat_norm(feat), spatial_shapes,
                                      level_start_index, None)
            if self.with_cffn:
                query = query + self.drop_path(self.ffn(self.ffn_norm(query), H, W))
            return query

        return maybe_checkpoint(self.with_cp, _inner, query, feat)


class Injector(nn.Module):
    """``x = x + gamma * MSDeformAttn(norm(x), norm(c))`` (gamma starts at ``init_values``)."""

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, n_levels: int = 1, deform_ratio: float = 1.0,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), init_values: float = 0.0, with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.query_norm = norm_layer(dim)
        self.feat_norm = norm_layer(dim)
        self.attn = MSDeformAttn(d_model=dim, n_levels=n_levels, n_heads=num_heads, n_points=n_points,
                                 ratio=deform_ratio)
        self.gamma = nn.Parameter(init_values * torch.ones(dim), requires_grad=True)

    def forward(self, query, reference_points, feat, spatial_shapes, level_start_index):
        def _inner(query, feat):
            attn = self.attn(self.query_norm(query), reference_points, self.feat_norm(feat), spatial_shapes,
                             level_start_index, None)
            return query + self.gamma * attn

        return maybe_checkpoint(self.with_cp, _inner, query, feat)


class InteractionBlock(nn.Module):
    """Injector -> ViT blocks -> extractor (-> 2 extra extractors in the last interaction).

    When a ``cls`` token is given (segmentation BEiT), it is prepended to the tokens for the ViT blocks only.
    """

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                 drop: float = 0.0, drop_path: float = 0.0, with_cffn: bool = True, cffn_ratio: float = 0.25,
                 init_values: float = 0.0, deform_ratio: float = 1.0, extra_extractor: bool = False,
                 with_cp: bool = False):
        super().__init__()
        self.injector = Injector(dim=dim, n_levels=3, num_heads=num_heads, init_values=init_values, n_points=n_points,
                                 norm_layer=norm_layer, deform_ratio=deform_ratio, with_cp=with_cp)
        self.extractor = Extractor(dim=dim, n_levels=1, num_heads=num_heads, n_points=n_points, norm_layer=norm_layer,
                                   deform_ratio=deform_ratio, with_cffn=with_cffn, cffn_ratio=cffn_ratio, drop=drop,
                                   drop_path=drop_path, with_cp=with_cp)
        if extra_extractor:
            self.extra_extractors = nn.Sequential(*[
                Extractor(dim=dim, num_heads=num_heads, n_points=n_points, norm_layer=norm_layer, with_cffn=with_cffn,
                          cffn_ratio=cffn_ratio, deform_ratio=deform_ratio, drop=drop, drop_path=drop_path,
                          with_cp=with_cp)
                for _ in range(2)])
        else:
            self.extra_extractors = None

    def forward(self, x, c, blocks, deform_inputs1, deform_inputs2, H, W, cls=None):
        x = self.injector(x, deform_inputs1[0], c, deform_inputs1[1], deform_inputs1[2])
        if cls is not None:
            x = torch.cat((cls, x), dim=1)
        for blk in blocks:
            x = blk(x, H, W)
        if cls is not None:
            cls, x = x[:, :1], x[:, 1:]
        extractors = [self.extractor] + (list(self.extra_extractors) if self.extra_extractors is not None else [])
        for extractor in extractors:
            c = extractor(c, deform_inputs2[0], x, deform_inputs2[1], deform_inputs2[2], H, W)
        return x, c, cls


def _conv_bn_relu(cin: int, cout: int, stride: int, norm) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Conv stem producing c1 (stride 4, a map) and c2..c4 (strides 8/16/32, flattened tokens), all ``embed_dim``."""

    def __init__(self, inplanes: int = 64, embed_dim: int = 384, norm=nn.BatchNorm2d):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, inplanes, 2, norm), *_conv_bn_relu(inplanes, inplanes, 1, norm),
                                  *_conv_bn_relu(inplanes, inplanes, 1, norm),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2, norm))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2, norm))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2, norm))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, kernel_size=1, stride=1, padding=0, bias=True)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, kernel_size=1, stride=1, padding=0, bias=True)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1, stride=1, padding=0, bias=True)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1, stride=1, padding=0, bias=True)

    def forward(self, x: torch.Tensor):
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        c1, c2, c3, c4 = self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)
        bs, dim = c1.shape[:2]
        return c1, *(c.view(bs, dim, -1).transpose(1, 2) for c in (c2, c3, c4))


class AdapterMixin:
    """Adds the adapter (SPM, interactions, up-sampling, output norms) to a plain ViT/BEiT ``nn.Module`` and
    implements the adapter forward. The host class provides ``blocks``, ``embed_dim`` and ``_embed_tokens(x)``."""

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.backbone"):
        """Build from the official ``backbone=dict(type=..., ...)``: every key must be a constructor argument, and
        arguments whose default is a bool / int / float must have that type. ``pretrained`` is not read here (the
        builder loads weights after construction): it is dropped from the arguments. ``window_attn`` /
        ``window_size`` may also be one value per block (a list), as in the detection configs."""
        return build_from_signature(cls, cfg, where, skip=("type", "pretrained"),
                                    per_block=("window_attn", "window_size"))

    no_weight_decay_names = VIT_NO_WEIGHT_DECAY  # layer decay with official_wd_quirk=False

    def layer_id(self, name: str, num_layers: int) -> int:
        """Layer decay: the layer of this backbone's parameter ``name`` (the official ViT rule,
        :func:`~vit_adapter_ds.models.layer_decay.vit_layer_id`: embeddings 0, block i -> i + 1, adapter L - 1)."""
        return vit_layer_id(name, num_layers)

    def _build_adapter(self, *, embed_dim: int, conv_inplane: int, n_points: int, deform_num_heads: int,
                       init_values: float, interaction_indexes, with_cffn: bool, cffn_ratio: float,
                       deform_ratio: float, add_vit_feature: bool, extra_extractor: bool, drop_path_rate: float,
                       norm_layer, with_cp: bool, task: str, norm: str,
                       vit_feature_per_interaction: bool | None = None) -> None:
        """``vit_feature_per_interaction``: each output level k adds the ViT tokens after interaction k (the
        segmentation copies and the detection BEiT-Adapter's ``version='old'``) instead of the last interaction's
        tokens at every level (the detection copies); default: ``task == 'segmentation'``."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not interaction_indexes:
            raise ValueError("interaction_indexes must list [first, last] block indexes of each interaction, "
                             "e.g. [[0, 2], [3, 5], [6, 8], [9, 11]]")
        depth = len(self.blocks)
        for idx in interaction_indexes:
            if len(idx) != 2 or not (0 <= idx[0] <= idx[1] < depth):
                raise ValueError(f"bad interaction index {idx!r} for depth {depth}")
        if vit_feature_per_interaction is None:
            vit_feature_per_interaction = task == "segmentation"
        if add_vit_feature and vit_feature_per_interaction and len(interaction_indexes) != 4:
            what = "task='segmentation'" if task == "segmentation" else "version='old'"
            raise ValueError(f"add_vit_feature with {what} needs exactly 4 interactions "
                             f"(one ViT feature per output level), got {len(interaction_indexes)}")
        self.task = task
        self.vit_feature_per_interaction = vit_feature_per_interaction
        self.interaction_indexes = [list(i) for i in interaction_indexes]
        self.add_vit_feature = add_vit_feature
        norm_cls = norm_class(norm)
        self.level_embed = nn.Parameter(torch.zeros(3, embed_dim))
        self.spm = SpatialPriorModule(inplanes=conv_inplane, embed_dim=embed_dim, norm=norm_cls)
        n = len(interaction_indexes)
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim=embed_dim, num_heads=deform_num_heads, n_points=n_points, init_values=init_values,
                             drop_path=drop_path_rate, norm_layer=norm_layer, with_cffn=with_cffn,
                             cffn_ratio=cffn_ratio, deform_ratio=deform_ratio,
                             extra_extractor=(i == n - 1) and extra_extractor, with_cp=with_cp)
            for i in range(n)])
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2)
        self.norm1 = norm_cls(embed_dim)
        self.norm2 = norm_cls(embed_dim)
        self.norm3 = norm_cls(embed_dim)
        self.norm4 = norm_cls(embed_dim)
        # The official order (docs/official-architecture.md §2.12): it determines the random numbers each tensor gets.
        self.up.apply(init_adapter_weights)
        self.spm.apply(init_adapter_weights)
        self.interactions.apply(init_adapter_weights)
        self.apply(lambda m: m._reset_parameters() if isinstance(m, MSDeformAttn) else None)
        nn.init.normal_(self.level_embed)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.patch_embed.proj.in_channels:
            raise ValueError(f"expected an image batch (B, {self.patch_embed.proj.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"input height and width must be multiples of 32 (the adapter's stride-32 level and "
                             f"16:4:1 token split need it), got {h}x{w}; pad the image first")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) with H, W multiples of 32 -> 4 maps (B, D, H/s, W/s) at strides s = 4, 8, 16, 32."""
        self._check_input(x)
        deform_inputs1, deform_inputs2 = deform_inputs(x)
        c1, c2, c3, c4 = self.spm(x)
        c2, c3, c4 = c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]
        n2, n3 = c2.shape[1], c3.shape[1]
        c = torch.cat([c2, c3, c4], dim=1)

        x, H, W, cls = self._embed_tokens(x)
        bs, _, dim = x.shape
        outs = []
        for layer, (first, last) in zip(self.interactions, self.interaction_indexes):
            x, c, cls = layer(x, c, self.blocks[first:last + 1], deform_inputs1, deform_inputs2, H, W, cls=cls)
            if self.vit_feature_per_interaction:
                outs.append(x.transpose(1, 2).reshape(bs, dim, H, W).contiguous())

        # .contiguous() as in the official code: with batch 1 these views look channels-last, and torch's CPU
        # BatchNorm backward returns wrong gradients for them (norm2..4 and everything upstream; torch 2.14).
        c2 = c[:, :n2].transpose(1, 2).reshape(bs, dim, H * 2, W * 2).contiguous()
        c3 = c[:, n2:n2 + n3].transpose(1, 2).reshape(bs, dim, H, W).contiguous()
        c4 = c[:, n2 + n3:].transpose(1, 2).reshape(bs, dim, H // 2, W // 2).contiguous()
        c1 = self.up(c2) + c1

        if self.add_vit_feature:
            if self.vit_feature_per_interaction:
                x1, x2, x3, x4 = outs
            else:
                x1 = x2 = x3 = x4 = x.transpose(1, 2).reshape(bs, dim, H, W).contiguous()
            x1 = F.interpolate(x1, scale_factor=4, mode="bilinear", align_corners=False)
            x2 = F.interpolate(x2, scale_factor=2, mode="bilinear", align_corners=False)
            x4 = F.interpolate(x4, scale_factor=0.5, mode="bilinear", align_corners=False)
            c1, c2, c3, c4 = c1 + x1, c2 + x2, c3 + x3, c4 + x4

        return [self.norm1(c1), self.norm2(c2), self.norm3(c3), self.norm4(c4)]


def build_from_signature(cls, cfg: dict, where: str, skip=("type",), per_block=()):
    """``cls(**cfg)`` after checking ``cfg``'s keys against ``cls.__init__``'s keywords (and the types of those with
    a bool/int/float default, except a list given for a ``per_block`` keyword); constructor ``ValueError``/
    ``TypeError`` become a ``ConfigError`` naming ``where``."""
    import inspect

    from ...config.errors import ConfigError
    from ...config.keys import check_keys, check_type

    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    check_keys(cfg, set(params) | set(skip), where)
    kwargs = {}
    for key, value in cfg.items():
        if key in skip or key == "_delete_":
            continue
        default = params[key].default
        if key in per_block and isinstance(value, (list, tuple)):
            pass  # one value per block: the constructor checks its length and items
        elif isinstance(default, bool):
            value = check_type(value, bool, f"{where}.{key}")
        elif isinstance(default, int):
            value = check_type(value, int, f"{where}.{key}")
        elif isinstance(default, float):
            value = check_type(value, float, f"{where}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"recipe: {where}: {e}") from e
