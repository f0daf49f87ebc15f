"""Reading and writing artifact archives (format v1, see ``FORMAT.md``).

An artifact is an uncompressed POSIX tar holding ``manifest.json``, ``manifest.sig`` and the files
the manifest lists, each a regular file with a plain name. :func:`open_artifact` checks the archive
structure, verifies the signature over the manifest, and only then extracts the listed files while
hashing them, so no byte of an unverified library ever reaches ``dlopen``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .exceptions import ArchiveError, DigestMismatchError, ManifestError
from .manifest import FileEntry, Manifest, valid_member_name
from .signature import TrustedKeys, load_signatures

__all__ = ["MANIFEST", "SIGNATURE", "Limits", "VerifiedArtifact", "open_artifact", "write_artifact"]

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied before anything is trusted (python-tuf style bounded defaults)."""

    max_archive_bytes: int = 2 << 30
    max_members: int = 32
    max_manifest_bytes: int = 1 << 20
    max_signature_bytes: int = 64 << 10
    max_member_bytes: int = 2 << 30


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact whose signature and file digests have been checked; files lie in ``directory``."""

    manifest: Manifest
    manifest_bytes: bytes
    signed_by: list[str]
    directory: Path

    @property
    def library_path(self) -> Path:
        return self.directory / self.manifest.library

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path, name: str | None = None) -> FileEntry:
    return FileEntry(path=name or path.name, size=path.stat().st_size, sha256=_sha256_file(path))


def write_artifact(dest: Path, manifest_bytes: bytes, signature_bytes: bytes,
                   files: Mapping[str, Path]) -> Path:
    """Write an artifact archive atomically. Member order and metadata are fixed so the same
    inputs give byte-identical archives."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")

    def info(name: str, size: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime, ti.uid, ti.gid = size, 0o644, 0, 0, 0
        ti.uname = ti.gname = ""
        return ti

    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info(MANIFEST, len(manifest_bytes)), io.BytesIO(manifest_bytes))
        tar.addfile(info(SIGNATURE, len(signature_bytes)), io.BytesIO(signature_bytes))
        for name in sorted(files):
            if not valid_member_name(name) or name in (MANIFEST, SIGNATURE):
                raise ValueError(f"invalid member name {name!r}")
            path = Path(files[name])
            with path.open("rb") as f:
                tar.addfile(info(name, path.stat().st_size), f)
    os.replace(tmp, dest)
    return dest


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise ArchiveError(f"{member.name} is {member.size} bytes, over the limit of {limit}")
    f = tar.extractfile(member)
    if f is None:
        raise ArchiveError(f"{member.name} cannot be read")
    data = f.read(limit + 1)
    if len(data) != member.size:
        raise ArchiveError(f"{member.name} is truncated")
    return data


def _scan(tar: tarfile.TarFile, limits: Limits) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    for count, m in enumerate(tar, start=1):
        if count > limits.max_members:
            raise ArchiveError(f"the archive has more than {limits.max_members} members")
        if m.issym() or m.islnk():
            raise ArchiveError(f"member {m.name!r} is a link; artifacts contain regular files only")
        if not m.isreg():
            raise ArchiveError(f"member {m.name!r} is not a regular file")
        if not valid_member_name(m.name):
            raise ArchiveError(
                f"member name {m.name!r} is not allowed (absolute paths, '..', directories and "
                "unusual characters are refused)"
            )
        if m.name in members:
            raise ArchiveError(f"member {m.name!r} appears twice")
        if m.size > limits.max_member_bytes:
            raise ArchiveError(f"member {m.name!r} is larger than {limits.max_member_bytes} bytes")
        members[m.name] = m
    return members


def read_manifest(source: str | os.PathLike[str] | IO[bytes], limits: Limits = Limits()
                  ) -> tuple[Manifest, bytes, bytes]:
    """Return (manifest, manifest bytes, signature bytes) without verifying anything.

    For inspection only: nothing returned here is trusted."""
    with _open_tar(source, limits) as tar, _tar_errors():
        _, mbytes, sbytes = _read_header(tar, limits)
    return Manifest.from_json(mbytes), mbytes, sbytes


def _read_header(tar: tarfile.TarFile, limits: Limits
                 ) -> tuple[dict[str, tarfile.TarInfo], bytes, bytes]:
    """Scan the members (refusing unsafe ones); return them with the manifest and signature bytes."""
    members = _scan(tar, limits)
    for required in (MANIFEST, SIGNATURE):
        if required not in members:
            raise ArchiveError(f"the archive has no {required}: not an edgeforge artifact")
    mbytes = _read_member(tar, members[MANIFEST], limits.max_manifest_bytes)
    sbytes = _read_member(tar, members[SIGNATURE], limits.max_signature_bytes)
    return members, mbytes, sbytes


@contextlib.contextmanager
def _tar_errors() -> Iterator[None]:
    """A damaged archive surfaces as ``tarfile.TarError`` at any read (the member scan, a member's
    data): report it as :class:`ArchiveError`, never as a foreign exception."""
    try:
        yield
    except tarfile.TarError as e:
        raise ArchiveError(f"corrupt or truncated artifact archive: {e}") from e


def _open_tar(source: str | os.PathLike[str] | IO[bytes], limits: Limits) -> tarfile.TarFile:
    try:
        if isinstance(source, (str, os.PathLike)):
            size = os.path.getsize(source)
            if size > limits.max_archive_bytes:
                raise ArchiveError(f"the artifact is {size} bytes, over {limits.max_archive_bytes}")
            return tarfile.open(source, mode="r:")
        return tarfile.open(fileobj=source, mode="r:")
    except (tarfile.TarError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ArchiveError(f"not an edgeforge artifact (unreadable tar archive): {e}") from e


def open_artifact(source: str | os.PathLike[str], trusted: TrustedKeys,
                  extract_to: str | os.PathLike[str] | None = None,
                  limits: Limits = Limits()) -> VerifiedArtifact:
    """Verify ``source`` and extract its files into a private directory.

    Order: archive structure → signature over the manifest bytes → manifest parse → each listed
    member extracted while hashing → size and sha256 compared. Members not in the manifest are
    refused. On any failure the partial extraction is removed."""
    with _open_tar(source, limits) as tar, _tar_errors():
        members, mbytes, sbytes = _read_header(tar, limits)
        signed_by = trusted.verify(mbytes, load_signatures(sbytes))
        manifest = Manifest.from_json(mbytes)
        listed = {f.path for f in manifest.files}
        extra = set(members) - listed - {MANIFEST, SIGNATURE}
        if extra:
            raise ArchiveError(f"members not listed in the signed manifest: {sorted(extra)}")
        if MANIFEST in listed or SIGNATURE in listed:
            raise ManifestError("the manifest may not list itself or its signature")

        directory = Path(tempfile.mkdtemp(prefix="edgeforge-", dir=extract_to))
        try:
            for entry in manifest.files:
                member = members.get(entry.path)
                if member is None:
                    raise DigestMismatchError(f"{entry.path} is listed in the manifest but missing")
                if member.size != entry.size:
                    raise DigestMismatchError(
                        f"{entry.path}: size {member.size} differs from the signed manifest's "
                        f"{entry.size} (the file was modified, or the manifest belongs to another "
                        "artifact)"
                    )
                src = tar.extractfile(member)
                if src is None:
                    raise ArchiveError(f"{entry.path} cannot be read")
                h = hashlib.sha256()
                dst_path = directory / entry.path
                fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as dst:
                    remaining = entry.size
                    while remaining:
                        chunk = src.read(min(_CHUNK, remaining))
                        if not chunk:
                            raise ArchiveError(f"{entry.path} is truncated")
                        h.update(chunk)
                        dst.write(chunk)
                        remaining -= len(chunk)
                if h.hexdigest() != entry.sha256:
                    raise DigestMismatchError(
                        f"{entry.path}: sha256 {h.hexdigest()[:16]}… differs from the signed "
                        f"manifest's {entry.sha256[:16]}… (the file was modified, or the manifest "
                        "belongs to another artifact)"
                    )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
    return VerifiedArtifact(manifest=manifest, manifest_bytes=mbytes, signed_by=signed_by,
                            directory=directory)
