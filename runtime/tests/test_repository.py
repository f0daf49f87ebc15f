"""The signed index and the pull client, against an in-memory repository."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgeforge_runtime.client import FetcherInterface, RepositoryClient
from edgeforge_runtime.exceptions import (
    DigestMismatchError,
    RepositoryError,
    RollbackError,
    SignatureError,
    UntrustedKeyError,
)
from edgeforge_runtime.repository import ArtifactRef, Index, canonical
from edgeforge_runtime.signature import Signature, TrustedKeys

ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
hashes = pytest.importorskip("cryptography.hazmat.primitives.hashes")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")


class Key:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.keyid = hashlib.sha256(self.der).hexdigest()

    def sign(self, message: bytes) -> Signature:
        return Signature(keyid=self.keyid, sig=self.key.sign(message, ec.ECDSA(hashes.SHA256())))


class MemoryFetcher(FetcherInterface):
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.online = True

    def fetch(self, url: str, max_bytes: int) -> bytes:
        if not self.online:
            raise RepositoryError(f"cannot fetch {url}: offline")
        if url not in self.files:
            raise RepositoryError(f"cannot fetch {url}: 404")
        data = self.files[url]
        if len(data) > max_bytes:
            raise RepositoryError("too large")
        return data


BASE = "http://repo.test/artifacts/"


def _publish(fetcher: MemoryFetcher, key: Key, artifact: bytes, version: int,
             model_version: str = "1", expires_in: timedelta = timedelta(days=1),
             sha: str | None = None) -> None:
    now = datetime.now(timezone.utc)
    path = f"m/{model_version}/x86_64.efa"
    idx = Index(model="m", profile="x86_64", version=version, model_version=model_version,
                artifact=ArtifactRef(path, len(artifact), sha or hashlib.sha256(artifact).hexdigest()),
                published=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                expires=(now + expires_in).strftime("%Y-%m-%dT%H:%M:%SZ"))
    envelope = idx.envelope([key.sign(canonical(idx.signed_dict()))])
    fetcher.files[BASE + "m/x86_64/index.json"] = envelope
    fetcher.files[BASE + path] = artifact


class _Verified:
    """Stands in for open_artifact's result: the archive checks are tested in test_archive."""

    class manifest:
        class profile:
            name = "x86_64"

    def cleanup(self) -> None:
        pass


@pytest.fixture()
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import edgeforge_runtime.client as client_mod

    key = Key()
    fetcher = MemoryFetcher()
    monkeypatch.setattr(client_mod, "open_artifact", lambda path, trusted: _Verified())
    client = RepositoryClient(BASE, TrustedKeys.load([key.der]), "x86_64", tmp_path, fetcher)
    return key, fetcher, client


def test_update_downloads_verifies_and_caches(setup):
    key, fetcher, client = setup
    _publish(fetcher, key, b"artifact-v1", 1)
    path = client.update("m")
    assert path.read_bytes() == b"artifact-v1" and client.trusted_version("m") == 1
    _publish(fetcher, key, b"artifact-v2", 2, model_version="2")
    path2 = client.update("m")
    assert path2.read_bytes() == b"artifact-v2" and not path.exists()


def test_offline_uses_the_cache(setup):
    key, fetcher, client = setup
    _publish(fetcher, key, b"artifact-v1", 1)
    first = client.update("m")
    fetcher.online = False
    assert client.update("m") == first
    with pytest.raises(RepositoryError):
        client.update("m", offline_ok=False)


def test_rollback_is_refused(setup):
    key, fetcher, client = setup
    _publish(fetcher, key, b"v5", 5, model_version="5")
    client.update("m")
    _publish(fetcher, key, b"v3", 3, model_version="3")
    with pytest.raises(RollbackError, match="older than version 5"):
        client.update("m", offline_ok=False)


def test_expired_index_is_refused(setup):
    key, fetcher, client = setup
    _publish(fetcher, key, b"v1", 1, expires_in=timedelta(seconds=-1))
    with pytest.raises(RepositoryError, match="expired"):
        client.update("m")


def test_tampered_index_and_artifact(setup):
    key, fetcher, client = setup
    _publish(fetcher, key, b"v1", 1)
    url = BASE + "m/x86_64/index.json"
    fetcher.files[url] = fetcher.files[url].replace(b'"version":1', b'"version":9')
    with pytest.raises(SignatureError):
        client.update("m")
    _publish(fetcher, key, b"v1", 1, sha="0" * 64)
    with pytest.raises(DigestMismatchError):
        client.update("m")
    _publish(fetcher, Key(), b"v1", 1)
    with pytest.raises(UntrustedKeyError):
        client.update("m")
