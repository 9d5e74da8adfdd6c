"""Multi-scale deformable attention ops: ``from vit_adapter_ds.ops import ms_deform_attn``.

The kernels' sources live in the repository's top-level ``ops/`` folder (``msda.py``: the public op and its
dispatch; ``checks.py``, ``reference.py``, ``triton_msda.py``, ``fixed_point.py``, ``cuda_ext.py`` + ``csrc/``,
``build.py``). This file makes them the submodules of ``vit_adapter_ds.ops`` by pointing the package's
``__path__`` at

* the ``ops/`` folder of the checkout this file belongs to (a git clone, editable install or ``PYTHONPATH``):
  a second clone therefore always runs its own kernels, never those of the installed checkout; or
* this folder itself in a built wheel, where ``setup.py`` copies the ``ops/`` sources in next to this file.

``ops/`` has no ``__init__.py`` on purpose: ``import ops`` from the repository root gives an empty namespace
package, never this project's op, so it cannot shadow another project's ``ops`` package (such as the
official ViT-Adapter's); ``import ops.msda`` raises an ``ImportError`` that points here.
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _sources_dir() -> Path:
    """The folder holding this package's kernel sources (see the module docstring)."""
    if (_HERE / "msda.py").is_file():  # built wheel: the sources were copied next to this file
        return _HERE
    checkout_ops = _HERE.parents[1] / "ops"
    if (checkout_ops / "msda.py").is_file():
        return checkout_ops
    raise ImportError(f"vit_adapter_ds.ops: kernel sources not found, neither in {_HERE} (wheel) nor in "
                      f"{checkout_ops} (checkout); reinstall the package or restore the ops/ folder")


SOURCES_DIR = _sources_dir()
__path__ = [str(SOURCES_DIR)]  # noqa: F811 - submodules (msda, triton_msda, cuda_ext, build, ...) load from there

from .msda import BACKENDS, ENV_VAR, ms_deform_attn, resolve_backend  # noqa: E402
from .reference import ms_deform_attn_reference  # noqa: E402

__all__ = ["BACKENDS", "ENV_VAR", "SOURCES_DIR", "ms_deform_attn", "ms_deform_attn_reference", "resolve_backend"]
