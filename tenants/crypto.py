"""Encryption at rest for tenant secrets (Fernet: AES-128-CBC with HMAC-SHA256)."""

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@functools.cache
def _fernet(key_material):
    digest = hashlib.sha256(b"symposium-tenant-secrets:" + key_material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plaintext: str) -> str:
    return _fernet(settings.SECRETS_ENCRYPTION_KEY).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet(settings.SECRETS_ENCRYPTION_KEY).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("This secret cannot be decrypted with the current SYMPOSIUM_SECRETS_KEY.") from None
