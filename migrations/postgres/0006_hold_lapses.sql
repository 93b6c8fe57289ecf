-- A hold that lapses (its `until` passes) is audited once as `hold_expired` by whichever Lethe
-- process notices first; this column records that it was.
ALTER TABLE legal_holds ADD COLUMN lapse_audited_at BIGINT;
