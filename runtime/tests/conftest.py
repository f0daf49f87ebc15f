"""Fixtures for the device-runtime tests.

These tests run in an environment WITHOUT the edgeforge compiler: they import only
``edgeforge_runtime``, numpy, pytest and (as a test-only dependency, to make signatures)
``cryptography``. Tests that need a real compiled library use the ``artifacts`` fixture, which

* uses ``$EDGEFORGE_TEST_ARTIFACT_DIR`` when it is set: a directory prepared elsewhere (in a
  development environment: ``python runtime/tests/conftest.py DIR``) holding ``*.efa`` artifacts of
  one tiny model, the signer's public key ``signing-key.pub.pem`` and ``reference.npz`` (the input
  and onnxruntime's output);
* otherwise, where the compiler and TVM are importable (the development venv), compiles a tiny
  Conv+Relu ONNX model for this machine's profile, another architecture's and a CUDA profile
  with the ``edgeforge`` CLI into a temporary directory, once per session;
* otherwise skips those tests, saying why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeforge_runtime import Manifest, read_manifest
from edgeforge_runtime.archive import MANIFEST, SIGNATURE, write_artifact
from edgeforge_runtime.compat import host_arch
from edgeforge_runtime.signature import ALGORITHM, Signature, TrustedKeys, dump_signatures

ARTIFACT_DIR_ENV = "EDGEFORGE_TEST_ARTIFACT_DIR"
PUBLIC_KEY = "signing-key.pub.pem"
REFERENCE = "reference.npz"
#: The profiles compiled by ``build_test_artifacts``: (this machine's, another architecture's, CUDA).
_PROFILES = {"x86_64": ("x86_64", "rpi4", "cuda-sm80"),
             "aarch64": ("aarch64", "x86_64", "jetson-orin")}


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too so the suite also runs from runtime/ (without the root pyproject).
    config.addinivalue_line("markers", "qemu: runs artifacts under qemu-user (needs the sysroot)")
    config.addinivalue_line("markers", "wheel: builds the runtime wheel and installs it in a venv")


# --- a real compiled artifact -----------------------------------------------------------------


@dataclass(frozen=True)
class TestArtifacts:
    """Artifacts of one tiny model: ``host`` runs on this machine's CPU; ``foreign`` is a CPU
    artifact for another architecture; ``cuda`` a CUDA one (either may be missing)."""

    __test__ = False  # not a test class, despite the name

    directory: Path
    public_key: Path
    host: Path
    foreign: Path | None
    cuda: Path | None
    feed: dict[str, np.ndarray]
    expected: list[np.ndarray]


def tiny_onnx() -> bytes:
    """Conv 3x3 (3→4 channels, bias) + Relu on a 1x3x8x8 input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["output"])],
        "tiny_conv_relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_test_artifacts(dest: Path) -> Path:
    """Compile the tiny model with the ``edgeforge`` CLI into ``dest`` (development venv only):
    artifacts, ``signing-key.pub.pem`` and ``reference.npz`` (input and onnxruntime's output)."""
    import onnxruntime as ort

    dest.mkdir(parents=True, exist_ok=True)
    model = dest / "tiny.onnx"
    model.write_bytes(tiny_onnx())
    feed = {"input": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = sess.run(None, feed)
    np.savez(dest / REFERENCE, **{f"in.{k}": v for k, v in feed.items()},
             **{f"out.{i}": v for i, v in enumerate(expected)})
    cli = [sys.executable, "-m", "compiler.cli"]
    key = dest / "signing-key.pem"
    if not key.exists():
        subprocess.run([*cli, "keygen", "--out", str(key)], check=True, capture_output=True)
    profiles = _PROFILES.get(host_arch(), (host_arch(),))
    args = [*cli, "compile", str(model), "--name", "tiny", "--out", str(dest), "--key", str(key),
            "--no-verify", "--quiet", "--json"]
    for p in profiles:
        args += ["-p", p]
    # Exit 1 means some profile failed (e.g. no cross compiler): the tests needing it skip.
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"edgeforge compile failed ({proc.returncode}): {proc.stderr[-2000:]}")
    key.unlink()  # the tests only ever need the public key
    return dest


def load_test_artifacts(directory: Path) -> TestArtifacts:
    host = foreign = cuda = None
    for path in sorted(directory.glob("*.efa")):
        profile = read_manifest(path)[0].profile
        if profile.device == "cuda":
            cuda = cuda or path
        elif profile.arch == host_arch():
            host = host or path
        else:
            foreign = foreign or path
    if host is None:
        raise FileNotFoundError(f"no artifact for this machine ({host_arch()}) in {directory}")
    with np.load(directory / REFERENCE) as ref:
        feed = {k[3:]: ref[k] for k in ref.files if k.startswith("in.")}
        outs = sorted((k for k in ref.files if k.startswith("out.")), key=lambda k: int(k[4:]))
        expected = [ref[k] for k in outs]
    return TestArtifacts(directory=directory, public_key=directory / PUBLIC_KEY, host=host,
                         foreign=foreign, cuda=cuda, feed=feed, expected=expected)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> TestArtifacts:
    given = os.environ.get(ARTIFACT_DIR_ENV)
    if given:
        return load_test_artifacts(Path(given))
    missing = [m for m in ("tvm", "compiler", "onnx", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs a compiled artifact: set {ARTIFACT_DIR_ENV} (prepare it with "
                    f"`python runtime/tests/conftest.py DIR` in the development venv) or install "
                    f"{', '.join(missing)}")
    return load_test_artifacts(build_test_artifacts(tmp_path_factory.mktemp("artifacts")))


# --- signing with a test key (cryptography is a test-only dependency) ------------------------


@dataclass(frozen=True)
class TestKey:
    """A P-256 key pair made for the tests; signs like the compiler's ``LocalKeySigner``."""

    __test__ = False

    private: Any
    spki_der: bytes
    pem: bytes
    pem_path: Path

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def trusted(self) -> TrustedKeys:
        return TrustedKeys.load([self.pem])

    def signature(self, message: bytes) -> Signature:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return Signature(keyid=self.keyid, sig=self.private.sign(message, ec.ECDSA(hashes.SHA256())),
                         alg=ALGORITHM)

    def sign(self, message: bytes) -> bytes:
        """The ``manifest.sig`` bytes for ``message``."""
        return dump_signatures([self.signature(message)])


def _make_key(directory: Path, name: str) -> TestKey:
    pytest.importorskip("cryptography", reason="the tests sign manifests with `cryptography`")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key()
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    path = directory / f"{name}.pub.pem"
    path.write_bytes(pem)
    return TestKey(private=private, spki_der=der, pem=pem, pem_path=path)


@pytest.fixture(scope="session")
def test_key(tmp_path_factory: pytest.TempPathFactory) -> TestKey:
    return _make_key(tmp_path_factory.mktemp("test-key"), "test")


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> TestKey:
    return _make_key(tmp_path_factory.mktemp("other-key"), "other")


# --- synthetic manifests and archives ---------------------------------------------------------


def manifest_dict(files: dict[str, bytes], **overrides: Any) -> dict[str, Any]:
    """A valid format-v1 manifest (as a dict) listing ``files``, for this machine's CPU."""
    d: dict[str, Any] = {
        "format": "edgeforge-artifact",
        "format_version": 1,
        "model": {"name": "m", "version": "1", "source_sha256": "0" * 64, "source_size": 10},
        "profile": {"name": host_arch(), "arch": host_arch(), "device": "cpu",
                    "target": {"kind": "llvm"}, "cuda_arch": None},
        "abi": {"tvm": "0.27.0.post1", "tvm_ffi": "0.1.14.post1"},
        "library": next(iter(files)),
        "entry": "main",
        "inputs": [{"name": "x", "shape": [1, 3], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 3], "dtype": "float32"}],
        "files": [{"path": n, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                  for n, b in files.items()],
        "verification": {"verified": False, "method": "none", "reason": "test"},
        "compile": {},
    }
    d.update(overrides)
    return d


def canonical(d: dict[str, Any]) -> bytes:
    """The manifest bytes the compiler would sign (parsed, then canonically serialised)."""
    return Manifest.from_dict(d).to_json()


def build_tar(members: list[Any]) -> bytes:
    """An uncompressed tar of ``members``: (name, data) pairs, bare TarInfo (links, dirs) or
    (TarInfo, data). No name checks, so tests can build hostile archives."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
                continue
            info, data = m
            if isinstance(info, str):
                info = tarfile.TarInfo(info)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class SignedParts:
    """A synthetic artifact's pieces: signed manifest bytes, signature bytes, file contents."""

    manifest: bytes
    signature: bytes
    files: dict[str, bytes]

    def members(self) -> list[Any]:
        return [(MANIFEST, self.manifest), (SIGNATURE, self.signature), *self.files.items()]


@pytest.fixture
def signed_parts(test_key: TestKey) -> Callable[..., SignedParts]:
    """``signed_parts(files=None, **manifest_overrides)`` → SignedParts signed by ``test_key``."""

    def make(files: dict[str, bytes] | None = None, **overrides: Any) -> SignedParts:
        files = files or {"model.so": b"\x7fELF not really a library " * 40}
        mbytes = canonical(manifest_dict(files, **overrides))
        return SignedParts(manifest=mbytes, signature=test_key.sign(mbytes), files=files)

    return make


def resign(source: Path, dest: Path, key: TestKey,
           change: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Rewrite the artifact ``source`` with its manifest changed by ``change`` and signed by
    ``key`` (the files are copied as they are)."""
    with tarfile.open(source) as tar, tempfile.TemporaryDirectory() as tmp:
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
        files = {}
        for entry in manifest["files"]:
            path = Path(tmp) / entry["path"]
            path.write_bytes(tar.extractfile(entry["path"]).read())  # type: ignore[union-attr]
            files[entry["path"]] = path
        if change is not None:
            change(manifest)
        mbytes = canonical(manifest)
        return write_artifact(dest, mbytes, key.sign(mbytes), files)


@pytest.fixture(scope="session")
def resigned(artifacts: TestArtifacts, test_key: TestKey, tmp_path_factory: pytest.TempPathFactory
             ) -> Path:
    """The host artifact, unchanged but re-signed with ``test_key`` (the control for tests that
    re-sign a changed manifest)."""
    return resign(artifacts.host, tmp_path_factory.mktemp("resigned") / "host.efa", test_key)


def has_cuda_driver() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


# The helpers, as fixtures: test modules never import conftest.


@pytest.fixture(scope="session")
def helpers() -> Helpers:
    return Helpers()


class Helpers:
    """Namespace of the helper functions above, handed to tests by the ``helpers`` fixture."""

    manifest_dict = staticmethod(manifest_dict)
    canonical = staticmethod(canonical)
    build_tar = staticmethod(build_tar)
    resign = staticmethod(resign)
    has_cuda_driver = staticmethod(has_cuda_driver)
    tiny_onnx = staticmethod(tiny_onnx)


if __name__ == "__main__":
    # Prepare an EDGEFORGE_TEST_ARTIFACT_DIR in the development venv, for a runtime-only venv.
    if len(sys.argv) != 2:
        sys.exit("usage: python runtime/tests/conftest.py DIR")
    print(build_test_artifacts(Path(sys.argv[1]).resolve()))
