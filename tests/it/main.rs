//! Integration tests: one binary, one module per purpose, each test on its own database.

mod adoption;
mod cli;
mod config;
mod crypto;
mod daemon;
mod demo;
mod due_scan;
mod faults;
mod invariants;
mod load;
mod metrics;
mod providers;
mod reencrypt;
mod refresh;
mod reload;
mod rls;
mod role;
mod schema;
mod status;
mod support;
mod systemd;
