#!/usr/bin/env bash
# Install seqtrain on every worker of a Cloud TPU VM (single host or pod slice) and
# run the same `seqtrain train ... --distributed auto` on all of them (JAX finds the
# other workers through the Cloud TPU metadata).
#
#   launch/tpu_vm.sh install     # clone + pip install on all workers (once per TPU VM)
#   launch/tpu_vm.sh train       # start training on all workers (rerun = resume)
#   launch/tpu_vm.sh all         # both
#   TPU_NAME=my-v5p ZONE=us-east5-a CONFIG=configs/eigenworms.py launch/tpu_vm.sh train
#
# Edit the variables below or set them in the environment. WORKDIR must be storage
# that all workers share (e.g. a Filestore/NFS or gcsfuse mount at the same path on
# every worker): every process writes its part of each checkpoint there.
# Installing from a wheel instead of git: `python -m build --wheel` (or
# `pip wheel --no-deps . -w dist`) here, then WHEEL=dist/seqtrain-0.1.0-py3-none-any.whl;
# the wheel and the local configs/ folder are copied to every worker.
# DETACH=1 keeps training running after this ssh session ends (log on each worker
# in ~/seqtrain/train.log); otherwise all workers' output streams here and closing
# the session stops training (rerun `train` to resume from the latest checkpoint).
set -euo pipefail

TPU_NAME="${TPU_NAME:-my-tpu}"                 # gcloud compute tpus tpu-vm list
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"                         # empty: gcloud's default project
GIT_URL="${GIT_URL:-https://github.com/OWNER/seqtrain.git}"   # repository to install from
GIT_REF="${GIT_REF:-main}"                     # branch, tag or commit
WHEEL="${WHEEL:-}"                             # local wheel path; set: install it instead of git
JAX_TPU="${JAX_TPU:-jax[tpu]>=0.10.2,<0.12}"   # JAX with libtpu, within seqtrain's pins
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"       # venv made with uv (installed if missing)
CONFIG="${CONFIG:-configs/basic_motions.py}"   # relative to ~/seqtrain on the workers
WORKDIR="${WORKDIR:-/mnt/shared/runs/seqtrain}"
EXTRA_ARGS="${EXTRA_ARGS:-}"                   # e.g. "--config.train.steps=20000" (split on spaces)
DETACH="${DETACH:-0}"
REMOTE_DIR='~/seqtrain'                        # on each worker (the remote shell expands ~)

usage() {
  cat >&2 <<EOF
usage: $0 install|train|all
  install  copy/clone seqtrain to $REMOTE_DIR on every worker and pip install it (+ $JAX_TPU)
  train    run 'seqtrain train --config \$CONFIG --workdir \$WORKDIR --distributed auto' on all workers
  all      install, then train
settings (environment): TPU_NAME=$TPU_NAME ZONE=$ZONE PROJECT=${PROJECT:-<default>}
  GIT_URL=$GIT_URL GIT_REF=$GIT_REF WHEEL=${WHEEL:-<none>}
  CONFIG=$CONFIG WORKDIR=$WORKDIR EXTRA_ARGS=${EXTRA_ARGS:-<none>} DETACH=$DETACH
EOF
  exit 2
}

[[ $# -eq 1 ]] || usage
case "$1" in install|train|all) ;; *) usage ;; esac
if [[ "$TPU_NAME" == my-tpu ]]; then
  echo "$0: set TPU_NAME (and ZONE): edit the top of this script or export them" >&2
  exit 2
fi
if [[ "$1" != train && -z "$WHEEL" && "$GIT_URL" == *OWNER* ]]; then
  echo "$0: set GIT_URL (the repository to install from) or WHEEL (a local wheel)" >&2
  exit 2
fi

gcloud_args=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && gcloud_args+=(--project="$PROJECT")

q() {  # quote one word for the remote shell (POSIX single quotes: any login shell)
  local s="${1//\'/\'\\\'\'}"
  printf "'%s'" "$s"
}

on_all_workers() {  # run one bash script on every worker, concurrently
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all \
    --command="bash -c $(q "$1")"
}

install() {
  local fetch
  if [[ -n "$WHEEL" ]]; then
    [[ -f "$WHEEL" ]] || { echo "$0: WHEEL=$WHEEL: no such file" >&2; exit 2; }
    on_all_workers "mkdir -p $REMOTE_DIR"
    gcloud compute tpus tpu-vm scp "$WHEEL" "$TPU_NAME:$REMOTE_DIR/" "${gcloud_args[@]}" --worker=all
    gcloud compute tpus tpu-vm scp configs "$TPU_NAME:$REMOTE_DIR/" "${gcloud_args[@]}" --worker=all --recurse
    fetch="PKG=$REMOTE_DIR/$(q "$(basename "$WHEEL")");"
  else
    fetch="if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR fetch --depth 1 origin $(q "$GIT_REF");
           else rm -rf $REMOTE_DIR && git clone --depth 1 $(q "$GIT_URL") $REMOTE_DIR &&
                git -C $REMOTE_DIR fetch --depth 1 origin $(q "$GIT_REF"); fi &&
           git -C $REMOTE_DIR checkout --force FETCH_HEAD && PKG=$REMOTE_DIR;"
  fi
  # uv provides Python $PYTHON_VERSION whatever the image's python3 is (seqtrain needs 3.11/3.12).
  on_all_workers "set -euo pipefail; $fetch
    command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh
    export PATH=~/.local/bin:~/.cargo/bin:\$PATH
    [ -x $REMOTE_DIR/.venv/bin/python ] || uv venv -q --python $(q "$PYTHON_VERSION") $REMOTE_DIR/.venv
    uv pip install -q -p $REMOTE_DIR/.venv/bin/python \"\$PKG\" $(q "$JAX_TPU")
    $REMOTE_DIR/.venv/bin/python -c 'import jax, seqtrain; print(\"seqtrain installed, jax\", jax.__version__)'"
}

train() {
  local cmd extra=() a
  read -r -a extra <<< "$EXTRA_ARGS"
  cmd="cd $REMOTE_DIR && .venv/bin/seqtrain train --config $(q "$CONFIG") --workdir $(q "$WORKDIR") --distributed auto"
  for a in "${extra[@]}"; do cmd+=" $(q "$a")"; done
  if [[ "$DETACH" == 1 ]]; then
    on_all_workers "set -euo pipefail; cd $REMOTE_DIR && nohup bash -c $(q "$cmd") >> train.log 2>&1 < /dev/null & echo started on \$(hostname)"
  else
    on_all_workers "set -euo pipefail; $cmd"
  fi
}

case "$1" in
  install) install ;;
  train) train ;;
  all) install; train ;;
esac
