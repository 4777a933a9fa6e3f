//! Integration tests: one binary, one module per purpose, each test on its own database.

mod adoption;
mod cli;
mod config;
mod crypto;
mod daemon;
mod daemon_lifecycle;
mod demo;
mod due_scan;
mod faults;
mod held_answers;
mod invariants;
mod load;
mod metrics;
mod providers;
mod reencrypt;
mod refresh_answers;
mod refresh_durability;
mod refresh_failures;
mod refresh_selection;
mod refresh_storing;
mod rls;
mod role;
mod schema;
mod status;
mod support;
mod systemd;
