-- Forgotten data subjects (SQLite). Numbered 0003 on both engines (0002 is PostgreSQL only).
-- destroy_subject_keys records the subject here in the transaction that destroys its keys, and
-- the row is kept forever: create_keys refuses, inside its own transaction, every key bound to a
-- subject listed here (its subject key "$subject:<id>" or a stream key), so a forgotten subject
-- stays forgotten. The subject id is Lethe's pseudonymous id, never personal data.
CREATE TABLE forgotten_subjects (
    subject      TEXT PRIMARY KEY,
    forgotten_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
