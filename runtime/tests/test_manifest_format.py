"""Manifest format v1: strict parsing, canonical serialisation, and the signature envelope."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from edgeforge_runtime import (
    FORMAT_VERSION,
    Manifest,
    ManifestError,
    SignatureError,
    TrustedKeys,
    UntrustedKeyError,
)
from edgeforge_runtime.signature import load_signatures

FILES = {"model.so": b"library bytes"}


@pytest.fixture
def good(helpers) -> dict[str, Any]:
    return helpers.manifest_dict(FILES)


def _parse(d: Any) -> Manifest:
    return Manifest.from_json(json.dumps(d).encode())


def test_a_valid_manifest_round_trips(good) -> None:
    m = _parse(good)
    assert m.format_version == FORMAT_VERSION == 1
    assert m.library == "model.so" and m.entry == "main"
    assert m.file("model.so").size == len(FILES["model.so"])
    assert Manifest.from_json(m.to_json()) == m
    with pytest.raises(KeyError):
        m.file("other.so")


def test_canonical_bytes_are_sorted_compact_utf8(good) -> None:
    good["model"]["name"] = "modèle"
    data = _parse(good).to_json()
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8")
    assert "modèle".encode() in data and b" " not in data.replace("modèle".encode(), b"")


def test_optional_fields_take_their_defaults(good) -> None:
    del good["entry"], good["compile"], good["profile"]["cuda_arch"]
    m = _parse(good)
    assert (m.entry, m.compile, m.profile.cuda_arch) == ("main", {}, None)


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe{}", b"[]", b"null", b'"manifest"', b"1"])
def test_not_a_json_object(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(data)


@pytest.mark.parametrize("fmt", [None, "edgeforge", "EDGEFORGE-ARTIFACT", 1])
def test_wrong_format_name(good, fmt) -> None:
    good["format"] = fmt
    with pytest.raises(ManifestError, match="not an edgeforge manifest"):
        _parse(good)


@pytest.mark.parametrize("version", [0, 2, "1", True, 1.0, None])
def test_other_format_versions_are_refused(good, version) -> None:
    good["format_version"] = version
    with pytest.raises(ManifestError, match="format version"):
        _parse(good)


def test_unknown_top_level_fields_are_refused(good) -> None:
    good["signature"] = "inline"
    with pytest.raises(ManifestError, match="unknown fields"):
        _parse(good)


@pytest.mark.parametrize("field", ["model", "profile", "abi", "library", "inputs", "outputs",
                                   "files", "verification"])
def test_required_fields(good, field: str) -> None:
    del good[field]
    with pytest.raises(ManifestError, match="missing field"):
        _parse(good)


@pytest.mark.parametrize("path", [("model", "name"), ("model", "version"),
                                  ("model", "source_sha256"), ("model", "source_size"),
                                  ("profile", "name"), ("profile", "arch"), ("profile", "device"),
                                  ("profile", "target"), ("verification", "verified"),
                                  ("verification", "method")])
def test_required_nested_fields(good, path: tuple[str, str]) -> None:
    del good[path[0]][path[1]]
    with pytest.raises(ManifestError, match="missing field"):
        _parse(good)


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d[k]
    if isinstance(d, list):
        d[int(keys[-1])] = value
    else:
        d[keys[-1]] = value


BAD_VALUES = [
    ("files.0.size", True), ("files.0.size", -1), ("files.0.size", 1.5), ("files.0.size", "13"),
    ("files.0.sha256", "A" * 64), ("files.0.sha256", "0" * 63), ("files.0.sha256", None),
    ("files.0.path", "../model.so"), ("files.0.path", "/abs.so"), ("files.0.path", "dir/model.so"),
    ("files.0.path", ".hidden"), ("files.0.path", ""), ("files.0.path", "a" * 129),
    ("files.0.path", "mödel.so"), ("files.0.path", "model.so\n"), ("files.0.sha256", "0" * 64 + "\n"),
    ("files", {}), ("files", ["model.so"]),
    ("inputs.0.shape", [1, -3]), ("inputs.0.shape", [1, True]), ("inputs.0.shape", [1, 3.0]),
    ("inputs.0.shape", "1,3"), ("inputs.0.dtype", "float128"), ("inputs.0.dtype", "object"),
    ("inputs.0.name", 7), ("outputs", {"y": [1, 3]}), ("outputs.0", ["y", [1, 3], "float32"]),
    ("profile.device", "tpu"), ("profile.device", "CUDA"), ("profile.cuda_arch", 80),
    ("profile.target", "llvm -mcpu=cortex-a72"), ("profile", []),
    ("model.source_size", "10"), ("model.source_size", False), ("model", "m"),
    ("verification.method", "emulated"), ("verification.verified", "yes"),
    ("verification", None), ("verification.within_reference_noise", "yes"),
    ("verification.within_reference_noise", None), ("abi", {"tvm": 27}), ("abi", ["0.27.0.post1"]),
    ("library", "other.so"), ("library", None), ("entry", ""), ("entry", 0),
    ("compile", "fast"), ("compile", []),
]


@pytest.mark.parametrize(("path", "value"), BAD_VALUES, ids=[f"{p}={v!r}" for p, v in BAD_VALUES])
def test_malformed_values_are_refused(good, path: str, value: Any) -> None:
    _set(good, path, value)
    with pytest.raises(ManifestError):
        _parse(good)


def test_duplicate_file_entries_are_refused(good) -> None:
    good["files"].append(copy.deepcopy(good["files"][0]))
    with pytest.raises(ManifestError, match="duplicate"):
        _parse(good)


def test_all_supported_dtypes(good) -> None:
    for dtype in ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64",
                  "uint8", "uint16", "uint32", "uint64", "bool"):
        good["inputs"][0]["dtype"] = dtype
        assert _parse(good).inputs[0].dtype == dtype


def test_verification_within_reference_noise(good) -> None:
    """Written before the field existed: false; a pass within onnxruntime's own noise keeps its
    record through the canonical bytes."""
    good["verification"].pop("within_reference_noise", None)
    v = _parse(good).verification
    assert v.within_reference_noise is False and v.reference_noise is None
    good["verification"].update(
        verified=True, method="native", max_rel_error=5.5e-3, tolerance=1e-3,
        within_reference_noise=True,
        reference_noise={"runs": 8, "max_rel_error": 8.4e-2, "fraction_beyond_tolerance": 0.82,
                         "ours_fraction_beyond_tolerance": 0.014, "dominating_run": {"run": 0}})
    m = _parse(good)
    assert m.verification.within_reference_noise and m.verification.reference_noise["runs"] == 8
    assert Manifest.from_json(m.to_json()) == m


def test_nan_cannot_be_serialised(good) -> None:
    good["verification"]["max_abs_error"] = float("nan")
    with pytest.raises(ValueError):
        Manifest.from_dict(good).to_json()


# --- the signature envelope (manifest.sig) -------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"", b"{}", b"[]", b'{"signatures": []}', b'{"signatures": {}}', b'{"signatures": [1]}',
    b'{"signatures": [{"keyid": "a", "alg": "ecdsa-p256-sha256"}]}',
    b'{"signatures": [{"keyid": "a", "alg": "ecdsa-p256-sha256", "sig": "!!"}]}',
    b"\xff",
    json.dumps({"signatures": [{"keyid": "a", "alg": "x", "sig": "AA=="}] * 17}).encode(),
])
def test_malformed_signature_files(data: bytes) -> None:
    with pytest.raises(SignatureError, match="malformed"):
        load_signatures(data)


def test_signature_envelope_round_trip(test_key) -> None:
    data = test_key.sign(b"m")
    [loaded] = load_signatures(data)
    assert loaded.keyid == test_key.keyid and loaded.alg == "ecdsa-p256-sha256"
    assert test_key.trusted.verify(b"m", [loaded]) == [test_key.keyid]
    raw = json.loads(data)
    assert set(raw["signatures"][0]) == {"keyid", "alg", "sig"}
    assert base64.b64decode(raw["signatures"][0]["sig"])[0] == 0x30  # DER SEQUENCE


def test_unsupported_algorithm_from_a_trusted_key(test_key) -> None:
    sig = test_key.signature(b"m")
    bad = type(sig)(keyid=sig.keyid, sig=sig.sig, alg="ed25519")
    with pytest.raises(SignatureError, match="unsupported signature algorithm"):
        test_key.trusted.verify(b"m", [bad])


def test_threshold_counts_distinct_trusted_keys(test_key, other_key) -> None:
    both = TrustedKeys.load([test_key.pem_path, other_key.pem_path], threshold=2)
    one = test_key.signature(b"m")
    with pytest.raises(SignatureError, match="1 valid of 2"):
        both.verify(b"m", [one, one])  # the same key twice counts once
    assert both.verify(b"m", [one, other_key.signature(b"m")]) == sorted(
        [test_key.keyid, other_key.keyid])


def test_trusted_keys_arguments(test_key, tmp_path) -> None:
    assert TrustedKeys.load([test_key.pem_path]).keyids == [test_key.keyid]
    assert TrustedKeys.load([test_key.pem.decode()]).keyids == [test_key.keyid]
    assert TrustedKeys.load([test_key.spki_der]).keyids == [test_key.keyid]
    with pytest.raises(ValueError, match="at least one"):
        TrustedKeys.load([])
    with pytest.raises(ValueError, match="threshold"):
        TrustedKeys.load([test_key.pem], threshold=2)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="unusable"):
        TrustedKeys.load([bad])
    with pytest.raises(FileNotFoundError):
        TrustedKeys.load([tmp_path / "missing.pem"])


def test_untrusted_only_when_no_signature_claims_a_trusted_key(test_key, other_key) -> None:
    trusted = test_key.trusted
    with pytest.raises(UntrustedKeyError):
        trusted.verify(b"m", [other_key.signature(b"m")])
    # a trusted key's signature over other bytes, next to an untrusted one: tampering, not trust
    with pytest.raises(SignatureError, match="invalid") as info:
        trusted.verify(b"m", [test_key.signature(b"other"), other_key.signature(b"m")])
    assert type(info.value) is SignatureError
    assert trusted.verify(b"m", [other_key.signature(b"m"), test_key.signature(b"m")]) == [
        test_key.keyid]
