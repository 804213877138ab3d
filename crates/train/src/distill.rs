//! `train-recycle`: a recyclable module for a model that already exists. The base model is
//! frozen; the module learns the base model's own next-token distribution (soft cross-entropy),
//! because acceptance in `verify` mode is agreement with the base model, not with a corpus.
use crate::corpus::Corpus;
use crate::module::TrainableModule;
use crate::schedule::{clip_gradients, learning_rate};
use crate::TrainError;
use candle_core::{DType, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use recyclegpt_model::{LlamaConfig, RecycleGpt, SeqInput};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct DistillOptions {
    pub layers: usize,
    pub steps: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub warmup: usize,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub progress: bool,
}

impl Default for DistillOptions {
    fn default() -> Self {
        Self {
            layers: 1,
            steps: 300,
            batch: 8,
            learning_rate: 3e-3,
            warmup: 20,
            max_grad_norm: 1.0,
            seed: 0,
            progress: true,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DistillReport {
    pub steps: usize,
    pub first_loss: f32,
    pub last_loss: f32,
    /// Top-1 agreement of the module with the base model on held-out sequences.
    pub agreement: f64,
}

/// The teacher's view of one sequence: h_{t-1}, x_t, and the base distribution for x_{t+1}.
struct Example {
    hidden: Tensor,
    tokens: Tensor,
    targets: Tensor,
}

fn teacher(model: &RecycleGpt, sequence: &[u32]) -> Result<Example, TrainError> {
    let n = sequence.len();
    let mut cache = model.new_cache(n)?;
    let out = model.forward(&mut [SeqInput { tokens: sequence, cache: &mut cache, logits_rows: (1..n).collect() }])?;
    let logits = Tensor::new(out.logits, model.device())?;
    Ok(Example {
        hidden: out.hidden.narrow(0, 0, n - 1)?,
        tokens: Tensor::new(&sequence[1..], model.device())?,
        targets: candle_nn::ops::softmax_last_dim(&logits)?,
    })
}

fn batch(model: &RecycleGpt, sequences: &[&Vec<u32>]) -> Result<Example, TrainError> {
    let examples = sequences.iter().map(|s| teacher(model, s)).collect::<Result<Vec<_>, _>>()?;
    let stack = |f: fn(&Example) -> &Tensor| Tensor::stack(&examples.iter().map(f).collect::<Vec<_>>(), 0);
    Ok(Example { hidden: stack(|e| &e.hidden)?, tokens: stack(|e| &e.tokens)?, targets: stack(|e| &e.targets)? })
}

/// Share of held-out positions where the module's argmax is the base model's.
fn agreement(model: &RecycleGpt, module: &TrainableModule, held_out: &[Vec<u32>]) -> Result<f64, TrainError> {
    let (mut same, mut total) = (0usize, 0usize);
    for sequence in held_out {
        let e = batch(model, &[sequence])?;
        let predicted = module.forward(&e.hidden, &e.tokens)?.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?;
        let wanted = e.targets.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?;
        same += predicted.iter().zip(&wanted).filter(|(a, b)| a == b).count();
        total += wanted.len();
    }
    Ok(if total == 0 { 0.0 } else { same as f64 / total as f64 })
}

/// Trains a module for `model` on `corpus` and writes it into `out` (`recycle.safetensors`
/// and the `recycle` block of `config.json`, beside a copy of the model's files).
pub fn train_recycle(
    model: &RecycleGpt,
    model_dir: &Path,
    corpus: &Corpus,
    out: &Path,
    options: &DistillOptions,
) -> Result<DistillReport, TrainError> {
    let mut config: LlamaConfig = model.config().clone();
    config.recycle = Some(config.default_recycle(options.layers));
    config.validate()?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, model.device());
    let (embedding, head) = model.embedding_and_head()?;
    let module = TrainableModule::new(vb, &config, embedding.clone(), head.clone())?;
    let params = ParamsAdamW { lr: options.learning_rate, weight_decay: 0.0, ..ParamsAdamW::default() };
    let mut optimizer = AdamW::new(varmap.all_vars(), params)?;
    let (train, held_out) = corpus.split(0.1);
    if train.is_empty() {
        return Err(TrainError::Data("the corpus has no training sequences".into()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let bar = if options.progress { ProgressBar::new(options.steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut first_loss, mut last_loss) = (f32::NAN, f32::NAN);
    let mut cursor = order.len();
    for step in 0..options.steps {
        let mut picked = Vec::with_capacity(options.batch);
        while picked.len() < options.batch.min(train.len()) {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            picked.push(&train[order[cursor]]);
            cursor += 1;
        }
        let e = batch(model, &picked)?;
        let logits = module.forward(&e.hidden, &e.tokens)?;
        let vocab = logits.dim(D::Minus1)?;
        let loss = crate::layers::soft_cross_entropy(&logits.reshape(((), vocab))?, &e.targets.reshape(((), vocab))?)?;
        let mut grads = loss.backward()?;
        clip_gradients(&varmap, &mut grads, options.max_grad_norm)?;
        optimizer.set_learning_rate(learning_rate(step, options.steps, options.warmup, options.learning_rate));
        optimizer.step(&grads)?;
        last_loss = loss.to_scalar::<f32>()?;
        if step == 0 {
            first_loss = last_loss;
        }
        bar.set_message(format!("loss {last_loss:.4}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let agreement = agreement(model, &module, held_out)?;
    tracing::info!(first_loss, last_loss, agreement, "recyclable module trained");
    crate::output::write_model(model_dir, out, &config, &varmap)?;
    Ok(DistillReport { steps: options.steps, first_loss, last_loss, agreement })
}
