#!/usr/bin/env bash
# Build the platform wheel of the device runtime:
#   edgeforge_runtime-<version>-cp<XY>-cp<XY>-manylinux_2_28_<arch>.whl
# carrying
#   edgeforge_runtime/_lib/libtvm_runtime.so (+ libtvm_runtime_cuda.so) and the Apache TVM
#     LICENSE/NOTICE files, from the official apache-tvm wheel of the platform and of the version
#     in RUNTIME_ABI (runtime/edgeforge_runtime/manifest.py);
#   edgeforge_runtime/_vendor/tvm_ffi: the runtime part of the official apache-tvm-ffi wheel of
#     the pinned version for the platform and CPython X.Y (libtvm_ffi.so, the Cython core, the
#     Python package, its licences), without its C++ headers, sources, CMake files, stub
#     generator and the 1.9 MB libtvm_ffi_testing.so (replaced by a one-symbol stub: core.so links
#     it only to call TVMFFITestingDummyTarget at import). This keeps the install under 10 MB.
# The wheel has no dependency on apache-tvm-ffi; its tag pins the CPython version (tvm-ffi's
# Cython core is built per CPython).
#
# usage: scripts/build_runtime_wheel.sh [x86_64|aarch64] [OUTDIR]
#   arch   default: this machine's (uname -m)
#   OUTDIR default: dist/
# environment:
#   PYTHON  interpreter with pip and `wheel` (default: .venv/bin/python, else python3)
#   EDGEFORGE_WHEEL_PYTHON  CPython version the wheel is for, X.Y (default: PYTHON's)
#   EDGEFORGE_DOWNLOAD_DIR  where the apache-tvm(-ffi) wheels are cached (default: .cache/downloads)
#   CC_x86_64, CC_aarch64   C compilers for the stub (default: gcc, aarch64-linux-gnu-gcc)
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
  -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  armv7l|armv7|armhf) die "no apache-tvm wheel exists for armv7: build libtvm_runtime.so from source" ;;
  *) die "unsupported architecture '$ARCH' (x86_64 or aarch64)" ;;
esac
PLATFORM="manylinux_2_28_${ARCH}"
case "$ARCH" in
  x86_64) STUB_CC="${CC_x86_64:-gcc}" ;;
  aarch64) STUB_CC="${CC_aarch64:-aarch64-linux-gnu-gcc}" ;;
esac
command -v "$STUB_CC" >/dev/null \
  || die "$STUB_CC is needed to build a stub library for $ARCH (scripts/setup.sh installs it)"

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
"$PY" -c 'import wheel' 2>/dev/null \
  || die "$PY lacks the 'wheel' package (needed to retag the wheel): $PY -m pip install wheel"

# The TVM and tvm-ffi versions are the runtime ABI pin; read them without importing the package.
abi_pin() {
  "$PY" - "$ROOT/runtime/edgeforge_runtime/manifest.py" "$1" <<'EOF'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in ast.walk(tree):
    if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "RUNTIME_ABI":
        print(ast.literal_eval(node.value)[sys.argv[2]])
EOF
}
TVM_VERSION="$(abi_pin tvm)"
[[ -n "$TVM_VERSION" ]] || die "cannot read RUNTIME_ABI['tvm'] from manifest.py"
FFI_VERSION="$(abi_pin tvm_ffi)"
[[ -n "$FFI_VERSION" ]] || die "cannot read RUNTIME_ABI['tvm_ffi'] from manifest.py"
PYVER="${EDGEFORGE_WHEEL_PYTHON:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || die "EDGEFORGE_WHEEL_PYTHON must look like 3.11, not '$PYVER'"
CPTAG="cp${PYVER/./}"

# --- the official apache-tvm wheel for the platform (cached) -----------------------------------
DL="${EDGEFORGE_DOWNLOAD_DIR:-$ROOT/.cache/downloads}"
mkdir -p "$DL"
# cached_wheel GLOB REQUIREMENT PYTHON_VERSION: the cached wheel, downloaded once.
cached_wheel() {
  local glob="$1" req="$2" pyver="$3" found part
  found="$(compgen -G "$DL/$glob" | head -n1 || true)"
  if [[ -z "$found" ]]; then
    log "downloading $req for $PLATFORM, CPython $pyver (cached in $DL)"
    part="$(mktemp -d "$DL/.part.XXXXXX")"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --platform "$PLATFORM" \
      --python-version "$pyver" --implementation cp --dest "$part" "$req" >&2 \
      || { rm -rf "$part"; die "pip download $req failed"; }
    mv "$part"/*.whl "$DL/"  # whole files only, so a concurrent build never sees a partial one
    rm -rf "$part"
    found="$(compgen -G "$DL/$glob" | head -n1 || true)"
    [[ -n "$found" ]] || die "pip download gave no wheel matching $glob"
  fi
  echo "$found"
}
# libtvm_runtime.so does not depend on the CPython version: any apache-tvm wheel of the platform
# (~100 MB, downloaded once).
TVM_WHEEL="$(cached_wheel "apache_tvm-${TVM_VERSION}-*${ARCH}*.whl" "apache-tvm==$TVM_VERSION" 3.11)"
FFI_WHEEL="$(cached_wheel "apache_tvm_ffi-${FFI_VERSION}-${CPTAG}-*${ARCH}*.whl" \
  "apache-tvm-ffi==$FFI_VERSION" "$PYVER")"
log "taking the runtime libraries from $(basename "$TVM_WHEEL") and $(basename "$FFI_WHEEL")"

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

# tvm-ffi, vendored: what `import tvm_ffi` and the VM need, nothing for building extensions.
VENDOR="$SRC/edgeforge_runtime/_vendor"
mkdir -p "$VENDOR"
"$PY" - "$FFI_WHEEL" "$VENDOR" <<'EOF'
import shutil, sys, zipfile
from pathlib import PurePosixPath, Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
# Build-time material: C++ headers, C++/Cython sources, CMake config, the stub generator CLI.
SKIP_DIRS = {"include", "src", "cython", "share", "3rdparty", "stub", "__pycache__"}
SKIP_FILES = {"CMakeLists.txt", "lib/libtvm_ffi_testing.so"}
kept = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or len(parts) < 2:
            continue
        if parts[0].endswith(".dist-info") and len(parts) > 2 and parts[1] == "licenses":
            target = dest / "tvm_ffi-licenses" / PurePosixPath(*parts[2:])
        elif parts[0] == "tvm_ffi":
            rel = PurePosixPath(*parts[1:])
            if parts[1] in SKIP_DIRS or str(rel) in SKIP_FILES:
                continue
            target = dest / "tvm_ffi" / rel
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with z.open(info) as f, open(target, "wb") as out:
            shutil.copyfileobj(f, out)
        target.chmod(0o755 if target.suffix == ".so" else 0o644)
        kept += 1
for need in ("tvm_ffi/__init__.py", "tvm_ffi/lib/libtvm_ffi.so", "tvm_ffi-licenses/LICENSE"):
    if not (dest / need).exists():
        sys.exit(f"{wheel} lacks {need}")
if not list((dest / "tvm_ffi").glob("core.*.so")):
    sys.exit(f"{wheel} has no Cython core")
# tvm-ffi's own runtime requirements (typing-extensions) become the runtime wheel's.
with zipfile.ZipFile(wheel) as z:
    meta = next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/METADATA"))
reqs = [line.split(":", 1)[1].strip() for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line]
(dest.parent.parent / "ffi-requires.txt").write_text("\n".join(reqs))
print(f"[build_runtime_wheel] vendored {kept} files of tvm_ffi", file=sys.stderr)
EOF
# The one symbol tvm_ffi's core.so takes from libtvm_ffi_testing.so (a dummy that keeps the
# testing library linked for tvm-ffi's own test suite). No libc: no glibc version requirement.
printf 'int TVMFFITestingDummyTarget(void) { return 0; }\n' >"$WORK/testing_stub.c"
"$STUB_CC" -shared -fPIC -O2 -nostdlib -o "$VENDOR/tvm_ffi/lib/libtvm_ffi_testing.so" \
  "$WORK/testing_stub.c" || die "$STUB_CC could not build the libtvm_ffi_testing.so stub"
# The wheel carries tvm-ffi: no dependency on the apache-tvm-ffi distribution, only on its own
# requirements.
"$PY" - "$SRC/pyproject.toml" "$SRC/ffi-requires.txt" <<'EOF'
import json, re, sys
path = sys.argv[1]
reqs = [r for r in open(sys.argv[2]).read().splitlines() if r]
text = open(path).read()
new = re.sub(r'"apache-tvm-ffi==[^"]*",\s*', "".join(f"{json.dumps(r)}, " for r in reqs), text)
if new == text:
    sys.exit("pyproject.toml: the apache-tvm-ffi dependency was not found")
new = new.replace('"_lib/NOTICE*"]', '"_lib/NOTICE*", "_vendor/**/*"]')
if "_vendor/**/*" not in new:
    sys.exit("pyproject.toml: package-data for _vendor could not be added")
open(path, "w").write(new)
EOF

# A binary distribution: the wheel goes to platlib (Root-Is-Purelib: false), then it is retagged
# cp<XY>-cp<XY>-<platform>: the vendored tvm-ffi core is a CPython X.Y extension.
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
"$PY" -m wheel tags --python-tag "$CPTAG" --abi-tag "$CPTAG" --platform-tag "$PLATFORM" --remove "$BUILT" \
  >/dev/null
FINAL="$(compgen -G "$WORK/dist/edgeforge_runtime-*-${CPTAG}-${CPTAG}-${PLATFORM}.whl" | head -n1)"
[[ -n "$FINAL" ]] || die "retagging failed"

mkdir -p "$OUT"
cp "$FINAL" "$OUT/"
WHEEL_OUT="$(cd "$OUT" && pwd)/$(basename "$FINAL")"
log "built $WHEEL_OUT ($(du -k "$WHEEL_OUT" | cut -f1) KiB)"
echo "$WHEEL_OUT"
