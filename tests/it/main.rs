//! Lethe's integration tests: one binary (fast to link), one module per area. Each module
//! reads as a specification of the behaviour it covers; most tests run on both engines
//! through `backend_tests!`.

mod support;

mod admin_ui;
mod appends;
mod audit;
mod cascade;
mod cli_retention;
mod client;
mod erasure_workflow;
mod journal;
mod kek_epochs;
mod keys_dir;
mod layers;
mod multi_stream;
mod ordering;
mod personal_fields;
mod python_client;
mod reads;
mod reconcile;
mod report;
mod restore_drills;
mod retention;
mod schemathesis;
mod shredding;
mod tokens;
mod tour;
mod validation;

mod http;
mod http_auth;
mod http_durability;
mod http_erasures;
mod http_input;
mod http_schemas;
mod http_support;
mod load_support;
