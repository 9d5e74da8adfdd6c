"""vit-adapter-ds: ViT-Adapter / BEiT-Adapter dense prediction trained with DeepSpeed.

The kernels live in the top-level ``ops/`` folder and are installed as the subpackage
``vit_adapter_ds.ops`` (there is deliberately no top-level ``ops`` module).
"""
from setuptools import find_packages, setup

# The range of torch/torchvision the code works with (a cluster's own build, a GPU image's torch 2.11, ...).
# The exact pins that avoid multi-GB downloads here (torch==2.14.1, torchvision==0.29.1) live in the Quickstart and
# CI install steps, not in the package.
TORCH_REQUIRES = ["torch>=2.5,<3", "torchvision>=0.20"]

packages = find_packages(include=["vit_adapter_ds", "vit_adapter_ds.*"])
packages += ["vit_adapter_ds.ops"]

setup(
    name="vit-adapter-ds",
    version="0.1.0",
    description="ViT-Adapter / BEiT-Adapter for dense prediction, trained with DeepSpeed",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"vit_adapter_ds.ops": "ops"},
    package_data={"vit_adapter_ds.ops": ["csrc/*", "csrc/**/*"]},
    install_requires=TORCH_REQUIRES + [
        "timm>=1.0",
        "numpy",
        "scipy>=1.10",
        "tqdm",
    ],
    extras_require={
        "train": ["deepspeed>=0.16", "webdataset>=0.2", "mmengine>=0.10", "tensorboard", "pycocotools"],
        "mm": ["mmengine>=0.10", "mmcv-lite==2.1.0", "mmsegmentation==1.2.2", "mmdet==3.3.0", "ftfy", "regex"],
        "dev": ["pytest>=8", "pytest-timeout", "ninja"],
    },
)
