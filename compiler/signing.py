"""Signers for artifact manifests: a local ECDSA P-256 key file (embedded default) and, in
:mod:`compiler.kms`, AWS KMS. Verification lives in the runtime (``edgeforge_runtime.signature``)."""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeforge_runtime.signature import ALGORITHM, Signature

from .exceptions import PermanentError

__all__ = ["LocalKeySigner", "Signer", "SigningError", "generate_key"]


class SigningError(PermanentError):
    code = "signing"


class Signer(abc.ABC):
    """Signs manifest bytes with ECDSA P-256 / SHA-256."""

    @property
    @abc.abstractmethod
    def public_key_der(self) -> bytes:
        """DER SubjectPublicKeyInfo of the signing key."""

    @abc.abstractmethod
    def _sign(self, message: bytes) -> bytes:
        """DER ECDSA-Sig-Value over sha256(message)."""

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.public_key_der).hexdigest()

    @property
    def public_key_pem(self) -> bytes:
        key = serialization.load_der_public_key(self.public_key_der)
        return key.public_bytes(serialization.Encoding.PEM,
                                serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, message: bytes) -> Signature:
        return Signature(keyid=self.keyid, sig=self._sign(message), alg=ALGORITHM)


class LocalKeySigner(Signer):
    """A PEM private key file on disk (``edgeforge keygen`` writes one)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise SigningError("the signing key must be an ECDSA P-256 (prime256v1) private key")
        self._key = private_key

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LocalKeySigner:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise SigningError(
                f"cannot read signing key {path}: {e.strerror}. Create one with `edgeforge keygen`"
            ) from e
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise SigningError(f"{path} is not an unencrypted PEM private key: {e}") from e
        return cls(key)  # type: ignore[arg-type]

    @property
    def public_key_der(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _sign(self, message: bytes) -> bytes:
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


def generate_key(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str],
                 overwrite: bool = False) -> LocalKeySigner:
    """Create a P-256 key pair: the private key mode 0600, the public key as PEM SPKI."""
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.exists() and not overwrite:
        raise SigningError(f"{private_path} exists; pass --force to replace it")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    signer = LocalKeySigner(key)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(signer.public_key_pem)
    return signer
