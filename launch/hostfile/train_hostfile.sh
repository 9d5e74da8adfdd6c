#!/usr/bin/env bash
# Train on a cluster without SLURM: DeepSpeed's launcher with a hostfile.
#
#   HOSTFILE=hostfile launch/hostfile/train_hostfile.sh --ds_config ds_configs/zero2_bf16.json \
#       --config upernet_deit_adapter_tiny_512_160k_ade20k --work-dir work_dirs/ade20k_tiny
#       run on the first node: DeepSpeed starts every node's ranks over ssh (pdsh, its default launcher)
#   HOSTFILE=hostfile NODE_RANK=<i> launch/hostfile/train_hostfile.sh ...
#       no ssh: run the same command on every node yourself, NODE_RANK=0..N-1 in hostfile order
#
# The hostfile has one line per node, "<hostname or address> slots=<GPUs on it>" (on CPUs: ranks per node); '#'
# starts a comment. The repository (and the Python environment) must be at the same path on every node, as on a
# shared file system. `--resume auto` is passed first (a --resume of yours wins), so running the same command again
# after a crash or a stop signal continues from the newest complete checkpoint.
#
# Environment:
#   HOSTFILE          the hostfile (required)
#   NODE_RANK         set: start only this node's ranks, without ssh (deepspeed --no_ssh --node_rank)
#   MASTER_ADDR       rank 0's node as the other nodes reach it (default: the first host of the hostfile)
#   MASTER_PORT       default 29500
#   DS_LAUNCHER_ARGS  more options for the `deepspeed` launcher, e.g. "--include node1:0,1@node2" (slots to use),
#                     "--num_gpus 4" (the first 4 slots of every node), "--num_nodes 2", "--launcher openmpi",
#                     "--ssh_port 2222"
#   TRAIN_SCRIPT      default launch/train.py of this repository
#   EXPORT_VARS       names of more variables to give the ranks on the other nodes (space-separated)
#
# Variables and the other nodes: over ssh, DeepSpeed passes on only PYTHON*, MLFLOW*, UCX*, MV2* (and NCCL* on
# GPUs) plus what its env file lists (.deepspeed_env in $HOME or here). This script writes a fresh env file (and
# points DeepSpeed at it with DS_ENV_FILE) with those files' lines plus the set variables among OMP_NUM_THREADS,
# GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME, TORCH_EXTENSIONS_DIR, CUDA_HOME, LD_LIBRARY_PATH, PATH, the VIT_ADAPTER_DS_*,
# NCCL_*, TORCH_*, AWS_* / GOOGLE_* (remote shards) variables, and $EXPORT_VARS. With NODE_RANK every node's ranks
# inherit that node's own environment instead.
set -euo pipefail
: "${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile (lines of '<host> slots=<n>')}"
[ -f "$HOSTFILE" ] || { echo "train_hostfile: no hostfile $HOSTFILE" >&2; exit 2; }
HOSTS=$(sed -e 's/#.*//' "$HOSTFILE" | awk 'NF {print $1}')
[ -n "$HOSTS" ] || { echo "train_hostfile: $HOSTFILE lists no host" >&2; exit 2; }
NUM_HOSTS=$(echo "$HOSTS" | wc -l)
MASTER_ADDR=${MASTER_ADDR:-$(echo "$HOSTS" | head -1)}
MASTER_PORT=${MASTER_PORT:-29500}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TRAIN=${TRAIN_SCRIPT:-$REPO/launch/train.py}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1

ENV_FILE=$(mktemp "${TMPDIR:-/tmp}/vit-adapter-ds-env.XXXXXX")
trap 'rm -f "$ENV_FILE"' EXIT
for f in "$HOME/.deepspeed_env" ./.deepspeed_env; do
    [ -f "$f" ] && grep -v '^[[:space:]]*\(#\|$\)' "$f" >>"$ENV_FILE"
done
names=$(compgen -e | grep -E '^(VIT_ADAPTER_DS_|NCCL_|TORCH_|AWS_|GOOGLE_|FSSPEC_)' || true)
for name in OMP_NUM_THREADS GLOO_SOCKET_IFNAME NCCL_SOCKET_IFNAME TORCH_EXTENSIONS_DIR CUDA_HOME LD_LIBRARY_PATH PATH \
    $names ${EXPORT_VARS:-}; do
    if [ -n "${!name+x}" ]; then
        printf '%s=%s\n' "$name" "${!name}" >>"$ENV_FILE"
    fi
done
export DS_ENV_FILE=$ENV_FILE  # an absolute name: DeepSpeed reads exactly this file

LAUNCHER=(deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
if [ -n "${NODE_RANK:-}" ]; then
    LAUNCHER+=(--no_ssh --node_rank "$NODE_RANK")
elif [ "$NUM_HOSTS" = 1 ]; then
    LAUNCHER+=(--no_ssh_check)  # one host: started here, no ssh (DeepSpeed would otherwise ssh into it first)
fi
# shellcheck disable=SC2206  # DS_LAUNCHER_ARGS is split into words on purpose
LAUNCHER+=(${DS_LAUNCHER_ARGS:-})
echo "$(date +%T) train_hostfile: $NUM_HOSTS host(s) in $HOSTFILE, master $MASTER_ADDR:$MASTER_PORT" \
    "${NODE_RANK:+(node rank $NODE_RANK, no ssh)}: $TRAIN --resume auto $*" >&2
"${LAUNCHER[@]}" "$TRAIN" --resume auto "$@"
