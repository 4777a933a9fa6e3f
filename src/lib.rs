//! token-refresher keeps the OAuth tokens of a multi-tenant marketing suite alive.
//!
//! The binary is a thin shell over these modules; integration tests use them directly.

pub mod cli;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod engine;
pub mod loopback_provider;
pub mod metrics;
pub mod outcome;
pub mod providers;
pub mod reencrypt;
pub mod service;
pub mod spill;
pub mod storage;
pub mod telemetry;
pub mod webhooks;
