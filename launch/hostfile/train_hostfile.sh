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
#   LAUNCH_ENV_DIR    where the script makes its private folder for the variables file (default: the current
#                     folder, which DeepSpeed enters on every node); it must be seen by every node at the same path
#   PYTHON            the Python that runs the ranks (default: python; resolved here to its absolute path)
#
# Variables and the other nodes: over ssh, DeepSpeed passes on the variables of its env file by writing them into the
# pdsh/ssh command line (`export NAME="value";`, evaluated by the remote shell, and logged as `cmd = ...`), and also
# those whose names start with PYTHON, MLFLOW, UCX, MV2 (NCCL on GPUs). So this script does not put a value there. It
# writes the variables (below) to a file of its own, mode 0600, in a fresh private folder (mktemp -d, mode 0700) under
# $LAUNCH_ENV_DIR, one `NAME=<base64 of the value>` per line, and only that file's path travels in DeepSpeed's env
# file (VIT_ADAPTER_DS_LAUNCH_ENV; DS_ENV_FILE points DeepSpeed at it). Every rank is started through this script
# (deepspeed --no_python), which checks the file (a plain file, not a symlink, owned by this user, no group/other
# permission), decodes and exports the values (byte for byte, never evaluated), then runs
# `$PYTHON -u $TRAIN_SCRIPT [--local_rank=<i>] --resume auto ...`. The folder is removed when the launcher ends.
# The variables: the lines `NAME=value` of .deepspeed_env in $HOME and in the current folder (values literal, as
# written, surrounding blanks stripped; a file not owned by this user, or writable by group/others, is refused),
# then the set ones among OMP_NUM_THREADS, GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME, TORCH_EXTENSIONS_DIR, CUDA_HOME,
# LD_LIBRARY_PATH, PATH, the VIT_ADAPTER_DS_*, NCCL_*, TORCH_*, AWS_* / GOOGLE_* / FSSPEC_* (remote shards) variables,
# those DeepSpeed would put on its command line (MLFLOW*, UCX*, MV2*, NCCL*: taken out of the launcher's
# environment), and $EXPORT_VARS. Only PYTHON* variables (PYTHONPATH, ...) still travel on DeepSpeed's command line.
# With NODE_RANK (or one host) the ranks run on this node and get the same values.
set -euo pipefail
RANK_MARK=--vit-adapter-ds-rank   # argv of a rank start: [--local_rank=<i>] --vit-adapter-ds-rank PYTHON TRAIN ARGS...
NAME_RE='^[A-Za-z_][A-Za-z0-9_]*$'
log() { echo "train_hostfile: $*" >&2; }
refuse() { log "refusing $1: ${*:2}"; exit 2; }

check_private() {  # $1 must be a real file (f) or folder (d), owned by this user, without any group/other permission
    local path=$1 kind=$2 owner mode
    [ -L "$path" ] && refuse "$path" "it is a symlink"
    if [ "$kind" = f ]; then
        [ -f "$path" ] || refuse "$path" "it is not a plain file"
    else
        [ -d "$path" ] || refuse "$path" "it is not a folder"
    fi
    read -r owner mode < <(stat -c '%u %a' -- "$path")
    [ "$owner" = "$(id -u)" ] || refuse "$path" "it is owned by uid $owner, not by this user (uid $(id -u))"
    (( (8#$mode & 8#077) == 0 )) || refuse "$path" "group or others have permissions on it (mode $mode)"
}

rank_main() {  # on a node, for one rank: export the variables of $VIT_ADAPTER_DS_LAUNCH_ENV, then run the script
    local local_rank=() file=${VIT_ADAPTER_DS_LAUNCH_ENV:-} line name value i names=() values=()
    if [[ $1 == --local_rank=* ]]; then local_rank=("$1"); shift; fi
    shift  # the mark
    local py=$1 train=$2
    shift 2
    [ -n "$file" ] || refuse "the rank start" "VIT_ADAPTER_DS_LAUNCH_ENV (the variables file) is not set"
    check_private "$(dirname -- "$file")" d
    check_private "$file" f
    while IFS= read -r line || [ -n "$line" ]; do  # decode everything first: a PATH in the file changes nothing here
        name=${line%%=*}
        [[ $line == *=* && $name =~ $NAME_RE ]] || refuse "$file" "a line is not NAME=<base64>"
        value=$(base64 -d <<<"${line#*=}" && printf x) || refuse "$file" "the value of $name is not base64"
        names+=("$name")
        values+=("${value%x}")  # the x kept trailing newlines of the value
    done <"$file"
    for i in "${!names[@]}"; do export "${names[$i]}=${values[$i]}"; done
    exec "$py" -u "$train" ${local_rank[@]+"${local_rank[@]}"} "$@"
}

if [ "${1:-}" = "$RANK_MARK" ] || { [[ ${1:-} == --local_rank=* ]] && [ "${2:-}" = "$RANK_MARK" ]; }; then
    rank_main "$@"
fi

# --------------------------------------------------------------------------------------------------- the launcher
unset VIT_ADAPTER_DS_LAUNCH_ENV
: "${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile (lines of '<host> slots=<n>')}"
[ -f "$HOSTFILE" ] || { echo "train_hostfile: no hostfile $HOSTFILE" >&2; exit 2; }
HOSTS=$(sed -e 's/#.*//' "$HOSTFILE" | awk 'NF {print $1}')
[ -n "$HOSTS" ] || { echo "train_hostfile: $HOSTFILE lists no host" >&2; exit 2; }
NUM_HOSTS=$(echo "$HOSTS" | wc -l)
MASTER_ADDR=${MASTER_ADDR:-$(echo "$HOSTS" | head -1)}
MASTER_PORT=${MASTER_PORT:-29500}
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TRAIN=${TRAIN_SCRIPT:-$REPO/launch/train.py}
PY=$("${PYTHON:-python}" -c 'import sys; print(sys.executable)') || refuse "PYTHON=${PYTHON:-python}" "it does not run"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1
for a in ${DS_LAUNCHER_ARGS:-}; do
    case $a in
        --no_p* | --mod* | -m) refuse "DS_LAUNCHER_ARGS" "$a: every rank is started through this script with" \
            "--no_python (to load its variables), the training script runs as \$PYTHON -u \$TRAIN_SCRIPT" ;;
    esac
done

# The variables for the ranks, in order (a later one of the same name wins).
declare -A VALUE=()
ORDER=()
add_var() { [ -n "${VALUE[$1]+x}" ] || ORDER+=("$1"); VALUE[$1]=$2; }
for f in "$HOME/.deepspeed_env" ./.deepspeed_env; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    read -r owner mode < <(stat -L -c '%u %a' -- "$f") || refuse "$f" "it cannot be read"
    [ "$owner" = "$(id -u)" ] || refuse "$f" "it is owned by uid $owner, not by this user (uid $(id -u)):" \
        "its variables would reach the ranks"
    (( (8#$mode & 8#022) == 0 )) || refuse "$f" "group or others can write to it (mode $mode):" \
        "its variables would reach the ranks"
    n=0
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        [[ $line == *=* ]] || refuse "$f" "line $n is not NAME=value"
        name=${line%%=*}
        name=${name#"${name%%[![:space:]]*}"}
        name=${name%"${name##*[![:space:]]}"}
        [[ $name =~ $NAME_RE ]] || refuse "$f" "line $n: '$name' is not a variable name"
        value=${line#*=}
        value=${value#"${value%%[![:space:]]*}"}
        value=${value%"${value##*[![:space:]]}"}
        add_var "$name" "$value"
    done <"$f"
done
by_prefix=$(compgen -e | grep -E '^(VIT_ADAPTER_DS_|NCCL|TORCH_|AWS_|GOOGLE_|FSSPEC_|MLFLOW|UCX|MV2)' || true)
for name in OMP_NUM_THREADS GLOO_SOCKET_IFNAME NCCL_SOCKET_IFNAME TORCH_EXTENSIONS_DIR CUDA_HOME LD_LIBRARY_PATH PATH \
    $by_prefix ${EXPORT_VARS:-}; do
    [[ $name =~ $NAME_RE ]] || refuse "EXPORT_VARS" "'$name' is not a variable name"
    if [ -n "${!name+x}" ]; then
        add_var "$name" "${!name}"
    fi
done
# DeepSpeed would write these into its command line: the ranks get them from the file instead
for name in $(compgen -e | grep -E '^(MLFLOW|UCX|MV2|NCCL)' || true); do unset "$name"; done

# The private folder and the variables file (see the top). DeepSpeed double-quotes a value with other characters
# than these, and the remote shell would expand it: the folder's path must not need that.
BASE=${LAUNCH_ENV_DIR:-$PWD}
[[ $BASE == /* ]] || BASE=$PWD/$BASE
[[ $BASE =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]] || refuse "$BASE" "its path has characters that the remote shell would" \
    "interpret (allowed: letters, digits, _@%+=:,./-); set LAUNCH_ENV_DIR to another folder that every node sees"
PRIV=$(mktemp -d "$BASE/.vit-adapter-ds-launch.XXXXXXXX") \
    || refuse "$BASE" "cannot create a private folder in it; set LAUNCH_ENV_DIR to a folder that every node sees"
trap 'rm -rf -- "$PRIV"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
check_private "$PRIV" d
umask 077
VARS=$PRIV/env
(
    set -o noclobber
    for name in "${ORDER[@]}"; do
        printf '%s=%s\n' "$name" "$(printf %s "${VALUE[$name]}" | base64 -w0)"
    done >"$VARS.tmp"
)
mv -T -- "$VARS.tmp" "$VARS"
( set -o noclobber; printf 'VIT_ADAPTER_DS_LAUNCH_ENV=%s\n' "$VARS" >"$PRIV/deepspeed_env" )
export DS_ENV_FILE=$PRIV/deepspeed_env  # an absolute name: DeepSpeed reads exactly this file
export VIT_ADAPTER_DS_LAUNCH_ENV=$VARS  # the ranks started here (no ssh) inherit it

LAUNCHER=(deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --no_python)
if [ -n "${NODE_RANK:-}" ]; then
    LAUNCHER+=(--no_ssh --node_rank "$NODE_RANK")
elif [ "$NUM_HOSTS" = 1 ]; then
    LAUNCHER+=(--no_ssh_check)  # one host: started here, no ssh (DeepSpeed would otherwise ssh into it first)
fi
# shellcheck disable=SC2206  # DS_LAUNCHER_ARGS is split into words on purpose
LAUNCHER+=(${DS_LAUNCHER_ARGS:-})
echo "$(date +%T) train_hostfile: $NUM_HOSTS host(s) in $HOSTFILE, master $MASTER_ADDR:$MASTER_PORT" \
    "${NODE_RANK:+(node rank $NODE_RANK, no ssh)}: $TRAIN --resume auto $*" >&2
"${LAUNCHER[@]}" "$SELF" "$RANK_MARK" "$PY" "$TRAIN" --resume auto "$@"
