//! `recyclegpt convert llama2c`.
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ConvertCommand {
    /// A llama2.c checkpoint (`.bin`) with its tokenizer (`tok*.bin` or sentencepiece `.model`).
    Llama2c(Llama2cArgs),
}

#[derive(Args)]
pub struct Llama2cArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(command: ConvertCommand) -> anyhow::Result<()> {
    match command {
        ConvertCommand::Llama2c(args) => {
            recyclegpt_model::llama2c::convert(&args.checkpoint, &args.tokenizer, &args.out)
                .with_context(|| format!("converting {}", args.checkpoint.display()))?;
            eprintln!("wrote {}", args.out.display());
            Ok(())
        }
    }
}
