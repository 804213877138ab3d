//! `recyclegpt`: a thin command line over the workspace's libraries.
mod cli;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    cli::init_logging();
    cli::run(args)
}
