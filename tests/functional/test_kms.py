"""KmsSigner against moto's KMS (with the DIGEST correction of aws_stack.fix_moto_kms): the
device runtime verifies its signatures with the DER public key, for small and large manifests."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aws_stack import REGION, fix_moto_kms
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from compiler.kms import RAW_MESSAGE_LIMIT, KmsSigner, KmsUnavailableError
from compiler.signing import SigningError
from edgeforge_runtime import SignatureError, TrustedKeys
from edgeforge_runtime.signature import dump_signatures, load_signatures

moto = pytest.importorskip("moto")


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for var, value in {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(var, value)
    with moto.mock_aws():
        fix_moto_kms(monkeypatch)
        yield boto3.client("kms")


def _key(kms: Any, spec: str = "ECC_NIST_P256", usage: str = "SIGN_VERIFY") -> str:
    return kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]


@pytest.mark.parametrize("size", [100, RAW_MESSAGE_LIMIT, RAW_MESSAGE_LIMIT + 1, 64 << 10])
def test_signatures_verify_on_the_device(kms: Any, size: int):
    signer = KmsSigner(kms, _key(kms))
    der = kms.get_public_key(KeyId=signer.key_id)["PublicKey"]
    assert signer.public_key_der == der
    assert signer.keyid == hashlib.sha256(der).hexdigest()

    manifest = os.urandom(size)
    envelope = dump_signatures([signer.sign(manifest)])
    trusted = TrustedKeys.load([der])
    assert trusted.verify(manifest, load_signatures(envelope)) == [signer.keyid]
    with pytest.raises(SignatureError):
        trusted.verify(manifest + b"x", load_signatures(envelope))


def test_large_messages_are_sent_as_a_digest(kms: Any):
    sent: list[dict] = []
    kms.meta.events.register("provide-client-params.kms.Sign",
                             lambda params, **_: sent.append(dict(params)))
    signer = KmsSigner(kms, _key(kms))
    signer.sign(b"m" * RAW_MESSAGE_LIMIT)
    signer.sign(b"m" * (RAW_MESSAGE_LIMIT + 1))
    assert [p["MessageType"] for p in sent] == ["RAW", "DIGEST"]
    assert sent[1]["Message"] == hashlib.sha256(b"m" * (RAW_MESSAGE_LIMIT + 1)).digest()
    # and the corrected moto refuses what real KMS refuses
    with pytest.raises(ClientError, match="ValidationException"):
        kms.sign(KeyId=signer.key_id, Message=b"m" * (RAW_MESSAGE_LIMIT + 1), MessageType="RAW",
                 SigningAlgorithm="ECDSA_SHA_256")


def test_alias_works_as_key_id(kms: Any):
    key = _key(kms)
    kms.create_alias(AliasName="alias/edgeforge-signing", TargetKeyId=key)
    signer = KmsSigner(kms, "alias/edgeforge-signing")
    der = signer.public_key_der
    assert TrustedKeys.load([der]).verify(b"manifest", [signer.sign(b"manifest")])


@pytest.mark.parametrize(("spec", "usage"), [("ECC_NIST_P384", "SIGN_VERIFY"),
                                             ("RSA_2048", "SIGN_VERIFY"),
                                             ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")])
def test_keys_that_cannot_sign_p256_are_refused(kms: Any, spec: str, usage: str):
    signer = KmsSigner(kms, _key(kms, spec, usage))
    with pytest.raises(SigningError):
        signer.sign(b"manifest")


def test_throttling_is_transient():
    client = boto3.client("kms", region_name=REGION, aws_access_key_id="x",
                          aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_client_error("get_public_key", service_error_code="ThrottlingException",
                              http_status_code=400)
        stub.add_client_error("get_public_key", service_error_code="KMSInternalException",
                              http_status_code=500)
        for _ in range(2):
            with pytest.raises(KmsUnavailableError):
                KmsSigner(client, "key").sign(b"manifest")


def test_batch_adapter_submits_the_message_as_environment():
    from compiler.storage import BatchJobs

    client = boto3.client("batch", region_name=REGION, aws_access_key_id="x",
                          aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("submit_job", {"jobId": "j-1", "jobName": "n", "jobArn": "arn"}, {
            "jobName": "m-d-l-1-rpi4", "jobQueue": "q", "jobDefinition": "d",
            "containerOverrides": {"environment": [{"name": "EDGEFORGE_MESSAGE",
                                                    "value": "{}"}]}})
        assert BatchJobs(client, "q", "d").submit("m.dèl-1-rpi4", {"EDGEFORGE_MESSAGE": "{}"}) == "j-1"
