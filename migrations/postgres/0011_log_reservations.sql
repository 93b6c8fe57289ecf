-- Positions reserved by a parallel group writer whose group has not committed yet
-- (StoreConfig::postgres_group_writers > 1; ARCHITECTURE.md, "Parallel group writers").
-- A reservation is made in a transaction of its own that advances log_head under its lock and
-- inserts this row; the group's own transaction writes its events at those positions and
-- deletes the row, or a failed group deletes it without writing (its positions stay a gap).
-- Readers read only below the oldest reservation, so a position a reader has passed is never
-- filled in later. `owner_pid` is the backend of a connection its process keeps open, idle,
-- for as long as it lives: once that session is gone (the process died), the reservation is
-- reaped.
CREATE TABLE log_reservations (
    first       BIGINT PRIMARY KEY,
    last        BIGINT NOT NULL,
    owner_pid   INTEGER NOT NULL,
    reserved_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The parallel group write raises this when it lost a race (another group changed one of its
-- streams, or its reservation was reaped): the whole statement rolls back and the group is
-- planned again.
CREATE FUNCTION lethe_group_lost(reason TEXT) RETURNS BIGINT AS $$
BEGIN
    RAISE EXCEPTION 'lethe: parallel group lost a race: %', reason USING ERRCODE = 'LT001';
END
$$ LANGUAGE plpgsql;
