"""Tampering with a real compiled artifact: every change is refused with its specific error,
before the library is loaded, and nothing is left in the extraction directory."""

from __future__ import annotations

import base64
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from edgeforge_runtime import (
    AbiMismatchError,
    ArtifactError,
    DigestMismatchError,
    InferenceSession,
    ProfileMismatchError,
    SessionOptions,
    SignatureError,
    TrustedKeys,
    UntrustedKeyError,
    check_compatible,
    open_artifact,
    read_manifest,
)
from edgeforge_runtime.archive import MANIFEST, SIGNATURE


def _offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar}


def _flip(src: Path, dest: Path, member: str, at: float = 0.5) -> Path:
    """Copy ``src`` to ``dest`` with one bit flipped inside ``member``'s data."""
    data = bytearray(src.read_bytes())
    start, size = _offsets(src)[member]
    data[start + int(size * at)] ^= 0x01
    dest.write_bytes(bytes(data))
    return dest


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def _tar(dest: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def _refused(path: Path, keys, error: type[Exception], tmp_path: Path, match: str = "",
             exact: bool = True, **kwargs) -> ArtifactError:
    """InferenceSession refuses it with ``error`` (exactly that class unless ``exact=False``)."""
    out = tmp_path / "extract"
    out.mkdir(exist_ok=True)
    with pytest.raises(error, match=match or None) as info:
        InferenceSession(path, keys, SessionOptions(extract_dir=str(out)), **kwargs)
    assert not exact or type(info.value) is error, repr(info.value)
    assert list(out.iterdir()) == [], "a refused artifact left files behind"
    return info.value


def test_the_untouched_artifact_loads(artifacts) -> None:
    sess = InferenceSession(artifacts.host, [artifacts.public_key])
    assert sess.signed_by == TrustedKeys.load([artifacts.public_key]).keyids


def test_flipped_byte_in_the_library(artifacts, tmp_path) -> None:
    for at in (0.0, 0.5, 0.999):
        bad = _flip(artifacts.host, tmp_path / f"lib-{at}.efa", "model.so", at)
        _refused(bad, [artifacts.public_key], DigestMismatchError, tmp_path, "sha256")


def test_flipped_byte_in_the_manifest(artifacts, tmp_path) -> None:
    for at in (0.0, 0.3, 0.99):
        bad = _flip(artifacts.host, tmp_path / f"manifest-{at}.efa", MANIFEST, at)
        _refused(bad, [artifacts.public_key], SignatureError, tmp_path)


def test_flipped_byte_in_the_signature_file(artifacts, tmp_path) -> None:
    """A raw flip in manifest.sig: depending on where it lands, malformed JSON or base64, an
    unknown algorithm, a wrong signature, or a key id nobody trusts (UntrustedKeyError, a
    SignatureError): always a SignatureError."""
    for at in (0.05, 0.1, 0.3, 0.5, 0.7, 0.9):
        bad = _flip(artifacts.host, tmp_path / f"sig-{at}.efa", SIGNATURE, at)
        _refused(bad, [artifacts.public_key], SignatureError, tmp_path, exact=False)


def test_flipped_bit_in_the_signature_value(artifacts, tmp_path) -> None:
    """A well-formed envelope whose DER signature has one bit changed."""
    members = _members(artifacts.host)
    env = json.loads(members[SIGNATURE])
    der = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    der[-5] ^= 0x10
    env["signatures"][0]["sig"] = base64.b64encode(bytes(der)).decode()
    members[SIGNATURE] = json.dumps(env).encode()
    bad = _tar(tmp_path / "sigvalue.efa", members)
    _refused(bad, [artifacts.public_key], SignatureError, tmp_path, "invalid")


def test_manifest_and_signature_from_another_artifact(artifacts, tmp_path) -> None:
    other = artifacts.foreign or artifacts.cuda
    if other is None:
        pytest.skip("needs a second artifact of the same model (foreign or CUDA profile)")
    host, donor = _members(artifacts.host), _members(other)
    members = {MANIFEST: donor[MANIFEST], SIGNATURE: donor[SIGNATURE], "model.so": host["model.so"]}
    bad = _tar(tmp_path / "swapped.efa", members)
    out = tmp_path / "x"
    out.mkdir()
    with pytest.raises(DigestMismatchError, match="another artifact"):
        open_artifact(bad, TrustedKeys.load([artifacts.public_key]), extract_to=out)
    assert list(out.iterdir()) == []


def test_an_untrusted_key(artifacts, other_key, tmp_path) -> None:
    err = _refused(artifacts.host, [other_key.pem_path], UntrustedKeyError, tmp_path)
    assert "none of them is trusted" in str(err)


def test_a_threshold_the_artifact_does_not_meet(artifacts, other_key, tmp_path) -> None:
    keys = TrustedKeys.load([artifacts.public_key, other_key.pem_path], threshold=2)
    _refused(artifacts.host, keys, SignatureError, tmp_path, "1 valid of 2")


def test_another_profile_is_refused(artifacts, tmp_path) -> None:
    profile = read_manifest(artifacts.host)[0].profile.name
    err = _refused(artifacts.host, [artifacts.public_key], ProfileMismatchError, tmp_path,
                   expected_profile="rpi5")
    assert profile in str(err) and "rpi5" in str(err)
    InferenceSession(artifacts.host, [artifacts.public_key], expected_profile=profile)


def test_another_architecture_is_refused(artifacts, tmp_path) -> None:
    manifest = read_manifest(artifacts.host)[0]
    other = "aarch64" if manifest.profile.arch != "aarch64" else "x86_64"
    with pytest.raises(ProfileMismatchError, match=f"this machine is {other}"):
        check_compatible(manifest, arch=other)
    check_compatible(manifest, arch=manifest.profile.arch.upper())  # spelling is normalised
    if artifacts.foreign is None:
        pytest.skip("no artifact for another architecture was built (cross compiler missing?)")
    err = _refused(artifacts.foreign, [artifacts.public_key], ProfileMismatchError, tmp_path)
    assert "but this machine is" in str(err)


@pytest.mark.parametrize(("key", "value"), [("tvm", "0.26.0"), ("tvm_ffi", "0.1.15"),
                                            ("tvm", None)])
def test_a_runtime_abi_mismatch(artifacts, helpers, test_key, tmp_path, resigned, key, value
                                ) -> None:
    def change(m: dict) -> None:
        if value is None:
            del m["abi"][key]
        else:
            m["abi"][key] = value

    bad = helpers.resign(artifacts.host, tmp_path / "abi.efa", test_key, change)
    err = _refused(bad, [test_key.pem_path], AbiMismatchError, tmp_path)
    assert key in str(err) and "recompile" in str(err)
    # the control: the same re-signing without the change loads
    InferenceSession(resigned, [test_key.pem_path])


def test_a_library_swapped_for_another_of_the_same_size(artifacts, tmp_path) -> None:
    members = _members(artifacts.host)
    lib = bytearray(members["model.so"])
    lib[len(lib) // 3 : len(lib) // 3 + 16] = b"\x90" * 16
    members["model.so"] = bytes(lib)
    bad = _tar(tmp_path / "samesize.efa", members)
    _refused(bad, [artifacts.public_key], DigestMismatchError, tmp_path, "sha256")


def test_tampered_copy_does_not_affect_the_original(artifacts, tmp_path) -> None:
    copy = tmp_path / "copy.efa"
    shutil.copy(artifacts.host, copy)
    _flip(copy, tmp_path / "flipped.efa", "model.so")
    InferenceSession(copy, [artifacts.public_key])


def test_code_for_a_cpu_this_machine_lacks_is_refused(artifacts, tmp_path) -> None:
    """An x86_64-avx512 artifact on a CPU without AVX-512 would die of SIGILL mid-inference:
    refused up front, naming the missing extensions. Checked against given CPU flags (this
    machine's own may or may not have them) and against a /proc/cpuinfo-style file."""
    import dataclasses

    from edgeforge_runtime.compat import host_cpu_features, required_cpu_features

    manifest = read_manifest(artifacts.host)[0]
    if manifest.profile.arch != "x86_64":
        pytest.skip("the host artifact is not x86_64")
    target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    assert required_cpu_features({**target, "mcpu": "x86-64-v2"}) == ["sse4_2", "ssse3", "popcnt"]
    avx2 = required_cpu_features({**target, "mcpu": "haswell"})
    assert {"avx2", "fma"} <= set(avx2)
    assert required_cpu_features({**target, "mcpu": "x86-64-v2", "mattr": ["+avx2"]})[-1] == "avx2"
    assert required_cpu_features({"kind": "cuda", "host": {**target, "mcpu": "haswell"}}) == avx2
    assert required_cpu_features({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                  "mcpu": "cortex-a72"}) == []  # not known: not checked

    def built_for(mcpu: str):
        profile = dataclasses.replace(manifest.profile, name=f"x86_64-{mcpu}",
                                      target={**target, "mcpu": mcpu})
        return dataclasses.replace(manifest, profile=profile)

    zen3 = set(avx2) | {"sse2", "sha_ni"}
    check_compatible(built_for("haswell"), cpu_features=zen3)
    with pytest.raises(ProfileMismatchError, match="avx512f, avx512cd, avx512bw") as err:
        check_compatible(built_for("skylake-avx512"), cpu_features=zen3)
    assert "illegal instruction" in str(err.value) and "x86_64-skylake-avx512" in str(err.value)
    with pytest.raises(ProfileMismatchError, match="lacks: avx, avx2, fma"):
        check_compatible(built_for("haswell"), cpu_features={"sse4_2", "ssse3", "popcnt"})
    check_compatible(manifest)  # the host artifact, against this machine's own flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2\nbugs\t\t: none\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse4_2 avx2\n")
    assert host_cpu_features(str(cpuinfo)) == {"fpu", "sse4_2", "avx2"}
    assert host_cpu_features(str(tmp_path / "absent")) is None
