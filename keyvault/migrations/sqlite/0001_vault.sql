-- Lethe key vault schema (SQLite).
-- vault_keys holds one row per stream ever keyed, kept forever as a tombstone once destroyed so
-- the stream can never be keyed again and a fetch answers "destroyed", not "not found".
-- vault_key_material holds the wrapped DEK; destroying a key DELETEs this row (with
-- secure_delete on, SQLite zeroes the freed bytes).
CREATE TABLE kek_versions (
    version     INTEGER PRIMARY KEY,
    -- HMAC-SHA256(KEK, "lethe:v1:kek-check"): recognises a KEK, never the KEK itself.
    check_value BLOB NOT NULL UNIQUE,
    -- 'active': new keys are wrapped with it; 'pending': target of a rotation in progress;
    -- 'retired': no key is wrapped with it any more.
    state       TEXT NOT NULL CHECK (state IN ('active', 'pending', 'retired')),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX kek_versions_one_active ON kek_versions (state) WHERE state = 'active';
CREATE UNIQUE INDEX kek_versions_one_pending ON kek_versions (state) WHERE state = 'pending';

CREATE TABLE vault_keys (
    id           BLOB PRIMARY KEY,
    stream       TEXT NOT NULL UNIQUE,
    subject      TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    destroyed_at TEXT
);
CREATE INDEX vault_keys_live_subject ON vault_keys (subject) WHERE destroyed_at IS NULL;

CREATE TABLE vault_key_material (
    id          BLOB PRIMARY KEY REFERENCES vault_keys (id),
    kek_version INTEGER NOT NULL REFERENCES kek_versions (version),
    -- 0x01 ‖ nonce(12) ‖ AES-256-GCM(KEK, DEK, aad = id) (32) ‖ tag(16) = 61 bytes.
    wrapped     BLOB NOT NULL
);
CREATE INDEX vault_key_material_kek_version ON vault_key_material (kek_version);
