//! The `token-refresher` binary: parses arguments, runs the command, maps the outcome to the
//! exit code (0 success, 1 a token or the work failed, 2 usage or configuration).

use std::process::ExitCode;

use clap::Parser;
use token_refresher::cli::{self, Cli};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let arguments = Cli::parse();
    match cli::run(arguments).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("token-refresher: error: {error}");
            error.exit_code()
        }
    }
}
