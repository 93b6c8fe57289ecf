#!/usr/bin/env python3
"""Independent check of Lethe's personal-field format, written only from SECURITY.md.

Unwraps a stream's DEK from a SQLite key vault file with the KEK, opens an event payload
with it, finds the sealed personal field at a JSON pointer, unwraps that field's subject key
(its id is in the sealed value) and opens the field. Uses only Python's standard library and
the `cryptography` package's AESGCM.

Usage:
  independent_field.py --vault-db keyvault.db --kek-file kek.key --stream-key-id UUID
                       --stream NAME --event-id UUID --payload-hex HEX --pointer /a/b
Prints JSON: {"payload": <the payload, field still sealed>, "field_key_id": ..., "value": ...}
"""

import argparse
import base64
import json
import sqlite3
import struct
import sys
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 0x01
NONCE_LEN = 12
TAG_LEN = 16
SEALED_FIELD_PREFIX = "lethe:f1:"


def open_envelope(key: bytes, aad: bytes, sealed: bytes) -> bytes:
    # 0x01 || nonce (12) || ciphertext || tag (16); AESGCM takes ciphertext||tag together.
    if len(sealed) < 1 + NONCE_LEN + TAG_LEN or sealed[0] != VERSION:
        raise ValueError("not a version-1 envelope")
    nonce = sealed[1 : 1 + NONCE_LEN]
    return AESGCM(key).decrypt(nonce, sealed[1 + NONCE_LEN :], aad)


def event_aad(stream: str, event_id: uuid.UUID) -> bytes:
    name = stream.encode("utf-8")
    return b"lethe:v1" + struct.pack(">I", len(name)) + name + event_id.bytes


def field_aad(stream: str, event_id: uuid.UUID, pointer: str) -> bytes:
    name = stream.encode("utf-8")
    ptr = pointer.encode("utf-8")
    return (
        b"lethe:f1"
        + struct.pack(">I", len(name))
        + name
        + event_id.bytes
        + struct.pack(">I", len(ptr))
        + ptr
    )


def unwrap(db: sqlite3.Connection, kek: bytes, key_id: uuid.UUID) -> bytes:
    row = db.execute(
        "SELECT wrapped FROM vault_key_material WHERE id = ?", (key_id.bytes,)
    ).fetchone()
    if row is None:
        raise SystemExit(f"no live key {key_id}")
    # Wrapped DEK: the envelope under the KEK, associated data = the key id's 16 bytes.
    return open_envelope(kek, key_id.bytes, bytes(row[0]))


def resolve(document, pointer: str):
    # RFC 6901: "/"-separated tokens, "~1" is "/", "~0" is "~".
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        document = document[int(token)] if isinstance(document, list) else document[token]
    return document


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vault-db", required=True)
    p.add_argument("--kek-file", required=True)
    p.add_argument("--stream-key-id", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--event-id", required=True)
    p.add_argument("--payload-hex", required=True)
    p.add_argument("--pointer", required=True)
    args = p.parse_args()

    with open(args.kek_file, "rb") as f:
        kek = f.read()
    if len(kek) != 32:
        raise SystemExit("KEK must be 32 bytes")
    db = sqlite3.connect(f"file:{args.vault_db}?mode=ro", uri=True)
    event_id = uuid.UUID(args.event_id)

    stream_dek = unwrap(db, kek, uuid.UUID(args.stream_key_id))
    payload = json.loads(
        open_envelope(stream_dek, event_aad(args.stream, event_id), bytes.fromhex(args.payload_hex))
    )
    sealed = resolve(payload, args.pointer)
    # lethe:f1:<field key id>:<base64 of the envelope>
    if not isinstance(sealed, str) or not sealed.startswith(SEALED_FIELD_PREFIX):
        raise SystemExit("the field is not sealed")
    key_id, envelope = sealed[len(SEALED_FIELD_PREFIX) :].split(":", 1)
    field_dek = unwrap(db, kek, uuid.UUID(key_id))
    value = json.loads(
        open_envelope(field_dek, field_aad(args.stream, event_id, args.pointer), base64.b64decode(envelope))
    )
    print(json.dumps({"payload": payload, "field_key_id": key_id, "value": value}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
