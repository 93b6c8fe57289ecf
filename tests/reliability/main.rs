//! Reliability and security under faults, load and hostile input (RELIABILITY.md lists every
//! scenario, how to run it and its last result):
//!
//! - `crash`: the real `lethe serve` killed with SIGKILL at random moments while clients append
//!   and erasures run;
//! - `pg_restart`: the PostgreSQL server restarted (`-m immediate`) under load;
//! - `vault_kill`: the remote key vault (`lethe keyvault serve`) killed during reads and forgets;
//! - `soak`: two Lethe processes on one PostgreSQL database, concurrent writers, forgets and
//!   three kinds of tailing subscribers;
//! - `hostile`: generated requests against the router (proptest);
//! - `exhaustion`: huge bodies, 10k-event batches, deep nesting, idle subscriptions,
//!   slow-loris headers, with the server's memory measured;
//! - `kek_drills`: the real `lethe serve` killed during KEK epoch rotations, and during the
//!   erasure journal's replay against a restored vault backup.
//!
//! Quick by default (what CI runs); `LETHE_RELIABILITY=long` runs the long versions
//! (`scripts/reliability-long`). The tests of this binary run one at a time ([`harness::serial`]):
//! the PostgreSQL restart must not overlap the others, and memory is measured per scenario.
//! It is its own binary so that restarting PostgreSQL cannot break `tests/it`'s tests, which
//! cargo runs before or after it, never at the same time.

#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

#[allow(dead_code)]
#[path = "../it/http_support.rs"]
mod http_support;

#[path = "../it/load_support.rs"]
mod load_support;

mod harness;

mod crash;
mod exhaustion;
mod hostile;
mod kek_drills;
mod pg_restart;
mod soak;
mod vault_kill;
