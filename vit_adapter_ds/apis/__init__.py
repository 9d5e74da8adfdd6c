"""What users import to run trained models on their own images (see :mod:`.inference`)::

    from vit_adapter_ds.apis import init_model, inference_model
    model = init_model("synthetic", "work_dirs/quickstart")
    result = inference_model(model, "image.jpg")
"""
from ..data.user_images import ImageError, list_images, load_rgb
from .inference import InferenceError, Predictor, draw_result, inference_model, init_model
from ..tasks.results import DetectionResult, PanopticResult, SegmentationResult

__all__ = ["init_model", "inference_model", "draw_result", "Predictor", "InferenceError", "ImageError", "load_rgb",
           "list_images", "SegmentationResult", "DetectionResult", "PanopticResult"]
