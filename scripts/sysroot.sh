#!/usr/bin/env bash
# Build a minimal Debian bookworm sysroot in which a TVM-compiled shared library for a foreign
# ARM architecture runs under qemu-user, with a real CPython 3.11 for that architecture and only
# the TVM *runtime* (no TVM compiler).
#
#   usage: scripts/sysroot.sh <arm64|armhf> [DEST]
#
#   DEST defaults to $EDGEFORGE_SYSROOT_DIR/<arch>, else <repo>/.cache/sysroot/<arch>
#   (.cache is gitignored; compiler/toolchain.py looks there). Downloads are cached in
#   <repo>/.cache/downloads, armhf builds in <repo>/.cache/build. Run as root (it may call
#   dpkg --add-architecture and apt-get update). A second run with the same recipe is a no-op;
#   EF_SYSROOT_FORCE=1 rebuilds DEST (from the caches). EF_HOST_PYTHON picks the host Python.
#
# What lands in DEST
#   usr/ lib/ etc/   `dpkg -x` of python3.11-minimal, libpython3.11-minimal, libpython3.11-stdlib
#                    and the shared libraries that the interpreter and the extension modules
#                    behind `import numpy, ctypes, json, tarfile, hashlib, bz2, lzma` need: libc6,
#                    libgcc-s1, libstdc++6, libexpat1, zlib1g, libffi8, libssl3, libbz2-1.0,
#                    liblzma5. Nothing is installed on the host.
#   site/            goes on PYTHONPATH: tvm_ffi and typing_extensions (+ numpy on arm64).
#   tvm/             libtvm_runtime.so with LICENSE/NOTICE of the apache-tvm wheel, and a
#                    libtvm_ffi.so link so the runtime's RUNPATH=$ORIGIN also finds tvm_ffi's copy.
#   run-python       host-side wrapper that sets the environment below and execs qemu.
#   .sysroot-stamp   recipe key (first line) + the .deb files used.
#
# arm64: numpy and apache-tvm-ffi are PyPI's manylinux aarch64 wheels; libtvm_runtime.so comes from
#   the apache-tvm manylinux aarch64 wheel (py3-none; ~95 MB download, cached).
# armhf: PyPI has no armv7 wheel of numpy, apache-tvm-ffi or apache-tvm.
#   - numpy: Debian's python3-numpy (1.24.2; needs libblas3/liblapack3/libgfortran5), importable
#     without PYTHONPATH from usr/lib/python3/dist-packages via Debian's site.py.
#   - tvm_ffi: cross-built from the PyPI sdist with arm-linux-gnueabihf-g++ against the headers of
#     libpython3.11-dev:armhf (see build_tvm_ffi_armhf; two small patches, ~6-12 min once, cached).
#     EF_ARMHF_TVM_FFI=0 skips it.
#   - libtvm_runtime.so: NOT built. There is no apache-tvm sdist on PyPI, and the runtime sources
#     that the x86_64 wheel ships (tvm/src/runtime, tvm/include) lack headers they include:
#     tvm/support/{io,serializer}.h, src/support/{bytes_io,utils,base64}.h (+ arena, ring_buffer,
#     pipe, socket for RPC, tvm/support/cuda/nvtx.h). DEST/tvm stays empty and the script says so.
#
# Running Python in the sysroot (run-python does this; the script prints it with real paths):
#   QEMU_LD_PREFIX=DEST PYTHONHOME=DEST/usr PYTHONPATH=DEST/site PYTHONNOUSERSITE=1 \
#     qemu-aarch64 DEST/usr/bin/python3.11 ...            (qemu-arm for armhf)
#   - QEMU_LD_PREFIX (same as `qemu-aarch64 -L DEST`): qemu first looks every absolute path the
#     guest opens up under DEST, so the ELF interpreter /lib/ld-linux-*.so.* and all libraries
#     resolve inside the sysroot; paths that do not exist under DEST fall through to the host, so
#     host files (models, the .so built by TVM) are passed by their ordinary absolute path.
#   - PYTHONHOME=DEST/usr: CPython would derive it from the executable's path (landmark
#     DEST/usr/lib/python3.11/os.py) anyway; setting it keeps that independent of how the binary
#     is invoked. sys.prefix == sys.exec_prefix == DEST/usr.
#   - PYTHONNOUSERSITE=1 keeps the host's ~/.local/lib/python3.11 (x86_64 packages) off sys.path.
#   - .py files are byte-compiled at build time; otherwise (and with the host's
#     PYTHONDONTWRITEBYTECODE=1) every emulated start re-compiles numpy and the stdlib: ~5 s
#     instead of ~1.5 s for `import tvm_ffi, numpy`.
#   - In the guest: `import tvm_ffi` FIRST (loads libtvm_ffi.so), then
#     ctypes.CDLL("DEST/tvm/libtvm_runtime.so", ctypes.RTLD_GLOBAL), then
#     tvm_ffi.load_module("<absolute path of the compiled .so>").
set -euo pipefail

RECIPE_VERSION=1
TVM_VERSION=0.27.0.post1
TVM_FFI_VERSION=0.1.14.post1
NUMPY_VERSION=2.4.6               # arm64 wheel (the host venv's version)
TYPING_EXTENSIONS_VERSION=4.16.0  # pure-Python requirement of tvm_ffi
PY=python3.11

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOWNLOADS="$ROOT/.cache/downloads"
BUILD_CACHE="$ROOT/.cache/build"
HOST_PY="${EF_HOST_PYTHON:-python3}"

log() { printf '[sysroot] %s\n' "$*" >&2; }
die() { printf '[sysroot] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '6,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ARCH="${1:-}"
case "$ARCH" in
  arm64) TRIPLET=aarch64-linux-gnu; QEMU=qemu-aarch64 ;;
  armhf) TRIPLET=arm-linux-gnueabihf; QEMU=qemu-arm ;;
  -h|--help|"") usage ;;
  *) die "unknown architecture '$ARCH' (expected arm64 or armhf)" ;;
esac
BUILD_TVM_FFI=0
[[ $ARCH == armhf && ${EF_ARMHF_TVM_FFI:-1} != 0 ]] && BUILD_TVM_FFI=1
DEST="${2:-${EDGEFORGE_SYSROOT_DIR:-$ROOT/.cache/sysroot}/$ARCH}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"

# Debian packages unpacked into DEST.
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
      libc6 libgcc-s1 libstdc++6 libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5)
# Debian packages only needed to build (headers), unpacked elsewhere.
BUILD_DEBS=()
if [[ $ARCH == armhf ]]; then
  DEBS+=(python3-numpy libblas3 liblapack3 libgfortran5)
  (( BUILD_TVM_FFI )) && BUILD_DEBS+=(libpython3.11-dev)
fi

STAMP="$DEST/.sysroot-stamp"
STAMP_KEY="edgeforge-sysroot v$RECIPE_VERSION arch=$ARCH python=$PY tvm=$TVM_VERSION"
STAMP_KEY+=" tvm-ffi=$TVM_FFI_VERSION build-tvm-ffi=$BUILD_TVM_FFI numpy=$NUMPY_VERSION"
STAMP_KEY+=" typing-extensions=$TYPING_EXTENSIONS_VERSION debs=${DEBS[*]}"

print_usage_hint() {
  cat <<EOF

Sysroot ready: $DEST
Run Python for $ARCH under qemu-user:
  QEMU_LD_PREFIX=$DEST PYTHONHOME=$DEST/usr PYTHONPATH=$DEST/site PYTHONNOUSERSITE=1 \\
    $QEMU $DEST/usr/bin/$PY -c 'import tvm_ffi, numpy; print(tvm_ffi.__version__, numpy.__version__)'
or, equivalently:
  $DEST/run-python -c '...'
EOF
  if [[ -e $DEST/tvm/libtvm_runtime.so ]]; then
    echo "TVM runtime (ctypes.CDLL(..., ctypes.RTLD_GLOBAL) after 'import tvm_ffi'): $DEST/tvm/libtvm_runtime.so"
  else
    [[ -d $DEST/site/tvm_ffi ]] || echo "MISSING on $ARCH: site/tvm_ffi (EF_ARMHF_TVM_FFI=0)"
    cat <<EOF
MISSING on $ARCH: tvm/libtvm_runtime.so. PyPI has no $ARCH apache-tvm wheel and no apache-tvm sdist,
and the runtime sources in the x86_64 wheel lack tvm/support/{io,serializer}.h and
src/support/{bytes_io,utils,base64}.h, so TVM-compiled $ARCH libraries cannot be run here yet
(a TVM source checkout would be needed to cross-build libtvm_runtime.so).
EOF
  fi
}

if [[ ${EF_SYSROOT_FORCE:-0} == 0 && -f $STAMP ]] && [[ "$(head -n1 "$STAMP")" == "$STAMP_KEY" ]]; then
  log "$DEST is up to date ($STAMP)"
  print_usage_hint
  exit 0
fi

[[ $(id -u) == 0 ]] || die "run as root (needs dpkg --add-architecture and apt-get update)"
for tool in dpkg apt-get apt-cache "$QEMU" "$HOST_PY"; do
  command -v "$tool" >/dev/null || die "'$tool' not found"
done
"$HOST_PY" -m pip --version >/dev/null 2>&1 || die "$HOST_PY has no pip (set EF_HOST_PYTHON)"
mkdir -p "$DOWNLOADS"

# Start from a clean tree: a stale or half-built sysroot is rebuilt from the (cached) downloads.
# Only a directory that is empty or was made by this script (stamp/partial marker) is wiped.
if [[ -n "$(ls -A "$DEST")" && ! -e $STAMP && ! -e $DEST/.sysroot-partial ]]; then
  die "$DEST is not empty and not a sysroot made by this script; refusing to wipe it"
fi
log "building the $ARCH sysroot in $DEST"
find "$DEST" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
touch "$DEST/.sysroot-partial"
SECONDS=0

# ------------------------------------------------------------ 1. Debian packages, dpkg -x
if ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
  log "dpkg --add-architecture $ARCH"
  dpkg --add-architecture "$ARCH"
fi
# Candidate versions of all packages in one apt-cache call (each call costs seconds).
declare -A DEB_VER=()
resolve_versions() {
  local pkg ver
  while read -r pkg ver; do DEB_VER[$pkg]=$ver; done < <(
    apt-cache show --no-all-versions "${DEBS[@]/%/:$ARCH}" "${BUILD_DEBS[@]/%/:$ARCH}" 2>/dev/null \
      | awk '/^Package: /{p=$2} /^Version: /{print p, $2}')
}
resolve_versions
if (( ${#DEB_VER[@]} < ${#DEBS[@]} + ${#BUILD_DEBS[@]} )); then
  log "apt-get update (no complete $ARCH package lists yet)"
  # A partial failure (e.g. one mirror mid-sync) is tolerated; the lookup below decides.
  apt-get update -qq || log "warning: apt-get update reported errors; using the lists it has"
  resolve_versions
fi
DEB_DIR="$DOWNLOADS/debs/$ARCH"
mkdir -p "$DEB_DIR"
deb_file() {  # deb_file <package>: path of the cached .deb of its candidate version (downloads it)
  local pkg=$1 ver="${DEB_VER[$1]:-}" f
  [[ -n $ver ]] || die "no candidate for $pkg:$ARCH in the apt lists"
  f="$DEB_DIR/${pkg}_${ver//:/%3a}_$ARCH.deb"
  if [[ ! -s $f ]]; then
    log "apt-get download $pkg:$ARCH=$ver"
    (cd "$DEB_DIR" && apt-get download -qq -o APT::Sandbox::User=root "$pkg:$ARCH=$ver" >&2)
  fi
  [[ -s $f ]] || die "downloading $pkg:$ARCH=$ver did not produce $f"
  echo "$f"
}
DEB_FILES=()
for pkg in "${DEBS[@]}"; do
  f="$(deb_file "$pkg")"
  DEB_FILES+=("$f")
  dpkg -x "$f" "$DEST"
done
rm -rf "$DEST/usr/share/doc" "$DEST/usr/share/man" "$DEST/usr/share/lintian"
[[ -x $DEST/usr/bin/$PY ]] || die "$DEST/usr/bin/$PY missing after unpacking"
# dpkg -x runs no maintainer scripts: recreate the update-alternatives links of BLAS/LAPACK.
for alt in blas/libblas.so.3 lapack/liblapack.so.3; do
  if [[ -e $DEST/usr/lib/$TRIPLET/$alt ]]; then ln -sfn "$alt" "$DEST/usr/lib/$TRIPLET/${alt#*/}"; fi
done

# ------------------------------------------------------------ 2. Python packages in DEST/site
pip_get() {  # pip_get <platform>... -- <requirement>: download a binary wheel into the cache
  local plat=()
  while [[ $1 != -- ]]; do plat+=(--platform "$1"); shift; done
  shift
  "$HOST_PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp "${plat[@]}" -d "$DOWNLOADS" "$@"
}
wheel_file() {  # wheel_file <dist_name_with_underscores> <version> <platform-glob>
  local f
  for f in "$DOWNLOADS/$1-$2-"*"$3"*.whl; do [[ -e $f ]] && { echo "$f"; return; }; done
  return 1
}
aarch64_wheel() {  # aarch64_wheel <dist> <version>: cached aarch64 wheel (downloads it)
  if ! wheel_file "$1" "$2" aarch64 >/dev/null; then
    log "pip download ${1//_/-}==$2 (manylinux aarch64)"
    pip_get manylinux_2_28_aarch64 manylinux_2_17_aarch64 -- "${1//_/-}==$2"
  fi
  wheel_file "$1" "$2" aarch64
}
unzip_into() { "$HOST_PY" -m zipfile -e "$1" "$2"; }

mkdir -p "$DEST/site" "$DEST/tvm"
wheel_file typing_extensions "$TYPING_EXTENSIONS_VERSION" any >/dev/null \
  || pip_get any -- "typing_extensions==$TYPING_EXTENSIONS_VERSION"
unzip_into "$(wheel_file typing_extensions "$TYPING_EXTENSIONS_VERSION" any)" "$DEST/site"

# Cross-build tvm_ffi (C++ library + Cython extension) for armhf from the PyPI sdist. The result
# is cached in .cache/build/tvm-ffi-<version>-armhf/out and copied into DEST/site.
build_tvm_ffi_armhf() {
  local bdir="$BUILD_CACHE/tvm-ffi-$TVM_FFI_VERSION-armhf" sdist src py_dev
  if [[ ! -f $bdir/out/.complete ]]; then
    for tool in arm-linux-gnueabihf-gcc arm-linux-gnueabihf-g++ tar; do
      command -v "$tool" >/dev/null || die "'$tool' not found (apt-get install g++-arm-linux-gnueabihf)"
    done
    rm -rf "$bdir" && mkdir -p "$bdir"
    # Build tools: Cython >= 3.2.8 and CMake >= 3.26 (bookworm has 3.25) in a private venv.
    log "tvm_ffi/armhf: build venv (cython, cmake, ninja)"
    "$HOST_PY" -m venv "$bdir/venv"
    "$bdir/venv/bin/pip" install -q --disable-pip-version-check "cython>=3.2.8" "cmake>=3.26" ninja
    sdist="$DOWNLOADS/apache_tvm_ffi-$TVM_FFI_VERSION.tar.gz"
    if [[ ! -s $sdist ]]; then
      log "pip download apache-tvm-ffi==$TVM_FFI_VERSION (sdist)"
      "$HOST_PY" -m pip download -q --disable-pip-version-check --no-deps \
        --no-binary apache-tvm-ffi -d "$DOWNLOADS" "apache-tvm-ffi==$TVM_FFI_VERSION"
    fi
    mkdir -p "$bdir/src" "$bdir/pydev"
    tar -xzf "$sdist" -C "$bdir/src" --strip-components=1
    src="$bdir/src"
    # Target Python headers (Python.h + arm-linux-gnueabihf/python3.11/pyconfig.h).
    dpkg -x "$(deb_file libpython3.11-dev)" "$bdir/pydev"
    py_dev="$bdir/pydev/usr/include"
    # Patch 1: CMake asks for the *exact* host interpreter version (3.11.7) when looking for the
    # target headers (3.11.2); major.minor is what matters for the extension ABI.
    # shellcheck disable=SC2016  # literal CMake variables
    sed -i 's/Python \${Python_VERSION} EXACT/Python ${Python_VERSION_MAJOR}.${Python_VERSION_MINOR} EXACT/' \
      "$src/CMakeLists.txt"
    grep -q 'Python_VERSION_MINOR} EXACT' "$src/CMakeLists.txt" || die "tvm_ffi CMake patch failed"
    # Patch 2: the Python object header asserts 16 bytes (2 pointers on LP64); pad it on ILP32 so
    # object bodies stay 16 bytes after the allocation start, as on 64-bit.
    "$HOST_PY" - "$src/python/tvm_ffi/cython/tvm_ffi_python_object.h" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
old = "  PyObject* tagged_pyobj;\n  TVMFFIObjectAllocHeader base;\n"
new = ("  PyObject* tagged_pyobj;\n"
       "#if UINTPTR_MAX == 0xFFFFFFFFu  /* edgeforge: ILP32 (armhf) padding */\n"
       "  char ilp32_padding[16 - sizeof(PyObject*) - sizeof(TVMFFIObjectAllocHeader)];\n"
       "#endif\n"
       "  TVMFFIObjectAllocHeader base;\n")
assert s.count(old) == 1, "PyCustomAllocHeader not found"
open(p, "w").write(s.replace(old, new))
EOF
    cat >"$bdir/toolchain.cmake" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_C_COMPILER arm-linux-gnueabihf-gcc)
set(CMAKE_CXX_COMPILER arm-linux-gnueabihf-g++)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
EOF
    log "tvm_ffi/armhf: cmake configure + build (several minutes)"
    "$bdir/venv/bin/cmake" -S "$src" -B "$bdir/build" -G Ninja \
      -DCMAKE_MAKE_PROGRAM="$bdir/venv/bin/ninja" \
      -DCMAKE_TOOLCHAIN_FILE="$bdir/toolchain.cmake" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_FLAGS="-isystem $py_dev" \
      -DTVM_FFI_BUILD_PYTHON_MODULE=ON -DTVM_FFI_BUILD_TESTS=OFF \
      -DPython_EXECUTABLE="$bdir/venv/bin/python" -DPython_INCLUDE_DIR="$py_dev/$PY" \
      -DSKBUILD_SOABI="cpython-311-$TRIPLET" >"$bdir/cmake.log" 2>&1 \
      || die "tvm_ffi cmake configure failed, see $bdir/cmake.log"
    "$bdir/venv/bin/cmake" --build "$bdir/build" -j "$(nproc)" >>"$bdir/cmake.log" 2>&1 \
      || die "tvm_ffi build failed, see $bdir/cmake.log"
    # Same layout as the wheel: python/tvm_ffi plus what the CMake install puts next to it.
    mkdir -p "$bdir/out/tvm_ffi"
    cp -a "$src/python/tvm_ffi/." "$bdir/out/tvm_ffi/"
    "$bdir/venv/bin/cmake" --install "$bdir/build" --prefix "$bdir/out/tvm_ffi" >>"$bdir/cmake.log" 2>&1 \
      || die "tvm_ffi install failed, see $bdir/cmake.log"
    cp "$src/LICENSE" "$src/NOTICE" "$bdir/out/tvm_ffi/"
    touch "$bdir/out/.complete"
  fi
  cp -a "$bdir/out/tvm_ffi" "$DEST/site/"
}

if [[ $ARCH == arm64 ]]; then
  unzip_into "$(aarch64_wheel numpy "$NUMPY_VERSION")" "$DEST/site"
  unzip_into "$(aarch64_wheel apache_tvm_ffi "$TVM_FFI_VERSION")" "$DEST/site"
elif (( BUILD_TVM_FFI )); then
  build_tvm_ffi_armhf
fi

# ------------------------------------------------------------ 3. TVM runtime in DEST/tvm
if [[ $ARCH == arm64 ]]; then
  "$HOST_PY" - "$(aarch64_wheel apache_tvm "$TVM_VERSION")" "$DEST/tvm" <<'EOF'
import os, shutil, sys, zipfile
whl, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for member, name in (("tvm/lib/libtvm_runtime.so", "libtvm_runtime.so"),
                         ("tvm/LICENSE", "LICENSE"), ("tvm/NOTICE", "NOTICE")):
        with z.open(member) as src, open(os.path.join(out, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
EOF
  chmod 755 "$DEST/tvm/libtvm_runtime.so"
  # libtvm_runtime.so NEEDs libtvm_ffi.so (RUNPATH=$ORIGIN): make that tvm_ffi's copy.
  ln -sfn ../site/tvm_ffi/lib/libtvm_ffi.so "$DEST/tvm/libtvm_ffi.so"
fi
# armhf: nothing to put here (see the header of this script).

# ------------------------------------------------------------ 4. wrapper, bytecode, smoke test
cat >"$DEST/run-python" <<EOF
#!/bin/sh
# Run the $ARCH CPython of this sysroot under qemu-user (generated by scripts/sysroot.sh).
D="\$(cd "\$(dirname "\$0")" && pwd)"
QEMU_LD_PREFIX="\$D" PYTHONHOME="\$D/usr" PYTHONPATH="\$D/site\${PYTHONPATH:+:\$PYTHONPATH}" \\
PYTHONNOUSERSITE=1 EDGEFORGE_TVM_RUNTIME_DIR="\$D/tvm" \\
  exec $QEMU "\$D/usr/bin/$PY" "\$@"
EOF
chmod 755 "$DEST/run-python"

# Byte-compile once. The .pyc format depends only on the minor version, so a host 3.11 does it
# in seconds; any other host Python leaves it to the (slower) emulated interpreter.
PYC_DIRS=()
for d in "$DEST/usr/lib/$PY" "$DEST/usr/lib/python3/dist-packages" "$DEST/site"; do
  [[ -d $d ]] && PYC_DIRS+=("$d")
done
if [[ "$("$HOST_PY" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" == True ]]; then
  "$HOST_PY" -m compileall -q -j0 "${PYC_DIRS[@]}" >/dev/null || log "warning: compileall reported errors"
else
  "$DEST/run-python" -m compileall -q "${PYC_DIRS[@]}" >/dev/null || log "warning: compileall reported errors"
fi

SMOKE='import ctypes, json, tarfile, hashlib, bz2, lzma, os, platform, numpy
out = [platform.machine(), "numpy " + numpy.__version__]
try:
    import tvm_ffi
    out.append("tvm_ffi " + tvm_ffi.__version__)
except ImportError as e:
    out.append("no tvm_ffi")
rt = os.path.join(os.environ["EDGEFORGE_TVM_RUNTIME_DIR"], "libtvm_runtime.so")
if os.path.exists(rt):
    ctypes.CDLL(rt, ctypes.RTLD_GLOBAL)
    out.append("libtvm_runtime.so loads")
print(", ".join(out))'
smoke="$("$DEST/run-python" -c "$SMOKE")" || die "smoke test failed: $DEST/run-python -c '...'"
log "smoke test: $smoke"

{
  echo "$STAMP_KEY"
  echo "built $(date -u +%FT%TZ) in ${SECONDS}s from:"
  for f in "${DEB_FILES[@]}"; do echo "  $(basename "$f")"; done
} >"$STAMP"
rm -f "$DEST/.sysroot-partial"
log "done in ${SECONDS}s"
print_usage_hint
