#!/usr/bin/env bash
# Quickstart on a fresh machine (CPU is enough): install, write the synthetic shards, train the tiny ViT-Adapter +
# UperNet with DeepSpeed ZeRO-2 fp32 on 2 CPU ranks for a few minutes, evaluate, show where the outputs are.
#
#   bash launch/quickstart.sh                       # WORK_DIR=work_dirs/synthetic_quickstart by default
set -euo pipefail
cd "$(dirname "$0")/.."
WORK_DIR="${WORK_DIR:-work_dirs/synthetic_quickstart}"
PORT="${MASTER_PORT:-29533}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"          # 2 ranks x 1 thread on 2 cores
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/vit_adapter_ds/torch_extensions}"
mkdir -p "$TORCH_EXTENSIONS_DIR"
find "$TORCH_EXTENSIONS_DIR" -name lock -delete 2>/dev/null || true   # a killed JIT build blocks forever otherwise
cleanup() { rm -f /dev/shm/deepspeed_allreduce_buffer_*_"$PORT"_* 2>/dev/null || true; }
trap cleanup EXIT

python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -c constraints/references.txt -e '.[train]'   # reference versions pinned (README)

[ -f shards/synthetic/val/manifest.json ] || \
  python -m vit_adapter_ds.data.make_shards synthetic --out shards/synthetic --num-train 512 --num-val 32 \
    --size 128 170 --no-progress

# First DeepSpeed use on a CPU compiles its shared-memory all-reduce op (about 2 minutes, cached afterwards).
deepspeed --num_gpus 2 --master_port "$PORT" launch/train.py --ds_config ds_configs/zero2_fp32.json \
  --work-dir "$WORK_DIR" --resume auto

python - "$WORK_DIR" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
run = json.loads((w / "status.json").read_text())  # how the run ended (vit_adapter_ds/engine/status.py)
if run.get("state") != "finished":
    sys.exit(f"training did not finish: {w / 'status.json'} says {run.get('state')!r} ({run.get('error', '')})")
print(f"\nfinal evaluation: {run.get('metrics')}")
print(f"TensorBoard:  tensorboard --logdir {w / 'tensorboard'}")
preds = sorted((w / "predictions").glob("iter_*"), key=lambda p: int(p.name[5:]))
print(f"predictions:  {preds[-1] if preds else w / 'predictions'}  (input | ground truth | prediction PNGs)")
print(f"checkpoints:  {w / 'checkpoints'}   metrics: {w / 'metrics.jsonl'}")
print(f"export:       python launch/export.py {w} --out {w / 'model.pth'}")
print(f"your images:  python launch/demo.py --checkpoint {w} --input IMAGE_OR_FOLDER --out demo/  (README: Inference;"
      f" in Python: vit_adapter_ds.apis.init_model('synthetic_quickstart', '{w}'))")
PY
