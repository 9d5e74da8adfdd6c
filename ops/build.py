"""Explicit, opt-in build of the CUDA extension: ``python -m vit_adapter_ds.ops.build [--verbose]``.

Compiles ``ops/csrc`` with ninja into ``TORCH_EXTENSIONS_DIR`` (the same cache the lazy first-use build
uses), so later runs only load the shared library. A GPU is not needed to build.
"""
from __future__ import annotations

if __package__ != "vit_adapter_ds.ops":
    raise ImportError(f"{__name__}: import the kernels as vit_adapter_ds.ops, not from the ops/ folder "
                      "(see vit_adapter_ds/ops/__init__.py)")

import argparse
import sys
import time

from . import cuda_ext


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="show the ninja / nvcc command lines")
    args = parser.parse_args(argv)
    start = time.time()
    module = cuda_ext.build(verbose=args.verbose)
    print(f"built {cuda_ext.EXT_NAME} in {time.time() - start:.1f} s: {module.__file__}")
    print(f"nvcc arch flags: {cuda_ext.arch_flags() or 'from TORCH_CUDA_ARCH_LIST'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
