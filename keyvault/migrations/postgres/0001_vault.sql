-- Lethe key vault schema (PostgreSQL). Same model as the SQLite schema; see there.
-- Destroying a key DELETEs its vault_key_material row and the vault then VACUUMs that table.
CREATE TABLE kek_versions (
    version     INTEGER PRIMARY KEY,
    check_value BYTEA NOT NULL UNIQUE,
    state       TEXT NOT NULL CHECK (state IN ('active', 'pending', 'retired')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX kek_versions_one_active ON kek_versions (state) WHERE state = 'active';
CREATE UNIQUE INDEX kek_versions_one_pending ON kek_versions (state) WHERE state = 'pending';

CREATE TABLE vault_keys (
    id           UUID PRIMARY KEY,
    stream       TEXT NOT NULL UNIQUE,
    subject      TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    destroyed_at TIMESTAMPTZ
);
CREATE INDEX vault_keys_live_subject ON vault_keys (subject) WHERE destroyed_at IS NULL;

CREATE TABLE vault_key_material (
    id          UUID PRIMARY KEY REFERENCES vault_keys (id),
    kek_version INTEGER NOT NULL REFERENCES kek_versions (version),
    wrapped     BYTEA NOT NULL
);
CREATE INDEX vault_key_material_kek_version ON vault_key_material (kek_version);
