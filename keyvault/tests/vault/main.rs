//! Integration tests for the key vault: one binary, one module per concern. Tests that touch
//! storage run on SQLite and on PostgreSQL through `both_engines!` (PostgreSQL when
//! `LETHE_TEST_POSTGRES_URL` is set).

#[macro_use]
mod support;

mod cli;
mod envelope_props;
mod epochs;
mod http;
mod hygiene;
mod independent;
mod kek_files;
mod ops;
mod physical;
mod providers;
mod rotation;
mod softhsm;
mod subjects;
