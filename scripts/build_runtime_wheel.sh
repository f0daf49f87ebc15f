#!/usr/bin/env bash
# Build the platform wheel of the device runtime:
#   edgeforge_runtime-<version>-py3-none-manylinux_2_28_<arch>.whl
# carrying edgeforge_runtime/_lib/libtvm_runtime.so (+ libtvm_runtime_cuda.so) and the Apache TVM
# LICENSE/NOTICE files, taken from the official apache-tvm wheel of the same platform and of the
# version in RUNTIME_ABI (runtime/edgeforge_runtime/manifest.py).
#
# usage: scripts/build_runtime_wheel.sh [x86_64|aarch64] [OUTDIR]
#   arch   default: this machine's (uname -m)
#   OUTDIR default: dist/
# environment:
#   PYTHON  interpreter with pip and `wheel` (default: .venv/bin/python, else python3)
#   EDGEFORGE_DOWNLOAD_DIR  where the apache-tvm wheels are cached (default: .cache/downloads)
#
# The source tree is never modified: the package is copied to a temporary directory, the
# libraries are added there, the wheel is built from that copy and retagged for the platform.
# armv7 has no apache-tvm wheel: its libtvm_runtime.so must be built from source (not here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[build_runtime_wheel] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

ARCH="${1:-$(uname -m)}"
OUT="${2:-$ROOT/dist}"
case "$ARCH" in
  x86_64|amd64) ARCH=x86_64 ;;
  aarch64|arm64) ARCH=aarch64 ;;
  -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  armv7l|armv7|armhf) die "no apache-tvm wheel exists for armv7: build libtvm_runtime.so from source" ;;
  *) die "unsupported architecture '$ARCH' (x86_64 or aarch64)" ;;
esac
PLATFORM="manylinux_2_28_${ARCH}"

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
"$PY" -c 'import wheel' 2>/dev/null \
  || die "$PY lacks the 'wheel' package (needed to retag the wheel): $PY -m pip install wheel"

# The TVM version is the runtime ABI pin; read it without importing the package.
TVM_VERSION="$("$PY" - "$ROOT/runtime/edgeforge_runtime/manifest.py" <<'EOF'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in ast.walk(tree):
    if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "RUNTIME_ABI":
        print(ast.literal_eval(node.value)["tvm"])
EOF
)"
[[ -n "$TVM_VERSION" ]] || die "cannot read RUNTIME_ABI['tvm'] from manifest.py"

# --- the official apache-tvm wheel for the platform (cached) -----------------------------------
DL="${EDGEFORGE_DOWNLOAD_DIR:-$ROOT/.cache/downloads}"
mkdir -p "$DL"
find_tvm_wheel() { compgen -G "$DL/apache_tvm-${TVM_VERSION}-*${ARCH}*.whl" | head -n1 || true; }
TVM_WHEEL="$(find_tvm_wheel)"
if [[ -z "$TVM_WHEEL" ]]; then
  log "downloading apache-tvm==$TVM_VERSION for $PLATFORM (~100 MB, cached in $DL)"
  PART="$(mktemp -d "$DL/.part.XXXXXX")"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform "$PLATFORM" \
    --python-version 3.11 --implementation cp --dest "$PART" "apache-tvm==$TVM_VERSION"
  mv "$PART"/apache_tvm-*.whl "$DL/"  # whole files only, so a concurrent build never sees a partial one
  rm -rf "$PART"
  TVM_WHEEL="$(find_tvm_wheel)"
  [[ -n "$TVM_WHEEL" ]] || die "pip download gave no apache-tvm wheel for $PLATFORM"
fi
log "taking the runtime libraries from $(basename "$TVM_WHEEL")"

# --- a temporary copy of the package with the libraries added ----------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgeforge-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SRC="$WORK/src"
mkdir -p "$SRC"
cp "$ROOT/runtime/pyproject.toml" "$ROOT/runtime/README.md" "$SRC/"
cp -r "$ROOT/runtime/edgeforge_runtime" "$SRC/"
find "$SRC" -name __pycache__ -type d -prune -exec rm -rf {} +
rm -rf "$SRC/edgeforge_runtime/_lib"
mkdir -p "$SRC/edgeforge_runtime/_lib"

# CUDA backend: both platforms' apache-tvm wheels ship it (it needs libcuda/libcudart at load time).
"$PY" - "$TVM_WHEEL" "$SRC/edgeforge_runtime/_lib" <<'EOF'
import shutil, sys, zipfile
from pathlib import Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
wanted = {"tvm/lib/libtvm_runtime.so": "libtvm_runtime.so",
          "tvm/lib/libtvm_runtime_cuda.so": "libtvm_runtime_cuda.so",
          "tvm/LICENSE": "LICENSE", "tvm/NOTICE": "NOTICE"}
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    # Third-party licences of code linked into the TVM binaries (e.g. builtin_fp16).
    for n in sorted(names):
        if n.startswith("tvm/licenses/LICENSE") and not n.endswith("/"):
            wanted[n] = Path(n).name
    missing = [n for n in ("tvm/lib/libtvm_runtime.so", "tvm/LICENSE", "tvm/NOTICE") if n not in names]
    if missing:
        sys.exit(f"{wheel} lacks {missing}")
    for src, name in wanted.items():
        if src not in names:
            print(f"[build_runtime_wheel] note: {src} is not in this wheel", file=sys.stderr)
            continue
        with z.open(src) as f, open(dest / name, "wb") as out:
            shutil.copyfileobj(f, out)
        (dest / name).chmod(0o755 if name.endswith(".so") else 0o644)
EOF

# A binary distribution: the wheel goes to platlib (Root-Is-Purelib: false), then it is retagged
# py3-none-<platform>: the package has no CPython extension of its own, only the TVM libraries.
cat > "$SRC/setup.py" <<'EOF'
from setuptools import setup
from setuptools.dist import Distribution


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(distclass=BinaryDistribution)
EOF

log "building the wheel"
if ! "$PY" -m pip wheel -q --no-deps --wheel-dir "$WORK/dist" "$SRC" >"$WORK/pip-wheel.log" 2>&1; then
  cat "$WORK/pip-wheel.log" >&2
  die "pip wheel failed"
fi
BUILT="$(compgen -G "$WORK/dist/edgeforge_runtime-*.whl" | head -n1)"
[[ -n "$BUILT" ]] || die "pip wheel produced no wheel"
"$PY" -m wheel tags --python-tag py3 --abi-tag none --platform-tag "$PLATFORM" --remove "$BUILT" >/dev/null
FINAL="$(compgen -G "$WORK/dist/edgeforge_runtime-*-py3-none-${PLATFORM}.whl" | head -n1)"
[[ -n "$FINAL" ]] || die "retagging failed"

mkdir -p "$OUT"
cp "$FINAL" "$OUT/"
WHEEL_OUT="$(cd "$OUT" && pwd)/$(basename "$FINAL")"
log "built $WHEEL_OUT ($(du -k "$WHEEL_OUT" | cut -f1) KiB)"
echo "$WHEEL_OUT"
