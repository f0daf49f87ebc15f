"""Archive safety: hostile tars are refused, each with its specific error, before anything is
written outside the private extraction directory. No TVM needed: nothing here is loaded."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from edgeforge_runtime import (
    ArchiveError,
    DigestMismatchError,
    Limits,
    ManifestError,
    SignatureError,
    UntrustedKeyError,
    open_artifact,
    read_manifest,
)
from edgeforge_runtime.archive import MANIFEST, SIGNATURE, write_artifact


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The extraction parent: must stay empty whenever an artifact is refused."""
    d = tmp_path / "extract"
    d.mkdir()
    return d


def _write(tmp_path: Path, data: bytes, name: str = "a.efa") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refused(path: Path, trusted, out: Path, error: type[Exception], match: str,
             limits: Limits = Limits()) -> None:
    with pytest.raises(error, match=match) as info:
        open_artifact(path, trusted, extract_to=out, limits=limits)
    assert type(info.value) is error, f"expected exactly {error.__name__}, got {info.value!r}"
    assert list(out.iterdir()) == [], "a refused artifact left files behind"


def _info(name: str, kind: bytes, **attrs) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    for k, v in attrs.items():
        setattr(ti, k, v)
    return ti


# --- the well-formed baseline ---------------------------------------------------------------------


def test_a_well_formed_artifact_opens(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar(parts.members()))
    art = open_artifact(path, test_key.trusted, extract_to=out)
    try:
        assert art.signed_by == [test_key.keyid]
        assert art.library_path.read_bytes() == parts.files["model.so"]
        assert art.library_path.parent.parent == out
        assert stat.S_IMODE(art.library_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(art.directory.stat().st_mode) == 0o700
        assert art.manifest_bytes == parts.manifest
    finally:
        art.cleanup()
    assert list(out.iterdir()) == []


def test_write_artifact_is_deterministic(signed_parts, tmp_path) -> None:
    parts = signed_parts()
    lib = _write(tmp_path, parts.files["model.so"], "model.so")
    a = write_artifact(tmp_path / "a.efa", parts.manifest, parts.signature, {"model.so": lib})
    b = write_artifact(tmp_path / "b.efa", parts.manifest, parts.signature, {"model.so": lib})
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [MANIFEST, SIGNATURE, "model.so"]
    assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 and m.isreg() for m in members)
    with pytest.raises(ValueError, match="invalid member name"):
        write_artifact(tmp_path / "c.efa", parts.manifest, parts.signature, {"../x": lib})


def test_read_manifest_reads_without_trusting(signed_parts, tmp_path) -> None:
    parts = signed_parts()
    data = _tar(parts.members())
    for source in (_write(tmp_path, data), io.BytesIO(data)):
        manifest, mbytes, sbytes = read_manifest(source)
        assert (mbytes, sbytes) == (parts.manifest, parts.signature)
        assert manifest.library == "model.so"


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
                continue
            info, data = m
            info = tarfile.TarInfo(info) if isinstance(info, str) else info
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- hostile archives -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "../../etc/cron.d/x", "/etc/passwd", "/tmp/model.so",
                                  "sub/model.so", "./model.so", ".hidden", "a\\b", "model.so\n",
                                  "x" * 200])
def test_member_names_outside_the_rules(signed_parts, test_key, tmp_path, out, name) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar([*parts.members(), (name, b"evil")]))
    _refused(path, test_key.trusted, out, ArchiveError, "is not allowed")
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_a_pax_header_cannot_smuggle_a_path(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    evil = tarfile.TarInfo("innocent.so")
    evil.pax_headers = {"path": "../evil.so"}
    path = _write(tmp_path, _tar([*parts.members(), (evil, b"evil")]))
    _refused(path, test_key.trusted, out, ArchiveError, "is not allowed")


def test_symlink_member(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    link = _info("model.so", tarfile.SYMTYPE, linkname="/etc/passwd")
    path = _write(tmp_path, _tar([(MANIFEST, parts.manifest), (SIGNATURE, parts.signature), link]))
    _refused(path, test_key.trusted, out, ArchiveError, "is a link")


def test_hardlink_member(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    link = _info("model.so", tarfile.LNKTYPE, linkname=MANIFEST)
    path = _write(tmp_path, _tar([(MANIFEST, parts.manifest), (SIGNATURE, parts.signature), link]))
    _refused(path, test_key.trusted, out, ArchiveError, "is a link")


@pytest.mark.parametrize("kind", [tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE,
                                  tarfile.BLKTYPE], ids=["dir", "fifo", "chardev", "blockdev"])
def test_special_members(signed_parts, test_key, tmp_path, out, kind) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar([*parts.members(), _info("thing", kind)]))
    _refused(path, test_key.trusted, out, ArchiveError, "not a regular file")


def test_duplicate_member(signed_parts, test_key, tmp_path, out) -> None:
    """tar keeps the last copy of a name: a second model.so could replace the verified one."""
    parts = signed_parts()
    path = _write(tmp_path, _tar([*parts.members(), ("model.so", b"replacement")]))
    _refused(path, test_key.trusted, out, ArchiveError, "appears twice")


def test_duplicate_manifest(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar([*parts.members(), (MANIFEST, b"{}")]))
    _refused(path, test_key.trusted, out, ArchiveError, "appears twice")


def test_extra_member_not_in_the_manifest(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar([*parts.members(), ("libextra.so", b"preloaded?")]))
    _refused(path, test_key.trusted, out, ArchiveError, "not listed in the signed manifest")


def test_listed_member_missing(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar([(MANIFEST, parts.manifest), (SIGNATURE, parts.signature)]))
    _refused(path, test_key.trusted, out, DigestMismatchError, "missing")


def test_manifest_listing_itself(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts(files={"model.so": b"lib", MANIFEST: b"{}"})
    members = [(MANIFEST, parts.manifest), (SIGNATURE, parts.signature),
               ("model.so", parts.files["model.so"])]
    path = _write(tmp_path, _tar(members))
    _refused(path, test_key.trusted, out, ManifestError, "may not list itself")


@pytest.mark.parametrize("missing", [MANIFEST, SIGNATURE])
def test_required_members(signed_parts, test_key, tmp_path, out, missing) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar([m for m in parts.members() if m[0] != missing]))
    _refused(path, test_key.trusted, out, ArchiveError, f"has no {missing}")


def test_too_many_members(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    extra = [(f"f{i}.bin", b"x") for i in range(40)]
    path = _write(tmp_path, _tar([*parts.members(), *extra]))
    _refused(path, test_key.trusted, out, ArchiveError, "more than 32 members")


def test_oversized_member(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts(files={"model.so": b"\0" * 5000})
    path = _write(tmp_path, _tar(parts.members()))
    _refused(path, test_key.trusted, out, ArchiveError, "larger than 4096 bytes",
             Limits(max_member_bytes=4096))


def test_oversized_manifest(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar(parts.members()))
    _refused(path, test_key.trusted, out, ArchiveError, "over the limit of 100",
             Limits(max_manifest_bytes=100))


def test_oversized_signature_file(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar(parts.members()))
    _refused(path, test_key.trusted, out, ArchiveError, "over the limit of 50",
             Limits(max_signature_bytes=50))


def test_oversized_archive(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    path = _write(tmp_path, _tar(parts.members()))
    _refused(path, test_key.trusted, out, ArchiveError, "over 1000",
             Limits(max_archive_bytes=1000))


def test_member_size_differs_from_the_manifest(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    members = [(MANIFEST, parts.manifest), (SIGNATURE, parts.signature),
               ("model.so", parts.files["model.so"] + b"!")]
    path = _write(tmp_path, _tar(members))
    _refused(path, test_key.trusted, out, DigestMismatchError, "size")


def test_manifest_and_signature_of_another_artifact(signed_parts, test_key, tmp_path, out) -> None:
    """A validly signed manifest paired with another artifact's library of the same size."""
    a = signed_parts(files={"model.so": b"A" * 1000})
    b = signed_parts(files={"model.so": b"B" * 1000})
    path = _write(tmp_path, _tar([(MANIFEST, a.manifest), (SIGNATURE, a.signature),
                                  ("model.so", b.files["model.so"])]))
    _refused(path, test_key.trusted, out, DigestMismatchError, "sha256")


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.8, 0.95])
def test_truncated_archive(signed_parts, test_key, tmp_path, out, fraction) -> None:
    parts = signed_parts(files={"model.so": os.urandom(20000)})
    data = _tar(parts.members())
    # cut inside the data: the archive's last member ends about 1 KiB before the tar trailer
    path = _write(tmp_path, data[: int((len(data) - 10240) * fraction)])
    _refused(path, test_key.trusted, out, ArchiveError, "truncated|unexpected end|not an edgeforge")
    with pytest.raises(ArchiveError):
        read_manifest(path)


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100, b"\0" * 10240,
                                  b"\x7fELF" + os.urandom(4000)],
                         ids=["empty", "text", "zeros", "elf"])
def test_not_a_tar(test_key, tmp_path, out, data) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ArchiveError):
        open_artifact(path, test_key.trusted, extract_to=out)
    with pytest.raises(ArchiveError):
        read_manifest(path)
    assert list(out.iterdir()) == []


def test_a_compressed_tar_is_not_an_artifact(signed_parts, test_key, tmp_path, out) -> None:
    path = _write(tmp_path, gzip.compress(_tar(signed_parts().members())))
    _refused(path, test_key.trusted, out, ArchiveError, "not an edgeforge artifact")


def test_a_directory_is_not_an_artifact(test_key, tmp_path, out) -> None:
    with pytest.raises(ArchiveError):
        open_artifact(tmp_path, test_key.trusted, extract_to=out)


def test_a_missing_file_raises_file_not_found(test_key, tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        open_artifact(tmp_path / "nope.efa", test_key.trusted)


# --- signatures at the archive level ----------------------------------------------------------------


def test_signed_by_another_key(signed_parts, other_key, tmp_path, out) -> None:
    path = _write(tmp_path, _tar(signed_parts().members()))
    _refused(path, other_key.trusted, out, UntrustedKeyError, "none of them is trusted")


def test_modified_manifest_bytes(signed_parts, test_key, tmp_path, out) -> None:
    parts = signed_parts()
    changed = parts.manifest.replace(b'"version":"1"', b'"version":"2"')
    assert changed != parts.manifest
    path = _write(tmp_path, _tar([(MANIFEST, changed), (SIGNATURE, parts.signature),
                                  *parts.files.items()]))
    _refused(path, test_key.trusted, out, SignatureError, "invalid")


def test_signature_checked_before_the_manifest_is_parsed(test_key, tmp_path, out) -> None:
    """An unsigned, malformed manifest must fail on the signature, not in the JSON parser."""
    path = _write(tmp_path, _tar([(MANIFEST, b"{not json"), (SIGNATURE, test_key.sign(b"other")),
                                  ("model.so", b"x")]))
    _refused(path, test_key.trusted, out, SignatureError, "invalid")


def test_a_signed_but_malformed_manifest(test_key, tmp_path, out) -> None:
    bad = b'{"format": "edgeforge-artifact", "format_version": 2}'
    path = _write(tmp_path, _tar([(MANIFEST, bad), (SIGNATURE, test_key.sign(bad))]))
    _refused(path, test_key.trusted, out, ManifestError, "format version")
