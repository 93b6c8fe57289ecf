#!/usr/bin/env python3
"""Independent check of Lethe's key vault byte formats, written only from SECURITY.md.

Reads a wrapped DEK straight from a SQLite key vault file, unwraps it with the KEK, and
optionally decrypts an event payload with that DEK. Uses only Python's standard library and
the `cryptography` package's AESGCM.

Usage:
  independent_unwrap.py --db keyvault.db --kek-file kek.key --key-id UUID
                        [--stream NAME --event-id UUID --payload-hex HEX]
Prints JSON: {"dek_hex": ..., "plaintext_hex": ...}
"""

import argparse
import json
import sqlite3
import struct
import sys
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 0x01
NONCE_LEN = 12
TAG_LEN = 16


def open_envelope(key: bytes, aad: bytes, sealed: bytes) -> bytes:
    # 0x01 || nonce (12) || ciphertext || tag (16); AESGCM takes ciphertext||tag together.
    if len(sealed) < 1 + NONCE_LEN + TAG_LEN or sealed[0] != VERSION:
        raise ValueError("not a version-1 envelope")
    nonce = sealed[1 : 1 + NONCE_LEN]
    return AESGCM(key).decrypt(nonce, sealed[1 + NONCE_LEN :], aad)


def event_aad(stream: str, event_id: uuid.UUID) -> bytes:
    name = stream.encode("utf-8")
    return b"lethe:v1" + struct.pack(">I", len(name)) + name + event_id.bytes


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--kek-file", required=True)
    p.add_argument("--key-id", required=True)
    p.add_argument("--stream")
    p.add_argument("--event-id")
    p.add_argument("--payload-hex")
    args = p.parse_args()

    with open(args.kek_file, "rb") as f:
        kek = f.read()
    if len(kek) != 32:
        raise SystemExit("KEK must be 32 bytes")
    key_id = uuid.UUID(args.key_id)

    db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    row = db.execute(
        "SELECT wrapped FROM vault_key_material WHERE id = ?", (key_id.bytes,)
    ).fetchone()
    if row is None:
        raise SystemExit("no live key with that id")
    # Wrapped DEK: the envelope under the KEK, associated data = the key id's 16 bytes.
    dek = open_envelope(kek, key_id.bytes, bytes(row[0]))

    out = {"dek_hex": dek.hex()}
    if args.payload_hex is not None:
        aad = event_aad(args.stream, uuid.UUID(args.event_id))
        out["plaintext_hex"] = open_envelope(dek, aad, bytes.fromhex(args.payload_hex)).hex()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
