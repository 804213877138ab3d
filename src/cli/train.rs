//! `recyclegpt train`: a RecycleGPT (Llama + recyclable module) trained jointly from scratch.
use clap::Args;
use recyclegpt_train::{train, TrainOptions, TrainSpec};
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    /// Text files to train on (5% of files, or of tokens for one file, are held out).
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    /// The output directory: the model in the HuggingFace layout, and the checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Model shape and training settings (TOML; see config/train-*.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Use this tokenizer directory instead of training one on the data.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps in this run.
    #[arg(long)]
    stop_after: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut spec = match &args.config {
        Some(path) => TrainSpec::from_toml_file(path)?,
        None => TrainSpec::default(),
    };
    if let Some(steps) = args.steps {
        spec.steps = steps;
    }
    if let Some(seed) = args.seed {
        spec.seed = seed;
    }
    let options =
        TrainOptions { resume: args.resume, stop_after: args.stop_after, progress: true, tokenizer: args.tokenizer };
    let report = train(&args.data, &args.out, &spec, &options)?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
