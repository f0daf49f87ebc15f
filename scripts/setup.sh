#!/usr/bin/env bash
# Set up everything edgeforge needs on a fresh Debian/Ubuntu machine. Idempotent: a second run
# only checks and exits quickly.
#   - apt: host and cross C++ toolchains (aarch64, armhf), qemu-user, binutils
#   - .venv: Python 3.11 virtual environment with the runtime and compiler installed editable
#   - .cache/sysroot/arm64: a Debian arm64 Python sysroot so aarch64 artifacts run under qemu
#   - nvcc (CUDA toolkit) from PyPI when none is installed, for ahead-of-time CUDA kernels
# Environment: PYTHON (default python3.11), EDGEFORGE_SKIP_APT=1, EDGEFORGE_SKIP_SYSROOT=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[setup] %s\n' "$*" >&2; }
# pip, quietly: this machine's pip config names local indexes that may not exist.
pipq() { .venv/bin/python -m pip -q "$@" 2> >(grep -v -e "^WARNING: Location" -e "BuildBackendWarning" >&2); }

# --- system packages -------------------------------------------------------------------------
APT_PKGS=(g++ binutils g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user python3-venv)
if [[ "${EDGEFORGE_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
    log "installing apt packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# --- Python environment ----------------------------------------------------------------------
PY="${PYTHON:-python3.11}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
STAMP=.venv/.edgeforge-deps
WANT="$(cat pyproject.toml runtime/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  log "installing Python packages into .venv (apache-tvm is ~100 MB; first run takes a few minutes)"
  pipq install --upgrade pip
  pipq install -e ./runtime -e '.[dev,tune]'
  echo "$WANT" > "$STAMP"
fi

# --- CUDA compiler (kernels are compiled ahead of time; no GPU needed) -------------------------
if ! command -v nvcc >/dev/null 2>&1 && [[ ! -x /usr/local/cuda/bin/nvcc ]] \
   && ! ls .venv/lib/python3*/site-packages/nvidia/*/bin/nvcc >/dev/null 2>&1; then
  log "installing nvcc from PyPI (nvidia-cuda-nvcc) for CUDA profiles"
  pipq install nvidia-cuda-nvcc nvidia-cuda-crt nvidia-cuda-runtime \
    || log "warning: nvcc could not be installed; CUDA profiles will report a toolchain error"
fi

# --- arm64 sysroot for qemu-user verification ------------------------------------------------
if [[ "${EDGEFORGE_SKIP_SYSROOT:-0}" != 1 ]]; then
  bash scripts/sysroot.sh arm64 >&2
fi
log "ready: source .venv/bin/activate, then: edgeforge --help"
