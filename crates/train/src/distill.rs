//! `train-recycle`: a recyclable module for a model that already exists. The base model is
//! frozen; the module learns the base model's own next-token distribution (soft cross-entropy),
//! because acceptance in `verify` mode is agreement with the base model, not with a corpus.
use crate::corpus::Corpus;
use crate::module::TrainableModule;
use crate::schedule::{clip_gradients, learning_rate};
use crate::teacher::{self, Example};
use crate::{TeacherCache, TrainError};
use candle_core::{DType, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use recyclegpt_model::{LlamaConfig, RecycleGpt};
use std::path::Path;

/// Drafts a module trained with the feature loss may chain (the config's `max_draft_tokens`);
/// the serving cost model stops each chain earlier when the module is unsure.
const CHAINED_DRAFTS: usize = 3;

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
    /// Draft from this many tokens only (the ones the base model predicts most often on the
    /// corpus); `None`: the whole vocabulary.
    pub draft_vocab: Option<usize>,
    /// Weight of the feature loss (the module's output against the base's next hidden state,
    /// as EAGLE trains its draft head), which lets drafts be chained; 0 leaves it out.
    pub feature_weight: f64,
    /// Noise added to the module's input h during training, uniform within ± this share of
    /// each row's RMS (EAGLE's remedy for a draft head that sees only the base's exact
    /// states): in serving, a chained draft reads the module's own imperfect output, and a
    /// module that memorised its few thousand training windows agrees far less on new text.
    pub feature_noise: f64,
    /// Where the teacher pass is kept between runs; `None` computes it every run.
    pub teacher_cache: Option<TeacherCache>,
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
            draft_vocab: None,
            feature_weight: 0.3,
            feature_noise: 0.0,
            teacher_cache: None,
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
    /// The same on as many training sequences: far above `agreement`, the module memorised
    /// its corpus, and more text (not more steps) is what it needs.
    pub train_agreement: f64,
}

/// `hidden` with uniform noise within ± `level` times each row's RMS (unchanged at 0).
fn noisy(hidden: &Tensor, level: f64, rng: &mut impl Rng) -> Result<Tensor, TrainError> {
    if level <= 0.0 {
        return Ok(hidden.clone());
    }
    let level = level as f32;
    let values: Vec<f32> = (0..hidden.elem_count()).map(|_| rng.random_range(-level..=level)).collect();
    let rms = hidden.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
    let noise = Tensor::from_vec(values, hidden.shape(), hidden.device())?.broadcast_mul(&rms)?;
    Ok((hidden + noise)?)
}

/// Share of held-out positions where the module's argmax is the base model's.
fn agreement(module: &TrainableModule, held_out: &[Example]) -> Result<f64, TrainError> {
    let (mut same, mut total) = (0usize, 0usize);
    for example in held_out {
        let e = Example::stack(&[example])?;
        let predicted = module.forward(&e.hidden, &e.tokens)?.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?;
        let wanted = e.target.flatten_all()?.to_vec1::<u32>()?;
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
    let (train, held_out) = corpus.split(0.1);
    if train.is_empty() {
        return Err(TrainError::Data("the corpus has no training sequences".into()));
    }
    let started = std::time::Instant::now();
    let bar = teacher::progress_bar(train.len() + held_out.len(), options.progress);
    let view = |sequences| match &options.teacher_cache {
        Some(cache) => cache.examples(model, sequences, &bar),
        None => teacher::compute(model, sequences, &bar),
    };
    let mut train = view(train)?;
    let mut held_out = view(held_out)?;
    bar.finish_and_clear();
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "the base model's view of the corpus computed");
    let mut config: LlamaConfig = model.config().clone();
    let mut recycle = config.default_recycle(options.layers);
    let (embedding, head) = model.embedding_and_head()?;
    let mut head = head.clone();
    let draft_vocab = match options.draft_vocab {
        Some(size) if size < config.vocab_size => {
            let ids = teacher::draft_vocab(&train, config.vocab_size, size)?;
            head = head.index_select(&Tensor::new(ids.as_slice(), head.device())?, 0)?;
            train = train.iter().map(|e| e.restricted(&ids)).collect::<Result<_, _>>()?;
            held_out = held_out.iter().map(|e| e.restricted(&ids)).collect::<Result<_, _>>()?;
            recycle.draft_vocab_size = Some(ids.len());
            Some(ids)
        }
        _ => None,
    };
    if options.feature_weight > 0.0 {
        recycle.max_draft_tokens = Some(CHAINED_DRAFTS);
    }
    config.recycle = Some(recycle);
    config.validate()?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, model.device());
    let module = TrainableModule::new(vb, &config, embedding.clone(), head)?;
    let params = ParamsAdamW { lr: options.learning_rate, weight_decay: 0.0, ..ParamsAdamW::default() };
    let mut optimizer = AdamW::new(varmap.all_vars(), params)?;
    let started = std::time::Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    // Its own generator, so that the batches come in the same order with and without noise.
    let mut noise_rng = rand::rngs::StdRng::seed_from_u64(options.seed ^ 0x006e_6f69_7365);
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
        let e = Example::stack(&picked)?;
        let input = noisy(&e.hidden, options.feature_noise, &mut noise_rng)?;
        let (logits, features) = module.forward_with_features(&input, &e.tokens)?;
        let mut loss = crate::layers::top_k_cross_entropy(&logits, &e.top_ids, &e.top_probs)?;
        if options.feature_weight > 0.0 {
            // The module's output at x_t should read like the base's h_t (the next row of
            // `hidden`), so that it can stand in for it when drafts are chained.
            let positions = features.dim(1)?;
            if positions > 1 {
                let predicted = features.narrow(1, 0, positions - 1)?;
                let wanted = e.hidden.narrow(1, 1, positions - 1)?;
                loss = (loss + (crate::layers::feature_loss(&predicted, &wanted)? * options.feature_weight)?)?;
            }
        }
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
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(seconds, steps_per_second = options.steps as f64 / seconds, "module trained");
    let train_agreement = agreement(&module, &train[..held_out.len().min(train.len())])?;
    let agreement = agreement(&module, &held_out)?;
    if let Some(ids) = draft_vocab {
        // Saved beside the weights (ids as f32 values, exact below 2^24); added after the
        // optimizer took its variables, so it is never trained.
        let values: Vec<f32> = ids.iter().map(|&id| id as f32).collect();
        let tensor = Tensor::from_vec(values, ids.len(), model.device())?;
        let var = candle_core::Var::from_tensor(&tensor)?;
        varmap
            .data()
            .lock()
            .map_err(|_| TrainError::Data("the variable map is poisoned".into()))?
            .insert("draft_vocab".into(), var);
    }
    tracing::info!(first_loss, last_loss, agreement, train_agreement, "recyclable module trained");
    crate::output::write_model(model_dir, out, &config, &varmap)?;
    Ok(DistillReport { steps: options.steps, first_loss, last_loss, agreement, train_agreement })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn noise_stays_within_its_share_of_each_rows_rms() -> Result<(), TrainError> {
        let rows = [[3.0f32, -4.0, 0.0, 5.0], [0.1, 0.2, -0.1, 0.0]];
        let hidden = Tensor::new(&rows, &Device::Cpu)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(noisy(&hidden, 0.0, &mut rng)?.to_vec2::<f32>()?, hidden.to_vec2::<f32>()?);
        let noised = noisy(&hidden, 0.1, &mut rng)?.to_vec2::<f32>()?;
        for (row, out) in rows.iter().zip(&noised) {
            let rms = (row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32).sqrt();
            let moved: Vec<f32> = row.iter().zip(out).map(|(a, b)| (a - b).abs()).collect();
            assert!(moved.iter().all(|&m| m <= 0.1 * rms * 1.0001), "{row:?} → {out:?}");
            assert!(moved.iter().any(|&m| m > 0.0), "noise was added: {row:?}");
        }
        Ok(())
    }
}
