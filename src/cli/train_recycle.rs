//! `recyclegpt train-recycle`: a recyclable module for an existing model.
use anyhow::Context;
use clap::Args;
use recyclegpt_model::{LoadOptions, LoadedModel, QuantizeSpec};
use recyclegpt_train::{train_recycle, Corpus, DistillOptions};
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainRecycleArgs {
    /// The base model (a HuggingFace directory or a GGUF file); it stays frozen.
    #[arg(long)]
    model: PathBuf,
    /// Text files to train on.
    #[arg(long, num_args = 1.., conflicts_with = "self_distill")]
    data: Vec<PathBuf>,
    /// Or this many sequences the base model samples from itself.
    #[arg(long)]
    self_distill: Option<usize>,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 128)]
    length: usize,
    /// Decoder layers of the module.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    #[arg(long, default_value_t = 300)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Draft from this many tokens only: the ones the base model predicts most often on the
    /// training sequences (a row subset of the shared head, so a module step reads that many
    /// head rows); verification stays over the whole vocabulary.
    #[arg(long)]
    draft_vocab: Option<usize>,
    /// Weight of the feature loss: the module's output learns to read like the base model's
    /// next hidden state, so that drafts can be chained (0: token loss only).
    #[arg(long, default_value_t = 0.3)]
    feature_weight: f64,
    /// How the frozen base computes (as `serve --quantize`): the module learns to agree with
    /// the base as it will be served, and sampling and the teacher pass run at its speed.
    #[arg(long, env = "RECYCLEGPT_QUANTIZE", default_value = "auto")]
    quantize: QuantizeSpec,
    /// Where to write the model with its module (the model's own directory if absent); for a
    /// GGUF file, the module alone (serve it with `--model FILE.gguf --recycle DIR`).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: TrainRecycleArgs) -> anyhow::Result<()> {
    let out = match (&args.out, args.model.is_file()) {
        (Some(out), _) => out.clone(),
        (None, false) => args.model.clone(),
        (None, true) => anyhow::bail!("give --out DIR: a module for a GGUF file is written to its own directory"),
    };
    let options = LoadOptions {
        quantize: args.quantize.resolve(&args.model, &candle_core::Device::Cpu),
        ..LoadOptions::default()
    };
    let loaded = LoadedModel::load(&args.model, &options)
        .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let started = std::time::Instant::now();
    let corpus = match (args.self_distill, args.data.is_empty()) {
        (Some(count), _) => {
            tracing::info!(count, length = args.length, "sampling the training sequences from the model");
            Corpus::self_distilled(&loaded.model, &loaded.tokenizer, count, args.length, args.seed)?
        }
        (None, false) => Corpus::from_files(&args.data, &loaded.tokenizer, args.length)?,
        (None, true) => anyhow::bail!("give --data FILES or --self-distill N"),
    };
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "training sequences ready");
    let options = DistillOptions {
        layers: args.layers,
        steps: args.steps,
        batch: args.batch,
        learning_rate: args.lr,
        seed: args.seed,
        draft_vocab: args.draft_vocab,
        feature_weight: args.feature_weight,
        ..DistillOptions::default()
    };
    let report = train_recycle(&loaded.model, &args.model, &corpus, &out, &options)?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!("wrote {} (held-out top-1 agreement {:.1}%)", out.display(), 100.0 * report.agreement);
    Ok(())
}
