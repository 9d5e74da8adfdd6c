#!/usr/bin/env bash
# Run a launch/*.py script as one SLURM task per rank, inside an allocation (sbatch, salloc):
#
#   launch/slurm/srun.sh [srun options] launch/train.py|launch/eval.py|launch/predict.py [script arguments]
#   salloc -N 2 --ntasks-per-node 4 --gpus-per-node 4 launch/slurm/srun.sh launch/eval.py --config ... --checkpoint ...
#
# Sets MASTER_ADDR (first node of the job; emulated node names that do not resolve fall back to their NodeAddr) and
# MASTER_PORT (from the job id) for every task; vit_adapter_ds/runtime.py maps SLURM_PROCID / SLURM_NTASKS /
# SLURM_LOCALID to RANK / WORLD_SIZE / LOCAL_RANK. --kill-on-bad-exit: one failed rank ends the step at once,
# no survivor waits on a collective until the timeout. Arguments before the *.py script go to srun.
set -euo pipefail
: "${SLURM_JOB_ID:?run inside a SLURM allocation (sbatch / salloc)}"
SRUN_OPTS=()
while [ $# -gt 0 ] && [[ $1 != *.py ]]; do  # everything before the script goes to srun
    SRUN_OPTS+=("$1")
    shift
done
[ $# -gt 0 ] || { echo "usage: $0 [srun options] SCRIPT [arguments]" >&2; exit 2; }
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -1)
if ! getent hosts "$MASTER_ADDR" >/dev/null; then  # emulated node names do not resolve: use the node address
    MASTER_ADDR=$(scontrol show node "$MASTER_ADDR" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
fi
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1
exec srun --kill-on-bad-exit=1 "${SRUN_OPTS[@]}" "${PYTHON:-python}" "$@"
