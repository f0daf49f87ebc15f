"""Sign artifact manifests with an AWS KMS asymmetric key (ECC_NIST_P256, SIGN_VERIFY).

The private key never leaves KMS. Devices trust the DER SubjectPublicKeyInfo that
``GetPublicKey`` returns (``edgeforge_runtime.TrustedKeys`` accepts those bytes as they are), and
the signature KMS returns for ``ECDSA_SHA_256`` is the DER ECDSA-Sig-Value the runtime verifies.

KMS signs at most 4096 bytes with ``MessageType=RAW``. Larger manifests are hashed here and sent
as ``MessageType=DIGEST`` (the 32-byte SHA-256), which yields the same signature over the same
manifest bytes. (moto ignores ``MessageType`` and hashes a DIGEST again; the functional tests
correct that explicitly.)

::

    KmsUnavailableError (TransientError)  throttling, KMS internal errors, key disabled or
                                          pending deletion, access denied: retry later
    SigningError (PermanentError)         the key cannot sign ECDSA P-256 / SHA-256
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from .exceptions import TransientError
from .signing import Signer, SigningError

if TYPE_CHECKING:  # pragma: no cover
    from mypy_boto3_kms import KMSClient

__all__ = ["RAW_MESSAGE_LIMIT", "KmsSigner", "KmsUnavailableError"]

#: The largest message KMS signs with MessageType RAW.
RAW_MESSAGE_LIMIT = 4096
_ALGORITHM = "ECDSA_SHA_256"
_KEY_SPEC = "ECC_NIST_P256"
#: Errors that say "the key is not usable as configured" rather than "try again".
_PERMANENT = {"InvalidKeyUsageException", "UnsupportedOperationException",
              "ValidationException"}


class KmsUnavailableError(TransientError):
    """KMS could not sign now (throttled, unavailable, key disabled, access denied)."""

    code = "kms_unavailable"


class KmsSigner(Signer):
    """A :class:`~compiler.signing.Signer` backed by a KMS key (id, ARN or alias)."""

    def __init__(self, client: KMSClient, key_id: str) -> None:
        self._kms = client
        self.key_id = key_id
        self._public_der: bytes | None = None
        self._lock = threading.Lock()

    def _call(self, what: str, **kwargs: object) -> dict[str, object]:
        try:
            return getattr(self._kms, what)(**kwargs)  # type: ignore[no-any-return]
        except ClientError as e:
            error = e.response.get("Error", {})
            code = str(error.get("Code", ""))
            msg = f"KMS {what} with key {self.key_id}: {code} {error.get('Message', '')}"
            if code in _PERMANENT:
                raise SigningError(msg.strip()) from e
            raise KmsUnavailableError(msg.strip()) from e
        except BotoCoreError as e:
            raise KmsUnavailableError(f"KMS {what} with key {self.key_id}: {e}") from e

    @property
    def public_key_der(self) -> bytes:
        """DER SubjectPublicKeyInfo from ``GetPublicKey`` (fetched once, then cached)."""
        with self._lock:
            if self._public_der is None:
                resp = self._call("get_public_key", KeyId=self.key_id)
                spec = resp.get("KeySpec") or resp.get("CustomerMasterKeySpec")
                usage = resp.get("KeyUsage")
                algorithms = resp.get("SigningAlgorithms") or []
                if spec != _KEY_SPEC or usage != "SIGN_VERIFY" or _ALGORITHM not in algorithms:  # type: ignore[operator]
                    raise SigningError(
                        f"KMS key {self.key_id} is {spec}/{usage}; artifacts need an "
                        f"{_KEY_SPEC} key with KeyUsage SIGN_VERIFY ({_ALGORITHM})"
                    )
                self._public_der = bytes(resp["PublicKey"])  # type: ignore[arg-type]
            return self._public_der

    def _sign(self, message: bytes) -> bytes:
        if len(message) <= RAW_MESSAGE_LIMIT:
            payload, message_type = message, "RAW"
        else:
            payload, message_type = hashlib.sha256(message).digest(), "DIGEST"
        resp = self._call("sign", KeyId=self.key_id, Message=payload, MessageType=message_type,
                          SigningAlgorithm=_ALGORITHM)
        return bytes(resp["Signature"])  # type: ignore[arg-type]
