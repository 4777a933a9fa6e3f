//! Integration tests: one binary, one module per purpose, each test on its own database.

mod adoption;
mod cli;
mod config;
mod due_scan;
mod rls;
mod role;
mod schema;
mod support;
