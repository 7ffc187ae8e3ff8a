"""The device's pure-Python Ed25519 verification agrees with the ``cryptography`` package and RFC 8032."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeship_deploy import ed25519

# RFC 8032, section 7.1, TEST 1 (empty message) and TEST 2 (one byte)
VECTORS = [("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
           ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")]


@pytest.mark.parametrize(("public", "message", "signature"), VECTORS)
def test_rfc_8032_vectors(public: str, message: str, signature: str) -> None:
    public_key, data, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert ed25519.verify(public_key, data, sig)
    assert not ed25519.verify(public_key, data + b"x", sig)


def test_agrees_with_cryptography_and_refuses_every_tampering() -> None:
    for size in (0, 1, 64, 1000, 4096):
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        message = os.urandom(size)
        signature = key.sign(message)
        assert ed25519.verify(public, message, signature)
        flipped = bytearray(signature)
        flipped[size % 64] ^= 1
        assert not ed25519.verify(public, message, bytes(flipped))
        if message:
            assert not ed25519.verify(public, bytes([message[0] ^ 1]) + message[1:], signature)
        other = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert not ed25519.verify(other, message, signature)
        assert not ed25519.verify(public[:31], message, signature) and not ed25519.verify(public, message, signature[:63])


def test_reads_the_public_key_pem_cryptography_writes() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert ed25519.public_key_from_pem(pem) == key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    with pytest.raises(ValueError, match="not a PEM public key"):
        ed25519.public_key_from_pem("hello")
