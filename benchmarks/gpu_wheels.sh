#!/usr/bin/env bash
# Wheels that benchmarks/gpu_all.py needs on the lent GPU machine (Python 3.12 image with torch, triton, timm,
# numpy, pyyaml, rich, matplotlib, opencv-python-headless, psutil, einops, ninja, msgpack, py-cpuinfo, tqdm,
# nvidia-ml-py; without mmengine, deepspeed, webdataset) into .whl/ of the repository root (ignored through
# .git/info/exclude), to be named in the device call's carry. Run from the repository root, where pip works:
#     bash benchmarks/gpu_wheels.sh            # mmengine and what it needs (recipes load through mmengine.Config)
#     bash benchmarks/gpu_wheels.sh deepspeed  # also a deepspeed wheel built here (PyPI ships only its sdist)
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
dl() {  # pure-Python or cp312 manylinux wheels, without their dependencies (named explicitly below)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$@"
}
dl mmengine==0.10.7 addict termcolor yapf platformdirs
if [ "${1:-}" = deepspeed ]; then
  # DeepSpeed's own ops are JIT-built on first use, so the wheel is pure Python; pydantic-core is compiled.
  python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
  dl hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
fi
ls -la .whl
