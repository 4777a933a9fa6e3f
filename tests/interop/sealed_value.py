"""An independent implementation of token-refresher's stored-value format, with Python's
`cryptography` package, used by the tests to check the Rust code in both directions.

    sealed_value.py open  KEY_B64 COLUMN TENANT PLATFORM STORED
    sealed_value.py seal  KEY_ID KEY_B64 COLUMN TENANT PLATFORM PLAINTEXT [NONCE_HEX]
    sealed_value.py fernet FERNET_KEY PLAINTEXT
"""
import base64
import os
import sys

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def associated_data(column, tenant, platform):
    return b"\0".join(part.encode() for part in ("oauth_tokens", column, tenant, platform))


def open_value(key_b64, column, tenant, platform, stored):
    prefix, version, _key_id, body = stored.split(":", 3)
    assert (prefix, version) == ("enc", "v1"), "not a sealed value"
    raw = base64.b64decode(body, validate=True)
    nonce, ciphertext_and_tag = raw[:12], raw[12:]
    aad = associated_data(column, tenant, platform)
    return AESGCM(base64.b64decode(key_b64)).decrypt(nonce, ciphertext_and_tag, aad).decode()


def seal_value(key_id, key_b64, column, tenant, platform, plaintext, nonce_hex=None):
    nonce = bytes.fromhex(nonce_hex) if nonce_hex else os.urandom(12)
    aad = associated_data(column, tenant, platform)
    sealed = AESGCM(base64.b64decode(key_b64)).encrypt(nonce, plaintext.encode(), aad)
    return f"enc:v1:{key_id}:{base64.b64encode(nonce + sealed).decode()}"


def main(argv):
    command, arguments = argv[1], argv[2:]
    if command == "open":
        print(open_value(*arguments))
    elif command == "seal":
        print(seal_value(*arguments))
    elif command == "fernet":
        key, plaintext = arguments
        print(Fernet(key.encode()).encrypt(plaintext.encode()).decode())
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
