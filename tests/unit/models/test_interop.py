"""OpenMMLab registries can build the backbones from official-style config dicts."""
import pytest
import torch

from vit_adapter_ds.models import ViTAdapter

CFG = dict(embed_dim=48, depth=4, num_heads=3, deform_num_heads=3, conv_inplane=16, img_size=64, pretrain_size=64,
           interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]], window_attn=[True, False, True, False], window_size=3)


def test_mmseg_registry_builds_segmentation_backbone():
    mmseg_registry = pytest.importorskip("mmseg.registry")
    import vit_adapter_ds.interop.openmmlab  # noqa: F401
    model = mmseg_registry.MODELS.build(dict(type="ViTAdapter", **CFG))
    assert isinstance(model, ViTAdapter) and model.task == "segmentation"
    assert len(model.eval()(torch.randn(1, 3, 64, 64))) == 4
    beit = mmseg_registry.MODELS.build(dict(type="BEiTAdapter", img_size=64, embed_dim=48, depth=4, num_heads=3,
                                            deform_num_heads=3, conv_inplane=16,
                                            interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]))
    assert beit.cls_token is not None


def test_mmdet_registry_builds_detection_backbone():
    mmdet_registry = pytest.importorskip("mmdet.registry")
    import vit_adapter_ds.interop.openmmlab  # noqa: F401
    model = mmdet_registry.MODELS.build(dict(type="ViTAdapter", **CFG))
    assert isinstance(model, ViTAdapter) and model.task == "detection"
    beit = mmdet_registry.MODELS.build(dict(type="BEiTAdapter", img_size=64, embed_dim=48, depth=4, num_heads=3,
                                            deform_num_heads=3, conv_inplane=16, window_attn=True, window_size=3,
                                            interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]))
    assert beit.cls_token is None and beit.task == "detection"
