//! Command-line parsing and the subcommands.
mod bench;
mod convert;
mod eval;
mod generate;
mod model_args;
mod serve;
mod train;
mod train_recycle;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "recyclegpt",
    version,
    about = "RecycleGPT inference: plain (off), alternate and verified recycled decoding"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start-up; the size of the largest argument set does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Generate a completion for one prompt and print it.
    Generate(generate::GenerateArgs),
    /// Convert a checkpoint from another format into the HuggingFace layout.
    #[command(subcommand)]
    Convert(convert::ConvertCommand),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Train a RecycleGPT (model and recyclable module) jointly from scratch.
    Train(train::TrainArgs),
    /// Train a recyclable module for an existing model (the base model stays frozen).
    TrainRecycle(train_recycle::TrainRecycleArgs),
    /// Evaluate a model on held-out text: perplexity, module agreement, verify and alternate.
    Eval(eval::EvalArgs),
    /// Run a benchmark.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

impl Cli {
    /// Whether this command frees and re-allocates the same large buffers step after step
    /// (training), so that freed memory is better kept than returned to the OS. A server must
    /// return it: after a burst of requests it should shrink back, not stay at its peak.
    pub fn reuses_large_buffers(&self) -> bool {
        matches!(self.command, Command::Train(_) | Command::TrainRecycle(_))
    }
}

/// Logs go to stderr so that stdout carries only the command's output; `RUST_LOG` filters them.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // The server picks its log format from its configuration.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(false);
    }
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Convert(command) => convert::run(command),
        Command::Bench(command) => bench::run(command),
        Command::Serve(args) => serve::run(args),
        Command::TrainRecycle(args) => train_recycle::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
    }
}
