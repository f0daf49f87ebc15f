"""The pure-Python P-256 verifier, cross-checked against ``cryptography`` (OpenSSL)."""

from __future__ import annotations

import hashlib
import os

import pytest

pytest.importorskip("cryptography")

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from edgeforge_runtime._ecdsa import _N, _P, InvalidKey, PublicKey

SHA256 = ec.ECDSA(hashes.SHA256())


def _spki(public: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _openssl_accepts(public: ec.EllipticCurvePublicKey, sig: bytes, msg: bytes) -> bool:
    try:
        public.verify(sig, msg, SHA256)
    except InvalidSignature:
        return False
    return True


def _der_len(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else bytes([0x81, n])


def _der_int_raw(content: bytes) -> bytes:
    return b"\x02" + _der_len(len(content)) + content


def _der_seq(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return b"\x30" + _der_len(len(body)) + body


def _int_bytes(v: int) -> bytes:
    """Minimal two's-complement big-endian content of a non-negative INTEGER."""
    raw = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")
    return b"\x00" + raw if raw[0] & 0x80 else raw


@pytest.fixture(scope="module")
def keypair() -> tuple[ec.EllipticCurvePrivateKey, PublicKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    return private, PublicKey(_spki(private.public_key()))


MESSAGES = [b"", b"a", b"manifest bytes", bytes(range(256)) * 17, os.urandom(4096)]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: f"{len(m)}B")
def test_signatures_made_by_cryptography_verify(keypair, msg: bytes) -> None:
    private, key = keypair
    for _ in range(3):  # ECDSA signatures are randomised: several per message
        assert key.verify(private.sign(msg, SHA256), msg)


def test_many_keys_cross_check() -> None:
    for i in range(8):
        private = ec.generate_private_key(ec.SECP256R1())
        msg = f"message {i}".encode()
        assert PublicKey(_spki(private.public_key())).verify(private.sign(msg, SHA256), msg)


@pytest.mark.parametrize(("message", "r", "s"), [
    (b"sample", 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
     0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8),
    (b"test", 0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
     0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083),
])
def test_rfc6979_known_answers(message: bytes, r: int, s: int) -> None:
    """RFC 6979 A.2.5 (P-256, SHA-256): a fixed vector, independent of any library."""
    ux = 0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6
    uy = 0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299
    key = PublicKey(_spki(ec.EllipticCurvePublicNumbers(ux, uy, ec.SECP256R1()).public_key()))
    assert key.verify(encode_dss_signature(r, s), message)
    assert not key.verify(encode_dss_signature(r, s), message + b"!")


def test_wrong_message_is_rejected(keypair) -> None:
    private, key = keypair
    sig = private.sign(b"the manifest", SHA256)
    assert not key.verify(sig, b"the manifesT")
    assert not key.verify(sig, b"the manifest ")
    assert not key.verify(sig, b"")


def test_wrong_key_is_rejected(keypair) -> None:
    private, _ = keypair
    other = PublicKey(_spki(ec.generate_private_key(ec.SECP256R1()).public_key()))
    assert not other.verify(private.sign(b"m", SHA256), b"m")


def test_high_s_is_accepted_like_openssl(keypair) -> None:
    """(r, n - s) is the other valid encoding of the same signature. OpenSSL accepts it and so do
    we: the signature is checked, never used as an identifier, so malleability is harmless."""
    private, key = keypair
    r, s = decode_dss_signature(private.sign(b"m", SHA256))
    flipped = encode_dss_signature(r, _N - s)
    assert _openssl_accepts(private.public_key(), flipped, b"m")
    assert key.verify(flipped, b"m")


@pytest.mark.parametrize("case", ["r=0", "s=0", "r=n", "s=n", "r+n", "s+n", "r=2^256", "s=-1"])
def test_out_of_range_r_s_are_rejected(keypair, case: str) -> None:
    private, key = keypair
    r, s = decode_dss_signature(private.sign(b"m", SHA256))
    if case == "s=-1":  # a negative INTEGER (0xff) in DER
        sig = _der_seq(_der_int_raw(_int_bytes(r)), _der_int_raw(b"\xff"))
    else:
        r, s = {"r=0": (0, s), "s=0": (r, 0), "r=n": (_N, s), "s=n": (r, _N), "r+n": (r + _N, s),
                "s+n": (r, s + _N), "r=2^256": (1 << 256, s)}[case]
        sig = _der_seq(_der_int_raw(_int_bytes(r)), _der_int_raw(_int_bytes(s)))
    assert not key.verify(sig, b"m")
    assert not _openssl_accepts(private.public_key(), sig, b"m")


def _malformed(sig: bytes) -> dict[str, bytes]:
    r, s = decode_dss_signature(sig)
    rb, sb = _int_bytes(r), _int_bytes(s)
    good_body = _der_int_raw(rb) + _der_int_raw(sb)
    return {
        "empty": b"",
        "truncated": sig[:-1],
        "trailing byte": sig + b"\x00",
        "wrong outer tag": b"\x31" + sig[1:],
        "integer tagged as octet string": _der_seq(b"\x04" + _der_len(len(rb)) + rb,
                                                  _der_int_raw(sb)),
        "indefinite length": b"\x30\x80" + good_body + b"\x00\x00",
        "non-minimal length": b"\x30\x81" + bytes([len(good_body)]) + good_body,
        # rb is minimal, so a further leading 00 is always superfluous
        "non-minimal integer (extra 00)": _der_seq(_der_int_raw(b"\x00" + rb), _der_int_raw(sb)),
        "missing s": _der_seq(_der_int_raw(rb)),
        "three integers": _der_seq(_der_int_raw(rb), _der_int_raw(sb), _der_int_raw(b"\x01")),
        "raw r||s (not DER)": r.to_bytes(32, "big") + s.to_bytes(32, "big"),
        "length past the end": b"\x30\x7f" + good_body,
    }


def test_malformed_der_is_rejected(keypair) -> None:
    private, key = keypair
    sig = private.sign(b"m", SHA256)
    assert key.verify(sig, b"m")
    for name, bad in _malformed(sig).items():
        assert not key.verify(bad, b"m"), name
        assert not _openssl_accepts(private.public_key(), bad, b"m"), name


def test_random_garbage_never_verifies_or_raises(keypair) -> None:
    _, key = keypair
    for n in (1, 2, 8, 70, 72, 200):
        assert key.verify(os.urandom(n), b"m") is False


# --- public keys --------------------------------------------------------------------------------


def test_keyid_is_sha256_of_the_spki(keypair) -> None:
    private, key = keypair
    der = _spki(private.public_key())
    assert key.keyid == hashlib.sha256(der).hexdigest()
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    assert PublicKey.from_pem(pem).keyid == key.keyid
    assert PublicKey.from_pem(pem.decode()).keyid == key.keyid


def _with_point(der: bytes, x: int, y: int) -> bytes:
    return der[:-64] + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def test_point_not_on_the_curve_is_refused(keypair) -> None:
    private, _ = keypair
    der = _spki(private.public_key())
    nums = private.public_key().public_numbers()
    with pytest.raises(InvalidKey, match="not a point on P-256"):
        PublicKey(_with_point(der, nums.x, (nums.y + 1) % _P))
    with pytest.raises(InvalidKey, match="not a point on P-256"):
        PublicKey(_with_point(der, 0, 0))


def test_coordinates_out_of_range_are_refused(keypair) -> None:
    private, _ = keypair
    der = _spki(private.public_key())
    nums = private.public_key().public_numbers()
    # x + p encodes to 33 bytes: use a value >= p that fits 32 bytes instead.
    big = (1 << 256) - 1
    with pytest.raises(InvalidKey):
        PublicKey(_with_point(der, big, nums.y))
    with pytest.raises(InvalidKey):
        PublicKey(_with_point(der, nums.x, big))


def test_compressed_points_are_refused(keypair) -> None:
    private, _ = keypair
    compressed = private.public_key().public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.CompressedPoint)
    # Wrap the 33-byte compressed point in an SPKI the way RFC 5480 allows.
    uncompressed = _spki(private.public_key())
    prefix = uncompressed[: -(65 + 3)]  # up to the BIT STRING
    alg = prefix[2:]
    bits = b"\x03" + bytes([len(compressed) + 1]) + b"\x00" + compressed
    body = alg + bits
    with pytest.raises(InvalidKey, match="uncompressed"):
        PublicKey(b"\x30" + bytes([len(body)]) + body)


@pytest.mark.parametrize("kind", ["p384", "secp256k1", "ed25519"])
def test_keys_of_other_curves_and_algorithms_are_refused(kind: str) -> None:
    if kind == "ed25519":
        der = _spki(ed25519.Ed25519PrivateKey.generate().public_key())
    else:
        curve = ec.SECP384R1() if kind == "p384" else ec.SECP256K1()
        der = _spki(ec.generate_private_key(curve).public_key())
    with pytest.raises(InvalidKey):
        PublicKey(der)


@pytest.mark.parametrize("bad", [b"", b"\x30", b"\x30\x00", b"not der at all", b"\x04" + b"\x00" * 64])
def test_garbage_keys_are_refused(bad: bytes) -> None:
    with pytest.raises(InvalidKey):
        PublicKey(bad)


def test_trailing_data_after_the_key_is_refused(keypair) -> None:
    private, _ = keypair
    with pytest.raises(InvalidKey, match="trailing"):
        PublicKey(_spki(private.public_key()) + b"\x00")


def test_pem_of_another_kind_is_refused(keypair) -> None:
    private, _ = keypair
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with pytest.raises(InvalidKey, match="PUBLIC KEY"):
        PublicKey.from_pem(pem)
    with pytest.raises(InvalidKey, match="base64"):
        PublicKey.from_pem(b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n")
