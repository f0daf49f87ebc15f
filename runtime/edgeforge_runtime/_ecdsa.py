"""ECDSA P-256 / SHA-256 signature *verification* in pure Python.

The device runtime must stay small (no ``cryptography`` wheel, which alone is larger than the whole
runtime budget), and verification only ever handles public data: the public key, the message and
the signature. Constant-time arithmetic is therefore not needed here. Signing is never done on the
device; the compiler side signs with ``cryptography`` or AWS KMS.

Implements SEC 1 v2 §4.1.4 with the NIST P-256 domain parameters, DER decoding of
SubjectPublicKeyInfo (RFC 5480, uncompressed points) and of the ECDSA-Sig-Value structure. The
test-suite cross-checks it against ``cryptography`` on signatures made there.
"""

from __future__ import annotations

import base64
import hashlib

# NIST P-256 (secp256r1) domain parameters.
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_A = _P - 3
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# DER object identifiers (encoded contents) for id-ecPublicKey and prime256v1.
_OID_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")
_OID_P256 = bytes.fromhex("2a8648ce3d030107")

_Point = tuple[int, int, int]  # Jacobian coordinates; Z == 0 is the point at infinity
_INFINITY: _Point = (1, 1, 0)


class InvalidKey(ValueError):
    """The bytes are not a P-256 public key this module can use."""


def _double(p: _Point) -> _Point:
    x, y, z = p
    if z == 0 or y == 0:
        return _INFINITY
    ysq = y * y % _P
    s = 4 * x * ysq % _P
    zsq = z * z % _P
    m = 3 * (x - zsq) * (x + zsq) % _P  # a = -3
    nx = (m * m - 2 * s) % _P
    ny = (m * (s - nx) - 8 * ysq * ysq) % _P
    nz = 2 * y * z % _P
    return nx, ny, nz


def _add(p: _Point, q: _Point) -> _Point:
    if p[2] == 0:
        return q
    if q[2] == 0:
        return p
    x1, y1, z1 = p
    x2, y2, z2 = q
    z1sq = z1 * z1 % _P
    z2sq = z2 * z2 % _P
    u1 = x1 * z2sq % _P
    u2 = x2 * z1sq % _P
    s1 = y1 * z2sq * z2 % _P
    s2 = y2 * z1sq * z1 % _P
    if u1 == u2:
        if s1 != s2:
            return _INFINITY
        return _double(p)
    h = (u2 - u1) % _P
    r = (s2 - s1) % _P
    hsq = h * h % _P
    hcu = hsq * h % _P
    u1hsq = u1 * hsq % _P
    nx = (r * r - hcu - 2 * u1hsq) % _P
    ny = (r * (u1hsq - nx) - s1 * hcu) % _P
    nz = h * z1 * z2 % _P
    return nx, ny, nz


def _shamir(k1: int, p1: _Point, k2: int, p2: _Point) -> _Point:
    """k1*p1 + k2*p2 by simultaneous double-and-add."""
    both = _add(p1, p2)
    acc = _INFINITY
    for i in range(max(k1.bit_length(), k2.bit_length()) - 1, -1, -1):
        acc = _double(acc)
        b1 = (k1 >> i) & 1
        b2 = (k2 >> i) & 1
        if b1 and b2:
            acc = _add(acc, both)
        elif b1:
            acc = _add(acc, p1)
        elif b2:
            acc = _add(acc, p2)
    return acc


def _to_affine_x(p: _Point) -> int | None:
    x, _, z = p
    if z == 0:
        return None
    zinv = pow(z, -1, _P)
    return x * zinv * zinv % _P


def _on_curve(x: int, y: int) -> bool:
    return (y * y - (x * x * x + _A * x + _B)) % _P == 0


# --- minimal DER -------------------------------------------------------------------------------


def _der_read(data: bytes, pos: int, expected_tag: int) -> tuple[bytes, int]:
    """Read one DER TLV with ``expected_tag`` at ``pos``; return (contents, next position)."""
    if pos + 2 > len(data) or data[pos] != expected_tag:
        raise ValueError("unexpected DER structure")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 2 or pos + n > len(data):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80:
            raise ValueError("non-minimal DER length")
        pos += n
    end = pos + length
    if end > len(data):
        raise ValueError("truncated DER")
    return data[pos:end], end


def _der_int(data: bytes, pos: int) -> tuple[int, int]:
    raw, pos = _der_read(data, pos, 0x02)
    if not raw or raw[0] & 0x80 or (len(raw) > 1 and raw[0] == 0 and not raw[1] & 0x80):
        raise ValueError("invalid DER INTEGER")
    return int.from_bytes(raw, "big"), pos


class PublicKey:
    """A validated P-256 public key."""

    __slots__ = ("_point", "spki_der")

    def __init__(self, spki_der: bytes) -> None:
        try:
            seq, end = _der_read(spki_der, 0, 0x30)
            if end != len(spki_der):
                raise ValueError("trailing data")
            alg, pos = _der_read(seq, 0, 0x30)
            bits, pos = _der_read(seq, pos, 0x03)
            if pos != len(seq):
                raise ValueError("trailing data in SubjectPublicKeyInfo")
            oid, apos = _der_read(alg, 0, 0x06)
            curve, apos = _der_read(alg, apos, 0x06)
        except ValueError as e:
            raise InvalidKey(f"not a DER SubjectPublicKeyInfo: {e}") from e
        if oid != _OID_EC_PUBLIC_KEY or curve != _OID_P256:
            raise InvalidKey("only ECDSA keys on NIST P-256 (prime256v1) are supported")
        if len(bits) != 66 or bits[0] != 0 or bits[1] != 0x04:
            raise InvalidKey("the P-256 public key must be an uncompressed point")
        x = int.from_bytes(bits[2:34], "big")
        y = int.from_bytes(bits[34:66], "big")
        if not (0 <= x < _P and 0 <= y < _P and _on_curve(x, y)):
            raise InvalidKey("the public key is not a point on P-256")
        self._point: _Point = (x, y, 1)
        self.spki_der = spki_der

    @classmethod
    def from_pem(cls, pem: bytes | str) -> PublicKey:
        text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
        begin, end = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"
        if begin not in text or end not in text:
            raise InvalidKey("expected a PEM 'PUBLIC KEY' block (SubjectPublicKeyInfo)")
        body = text.split(begin, 1)[1].split(end, 1)[0]
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except ValueError as e:
            raise InvalidKey("the PEM block is not valid base64") from e
        return cls(der)

    @property
    def keyid(self) -> str:
        """sha256 of the DER SubjectPublicKeyInfo, hex: the key's stable identifier."""
        return hashlib.sha256(self.spki_der).hexdigest()

    def verify(self, signature_der: bytes, message: bytes) -> bool:
        """True when ``signature_der`` is a valid ECDSA-SHA256 signature of ``message``."""
        try:
            seq, end = _der_read(signature_der, 0, 0x30)
            if end != len(signature_der):
                return False
            r, pos = _der_int(seq, 0)
            s, pos = _der_int(seq, pos)
            if pos != len(seq):
                return False
        except ValueError:
            return False
        if not (1 <= r < _N and 1 <= s < _N):
            return False
        e = int.from_bytes(hashlib.sha256(message).digest(), "big")
        w = pow(s, -1, _N)
        u1 = e * w % _N
        u2 = r * w % _N
        x = _to_affine_x(_shamir(u1, (_GX, _GY, 1), u2, self._point))
        return x is not None and x % _N == r
