"""vit-adapter-ds: ViT-Adapter / BEiT-Adapter dense prediction trained with DeepSpeed.

The kernels live in the top-level ``ops/`` folder (no ``__init__.py``: there is deliberately no top-level ``ops``
package). ``vit_adapter_ds/ops/__init__.py`` loads them from the ``ops/`` folder of its own checkout; a built
wheel gets copies of the ``ops/`` sources next to that file (``BuildPyWithOps``).
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# The range of torch/torchvision the code works with (a cluster's own build, a GPU image's torch 2.11, ...).
# The exact pins that avoid multi-GB downloads here (torch==2.14.1, torchvision==0.29.1) live in the Quickstart and
# CI install steps, not in the package.
TORCH_REQUIRES = ["torch>=2.5,<3", "torchvision>=0.20"]

packages = find_packages(include=["vit_adapter_ds", "vit_adapter_ds.*"])
OPS_SOURCES = ["*.py", "README.md", "csrc/*"]  # ops/ files a wheel needs (vit_adapter_ds.ops loads them)


class BuildPyWithOps(build_py):
    """Also copy the ``ops/`` sources into ``vit_adapter_ds/ops/`` of the build (not for editable installs,
    which load them from the checkout)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent / "ops"
        target = Path(self.build_lib) / "vit_adapter_ds" / "ops"
        for pattern in OPS_SOURCES:
            for src in sorted(root.glob(pattern)):
                if src.is_file():
                    dest = target / src.relative_to(root)
                    self.mkpath(str(dest.parent))
                    self.copy_file(str(src), str(dest))


setup(
    name="vit-adapter-ds",
    version="0.1.0",
    description="ViT-Adapter / BEiT-Adapter for dense prediction, trained with DeepSpeed",
    python_requires=">=3.10",
    packages=packages,
    cmdclass={"build_py": BuildPyWithOps},
    install_requires=TORCH_REQUIRES + [
        "timm>=1.0",
        "numpy",
        "scipy>=1.10",
        "tqdm",
        "pillow",      # the reference reader of image and label files (data/decode.py)
    ],
    extras_require={
        "train": ["deepspeed>=0.16", "webdataset>=0.2", "mmengine>=0.10", "tensorboard", "pycocotools"],
        "mm": ["mmengine>=0.10", "mmcv-lite==2.1.0", "mmsegmentation==1.2.2", "mmdet==3.3.0", "ftfy", "regex"],
        "dev": ["pytest>=8", "pytest-timeout", "pytest-xdist>=3.5", "ninja", "moto[s3]>=5.1", "flask", "flask-cors"],  # moto: S3 server of the tests
        "remote": ["fsspec", "s3fs", "gcsfs", "aiohttp"],  # shards on object stores (http(s) works without them)
        "htc": ["instaboostfast", "scikit-image"],  # HTC++ training pipeline (InstaBoost, as the official config)
        # launch/export.py --format onnx and its check with ONNX Runtime (torch.onnx's exporter needs onnxscript)
        "onnx": ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"],
        # the browser test of the demo page (launch/demo.py --web; the page itself needs nothing beyond the package):
        # Selenium drives Debian's chromium / chromium-driver (apt), no browser download
        "web-test": ["selenium>=4.20"],
    },
)
