-- Audit entries recorded at most once across processes, by a key naming the fact (for
-- example `kek_rotated:5`): the key vault's KEK epoch changes, which every Lethe process sees
-- and only one must record.
CREATE TABLE audit_once (
    key TEXT PRIMARY KEY
);
