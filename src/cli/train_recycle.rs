//! `recyclegpt train-recycle`: a recyclable module for an existing model.
use anyhow::Context;
use clap::Args;
use recyclegpt_model::{LoadOptions, LoadedModel, QuantizeSpec};
use recyclegpt_train::{train_recycle, Corpus, DistillOptions, TeacherCache};
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
    /// Noise on the module's input h while training, within ± this share of each row's RMS:
    /// it keeps a module trained on a small corpus from memorising the base's exact states.
    #[arg(long, default_value_t = 0.0)]
    feature_noise: f64,
    /// Steps of a chain of drafts to train (1: the first draft alone). Step i feeds the
    /// module's own output back, as serving does when it chains drafts; the module then chains
    /// up to this many. Each step costs about as much training time as the first.
    #[arg(long, default_value_t = 1)]
    chain_steps: usize,
    /// Weight of each chained step's loss beside the first draft's.
    #[arg(long, default_value_t = 0.5)]
    chain_weight: f64,
    /// Start from the module in this directory (what an earlier `--out` wrote) rather than from
    /// random weights: the same layers and draft vocabulary, trained further.
    #[arg(long)]
    init: Option<PathBuf>,
    /// EAGLE-3's form: the module reads the outputs of these base layers (counted from 1,
    /// rising; e.g. a low, a middle and the last: `2,15,30` on SmolLM2's 30), each normalised
    /// and fused into one vector, instead of the last hidden state alone. `--init` from a
    /// module of the paper's form starts from what it agrees on.
    #[arg(long, value_delimiter = ',')]
    feature_layers: Option<Vec<usize>>,
    /// Keep the base model's view of the corpus (its hidden states and top-K next tokens, the
    /// slow part on a CPU) in this directory, and read it back on the next run over the same
    /// corpus, model and `--quantize`.
    #[arg(long)]
    teacher_cache: Option<PathBuf>,
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
    let quantize = args.quantize.resolve(&args.model, &candle_core::Device::Cpu);
    let teacher_cache = match &args.teacher_cache {
        Some(dir) => Some(TeacherCache::new(dir, model_key(&args.model, &format!("{quantize:?}"))?)),
        None => None,
    };
    let options = LoadOptions { quantize, ..LoadOptions::default() };
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
        feature_noise: args.feature_noise,
        teacher_cache,
        chain_steps: args.chain_steps,
        chain_weight: args.chain_weight,
        init: args.init.clone(),
        feature_layers: args.feature_layers.clone(),
        ..DistillOptions::default()
    };
    let report = train_recycle(&loaded.model, &args.model, &corpus, &out, &options)?;
    println!("{}", serde_json::to_string(&report)?);
    let chained: String = report.chain_agreement.iter().map(|a| format!(", {:.1}%", 100.0 * a)).collect();
    eprintln!(
        "wrote {} (top-1 agreement {:.1}% held out{}, {:.1}% on training windows)",
        out.display(),
        100.0 * report.agreement,
        if chained.is_empty() { String::new() } else { format!(", then along a chain{chained}") },
        100.0 * report.train_agreement
    );
    Ok(())
}

/// What names the base model for the teacher cache: how it computes, and each of its files'
/// name and a hash of its contents (a directory's every file: weights may be sharded). Not its
/// path or modification time: a model mounted afresh, or copied, is the same model, and hashing
/// even a few GB costs seconds beside the teacher pass's hours.
fn model_key(model: &std::path::Path, quantize: &str) -> anyhow::Result<String> {
    use std::hash::Hasher;
    use std::io::Read;
    let path = model.canonicalize().with_context(|| format!("reading {}", model.display()))?;
    let mut files = if path.is_dir() {
        std::fs::read_dir(&path)?.map(|entry| Ok(entry?.path())).collect::<std::io::Result<Vec<_>>>()?
    } else {
        vec![path.clone()]
    };
    files.retain(|file| file.is_file());
    files.sort();
    let mut key = quantize.to_string();
    let mut buffer = vec![0u8; 1 << 20];
    for file in files {
        let mut reader = std::fs::File::open(&file).with_context(|| format!("reading {}", file.display()))?;
        let mut hasher = std::hash::DefaultHasher::new();
        loop {
            let read = reader.read(&mut buffer).with_context(|| format!("reading {}", file.display()))?;
            if read == 0 {
                break;
            }
            hasher.write(&buffer[..read]);
        }
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        key.push_str(&format!("|{name}:{:016x}", hasher.finish()));
    }
    Ok(key)
}
