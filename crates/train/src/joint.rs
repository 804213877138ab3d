//! `recyclegpt train`: the paper's joint training from scratch. A Llama and its recyclable
//! module learn together, minimising L_lm + λ·L_rec, where L_rec is the module's cross-entropy
//! for x_{t+1} from (h_{t-1}, x_t) at every position.
use crate::checkpoint::{self, TrainState};
use crate::llama::TrainableLlama;
use crate::module::TrainableModule;
use crate::optim::AdamW;
use crate::schedule::{clip_gradients_all, learning_rate};
use crate::spec::TrainSpec;
use crate::TrainError;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use recyclegpt_model::{LlamaConfig, TextTokenizer};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the checkpoint in the output directory.
    pub resume: bool,
    /// Stop after this many steps in this run (the schedule still spans `steps`).
    pub stop_after: Option<usize>,
    pub progress: bool,
    /// A tokenizer directory to use instead of training one.
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub step: usize,
    pub train_loss: f32,
    pub lm_loss: f32,
    pub recycle_loss: f32,
    /// Every evaluation of this run, in order.
    pub evals: Vec<EvalPoint>,
    pub tokens_seen: usize,
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalPoint {
    pub loss: f64,
    pub perplexity: f64,
    pub agreement: f64,
}

struct Model {
    base: TrainableLlama,
    module: TrainableModule,
}

impl Model {
    /// (L_lm, L_rec) on windows `[B, T + 1]`.
    fn losses(&self, windows: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor, Tensor)> {
        let t = windows.dim(1)? - 1;
        let inputs = windows.narrow(1, 0, t)?;
        let (hidden, logits) = self.base.forward(&inputs)?;
        let vocab = logits.dim(D::Minus1)?;
        let lm =
            candle_nn::loss::cross_entropy(&logits.reshape(((), vocab))?, &windows.narrow(1, 1, t)?.flatten_all()?)?;
        // Pairs (h_{t-1}, x_t) for t = 1..T-1, predicting x_{t+1}.
        let module_logits = self.module.forward(&hidden.narrow(1, 0, t - 1)?, &windows.narrow(1, 1, t - 1)?)?;
        let rec = candle_nn::loss::cross_entropy(
            &module_logits.reshape(((), vocab))?,
            &windows.narrow(1, 2, t - 1)?.flatten_all()?,
        )?;
        Ok((lm, rec, logits, module_logits))
    }
}

/// A fresh model and module for `config` (the module sharing the model's embedding and head),
/// their variables, and an optimizer over all of them.
fn build(
    config: &LlamaConfig,
    weight_decay: f64,
    device: &Device,
) -> Result<(Model, VarMap, VarMap, AdamW), TrainError> {
    let (base_map, module_map) = (VarMap::new(), VarMap::new());
    let base = TrainableLlama::new(VarBuilder::from_varmap(&base_map, DType::F32, device), config)?;
    let module = TrainableModule::new(
        VarBuilder::from_varmap(&module_map, DType::F32, device),
        config,
        base.embedding().clone(),
        base.head_weight().clone(),
    )?;
    let optimizer = AdamW::new(checkpoint::named_vars(&base_map, &module_map), weight_decay)?;
    Ok((Model { base, module }, base_map, module_map, optimizer))
}

fn encode_files(files: &[PathBuf], tokenizer: &TextTokenizer) -> Result<Vec<Vec<u32>>, TrainError> {
    files
        .iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(path).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
            Ok(tokenizer.encode(&text)?)
        })
        .collect()
}

/// Held out: the last 5% of files (at least one) when there are several, else the last 5% of tokens.
fn split(streams: Vec<Vec<u32>>) -> (Vec<u32>, Vec<u32>) {
    if streams.len() >= 2 {
        let held = (streams.len() as f64 * 0.05).ceil() as usize;
        let (train, eval) = streams.split_at(streams.len() - held);
        return (train.concat(), eval.concat());
    }
    let all = streams.concat();
    let cut = all.len() - all.len() / 20;
    (all[..cut].to_vec(), all[cut..].to_vec())
}

/// Random windows of `len` tokens, drawn from a generator seeded by (seed, step): a resumed run
/// sees exactly the batches the uninterrupted one would.
fn windows(
    stream: &[u32],
    batch: usize,
    len: usize,
    seed: u64,
    step: usize,
    device: &Device,
) -> Result<Tensor, TrainError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut data = Vec::with_capacity(batch * len);
    for _ in 0..batch {
        let start = rng.random_range(0..=stream.len() - len);
        data.extend_from_slice(&stream[start..start + len]);
    }
    Ok(Tensor::from_vec(data, (batch, len), device)?)
}

/// Seeded initial values for every variable (candle's own initialisers draw from an unseeded
/// generator): norms start at one, matrices at N(0, 0.02).
fn initialise(maps: &[&VarMap], seed: u64) -> Result<(), TrainError> {
    for map in maps {
        let vars = map.data().lock().map_err(|_| TrainError::Data("variable map poisoned".into()))?;
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for (i, name) in names.into_iter().enumerate() {
            let var = &vars[name];
            let shape = var.shape().clone();
            let value = if var.rank() == 1 {
                Tensor::ones(&shape, DType::F32, &Device::Cpu)?
            } else {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(i as u64 * 7919));
                let normal = rand_distr::Normal::new(0f32, 0.02).map_err(|e| TrainError::Data(e.to_string()))?;
                let values: Vec<f32> = (0..shape.elem_count()).map(|_| rng.sample(normal)).collect();
                Tensor::from_vec(values, &shape, &Device::Cpu)?
            };
            var.set(&value)?;
        }
    }
    Ok(())
}

fn evaluate(model: &Model, held_out: &[u32], seq_len: usize, device: &Device) -> Result<EvalPoint, TrainError> {
    let len = seq_len + 1;
    let count = (held_out.len() / len).clamp(1, 8);
    let (mut loss, mut same, mut total) = (0.0, 0usize, 0usize);
    for i in 0..count {
        let start = (i * len).min(held_out.len() - len);
        let w = Tensor::new(&held_out[start..start + len], device)?.unsqueeze(0)?;
        let (lm, _, logits, module_logits) = model.losses(&w)?;
        loss += f64::from(lm.to_scalar::<f32>()?);
        // The module's pick for x_{t+1} against the full model's, t = 1..T-1.
        let full = logits.narrow(1, 1, seq_len - 1)?.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?;
        let drafts = module_logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?;
        same += full.iter().zip(&drafts).filter(|(a, b)| a == b).count();
        total += full.len();
    }
    let loss = loss / count as f64;
    Ok(EvalPoint { loss, perplexity: loss.exp(), agreement: same as f64 / total.max(1) as f64 })
}

pub fn train(
    files: &[PathBuf],
    out: &Path,
    spec: &TrainSpec,
    options: &TrainOptions,
) -> Result<TrainReport, TrainError> {
    if files.is_empty() {
        return Err(TrainError::Data("no training files given".into()));
    }
    for f in files {
        if !f.is_file() {
            return Err(TrainError::Data(format!("{}: no such file", f.display())));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::Data(format!("{}: {e}", out.display())))?;
    let resuming = options.resume && out.join(checkpoint::STATE).exists();
    if !resuming {
        match &options.tokenizer {
            Some(dir) => checkpoint::copy_tokenizer(dir, out)?,
            None => crate::tokenizer::train_tokenizer(files, spec.vocab_size, out)?,
        }
    }
    let mut config: LlamaConfig = spec.llama_config(checkpoint::vocab_size(out)?)?;
    config.recycle = Some(config.default_recycle(spec.recycle_layers));
    config.validate()?;
    checkpoint::write_configs(out, &config)?;
    let tokenizer = TextTokenizer::load(out, &config)?;
    let (train_stream, held_out) = split(encode_files(files, &tokenizer)?);
    let len = spec.seq_len + 1;
    if train_stream.len() < len || held_out.len() < len {
        return Err(TrainError::Data(format!(
            "the corpus has {} training and {} held-out tokens; each needs at least seq_len + 1 = {len}",
            train_stream.len(),
            held_out.len()
        )));
    }

    let device = Device::Cpu;
    let (model, base_map, module_map, mut optimizer) = build(&config, spec.weight_decay, &device)?;
    let mut state = TrainState { step: 0, tokens_seen: 0 };
    if resuming {
        state = checkpoint::load(out, &base_map, &module_map, &mut optimizer)?;
        tracing::info!(step = state.step, "resuming");
    } else {
        initialise(&[&base_map, &module_map], spec.seed)?;
    }

    let end = options.stop_after.map_or(spec.steps, |n| (state.step + n).min(spec.steps));
    let bar = if options.progress { ProgressBar::new((end - state.step) as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} step {msg} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let tokens_at_start = state.tokens_seen;
    let (mut last, mut lm_last, mut rec_last) = (f32::NAN, f32::NAN, f32::NAN);
    let mut evals = Vec::new();
    while state.step < end {
        let (count, tokens) = spec.window_shape(state.step);
        let batch = windows(&train_stream, count, tokens + 1, spec.seed, state.step, &device)?;
        let (lm, rec, _, _) = model.losses(&batch)?;
        let loss = (&lm + (&rec * spec.recycle_weight)?)?;
        let mut grads = loss.backward()?;
        clip_gradients_all(&[&base_map, &module_map], &mut grads, spec.max_grad_norm)?;
        optimizer.step(&grads, learning_rate(state.step, spec.steps, spec.warmup, spec.learning_rate))?;
        state.step += 1;
        state.tokens_seen += count * tokens;
        (last, lm_last, rec_last) = (loss.to_scalar()?, lm.to_scalar()?, rec.to_scalar()?);
        let rate = (state.tokens_seen - tokens_at_start) as f64 / started.elapsed().as_secs_f64();
        bar.set_message(format!(
            "{}/{}  loss {last:.3} (lm {lm_last:.3}, rec {rec_last:.3})  {rate:.0} tok/s",
            state.step, spec.steps
        ));
        bar.inc(1);
        let at_eval = spec.eval_every > 0 && state.step.is_multiple_of(spec.eval_every);
        if at_eval || state.step == end {
            // Held out at the window length being trained; the last evaluation is at the full context.
            let point = evaluate(&model, &held_out, spec.window_shape(state.step - 1).1, &device)?;
            tracing::info!(
                step = state.step,
                loss = point.loss,
                perplexity = point.perplexity,
                agreement = point.agreement,
                "eval"
            );
            evals.push(point);
            checkpoint::save(out, &base_map, &module_map, &optimizer, &state)?;
        }
    }
    bar.finish_and_clear();
    Ok(TrainReport {
        step: state.step,
        train_loss: last,
        lm_loss: lm_last,
        recycle_loss: rec_last,
        evals,
        tokens_seen: state.tokens_seen,
        tokens_per_second: (state.tokens_seen - tokens_at_start) as f64 / started.elapsed().as_secs_f64().max(1e-9),
    })
}

/// Training tokens/s of `spec`'s shape on random tokens (`recyclegpt bench train`): `steps`
/// timed steps after one untimed warm-up step, forward + backward + AdamW each.
pub fn bench(spec: &TrainSpec, vocab_size: usize, steps: usize) -> Result<f64, TrainError> {
    let mut config = spec.llama_config(vocab_size)?;
    config.recycle = Some(config.default_recycle(spec.recycle_layers));
    let device = Device::Cpu;
    let (model, _, _, mut optimizer) = build(&config, spec.weight_decay, &device)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let stream: Vec<u32> =
        (0..spec.batch * (spec.seq_len + 1) * 4).map(|_| rng.random_range(0..vocab_size as u32)).collect();
    let mut started = Instant::now();
    for step in 0..=steps {
        if step == 1 {
            started = Instant::now();
        }
        let batch = windows(&stream, spec.batch, spec.seq_len + 1, spec.seed, step, &device)?;
        let (lm, rec, _, _) = model.losses(&batch)?;
        let grads = ((&lm + (&rec * spec.recycle_weight)?)?).backward()?;
        optimizer.step(&grads, spec.learning_rate)?;
    }
    Ok((steps * spec.batch * spec.seq_len) as f64 / started.elapsed().as_secs_f64())
}
