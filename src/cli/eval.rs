//! `recyclegpt eval`: perplexity, module agreement, and what the modes gain and cost.
use super::model_args::ModelArgs;
use clap::Args;
use recyclegpt_train::{evaluate, EvalOptions};
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Held-out text files.
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// Tokens per scored window.
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Prompts for the generation measurements.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    #[arg(long, default_value_t = 64)]
    generate_tokens: usize,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let options = EvalOptions {
        window: args.window,
        prompts: args.prompts,
        generate_tokens: args.generate_tokens,
        ..EvalOptions::default()
    };
    let report = evaluate(&loaded.model, &loaded.tokenizer, &args.data, &options)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
