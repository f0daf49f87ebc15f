"""Repository index updates: the signed pointer devices follow to the current artifact.

:func:`next_index` is pure: given the index now in the repository (or none), it returns the
index to write, or ``None`` when the repository already points at a newer model version. The
caller writes it with a conditional put (S3 ``IfMatch``/``IfNoneMatch``) and retries on a
conflict, so concurrent publishers never lose an update and the version never goes back.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from edgeforge_runtime.repository import ArtifactRef, Index

from .signing import Signer

__all__ = ["DEFAULT_TTL", "next_index", "signed_index"]

DEFAULT_TTL = timedelta(days=365)


def _model_version_key(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (-1, v)


def next_index(current: bytes | None, *, model: str, profile: str, model_version: str,
               artifact_path: str, size: int, sha256: str, now: datetime | None = None,
               ttl: timedelta = DEFAULT_TTL) -> Index | None:
    now = now or datetime.now(UTC)
    version = 1
    if current is not None:
        signed = json.loads(current.decode("utf-8"))["signed"]
        if signed["artifact"]["sha256"] == sha256:
            return None  # already published (idempotent retry)
        if _model_version_key(str(signed["model_version"])) > _model_version_key(model_version):
            return None  # a newer model version is already current
        version = int(signed["version"]) + 1
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Index(model=model, profile=profile, version=version, model_version=model_version,
                 artifact=ArtifactRef(path=artifact_path, size=size, sha256=sha256),
                 published=stamp, expires=(now + ttl).strftime("%Y-%m-%dT%H:%M:%SZ"))


def signed_index(index: Index, signer: Signer) -> bytes:
    from edgeforge_runtime.repository import canonical

    return index.envelope([signer.sign(canonical(index.signed_dict()))])
