-- Cheaper key creation (PostgreSQL only; see CREATE_KEYS in src/storage/postgres.rs).
--
-- The foreign keys of vault_key_material cost two lookups per new key, each planned anew
-- (the pool plans every statement for its own parameters, and that applies to the lookups
-- foreign keys run too): a quarter of the vault's time under load. The one statement that
-- writes key material checks both facts itself: it inserts the material only of key rows it
-- inserted in the same statement, and only while the KEK version is share-locked and usable.
-- Nothing else inserts material; re-wrapping updates kek_version to the version being rotated
-- to, which exists by then.
ALTER TABLE vault_key_material DROP CONSTRAINT IF EXISTS vault_key_material_id_fkey;
ALTER TABLE vault_key_material DROP CONSTRAINT IF EXISTS vault_key_material_kek_version_fkey;

-- Only keys bound to a subject are looked up by subject: the keys of public streams need no
-- entry (their subject is NULL).
DROP INDEX IF EXISTS vault_keys_live_subject;
CREATE INDEX vault_keys_live_subject ON vault_keys (subject) WHERE destroyed_at IS NULL AND subject IS NOT NULL;
