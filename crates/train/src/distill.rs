//! `train-recycle`: a recyclable module for a model that already exists. The base model is
//! frozen; the module learns the base model's own next-token distribution (soft cross-entropy),
//! because acceptance in `verify` mode is agreement with the base model, not with a corpus.
use crate::corpus::Corpus;
use crate::module::TrainableModule;
use crate::schedule::{clip_gradients, learning_rate};
use crate::teacher::{self, Example};
use crate::{TeacherCache, TrainError};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use recyclegpt_model::{LlamaConfig, RecycleConfig, RecycleGpt};
use std::path::{Path, PathBuf};

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
    /// Steps of a chain of drafts trained as serving runs them (1: the first draft alone):
    /// step i feeds step i-1's output back as h, with the token after, and learns the base's
    /// distribution there. The module then chains up to this many drafts.
    pub chain_steps: usize,
    /// Weight of each chained step's cross-entropy beside the first draft's.
    pub chain_weight: f64,
    /// Start from the module in this directory (what `--out` wrote) instead of random weights.
    /// It must have `layers` and a draft vocabulary of `draft_vocab` tokens; its own ids are
    /// kept rather than chosen again from the corpus. A module of the paper's form may start
    /// one of EAGLE-3's form: `fc` then passes the last feature layer through, as the paper's
    /// form reads it, and learns to use the others.
    pub init: Option<PathBuf>,
    /// EAGLE-3's form: the module reads the outputs of these base layers (counted from 1,
    /// rising), fused; `None`: the paper's form, the last hidden state.
    pub feature_layers: Option<Vec<usize>>,
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
            chain_steps: 1,
            chain_weight: 0.5,
            init: None,
            feature_layers: None,
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
    /// Held-out agreement at each trained chain step after the first, over the positions a
    /// chain reaches in serving: where every draft before it was the base's argmax, and so was
    /// the text's next token (training feeds the text's token; serving feeds the draft).
    pub chain_agreement: Vec<f64>,
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

/// Share of the positions of `examples` where the module's argmax is the base model's, at each
/// of `steps` chain steps; a chained step counts only the rows a chain reaches (see
/// [`DistillReport::chain_agreement`]). `draft_vocab` maps the text's tokens to the module's
/// outputs.
fn agreement(
    module: &TrainableModule,
    examples: &[Example],
    steps: usize,
    draft_vocab: Option<&[u32]>,
) -> Result<Vec<f64>, TrainError> {
    let mut counts = vec![(0usize, 0usize); steps];
    for example in examples {
        let e = Example::stack(&[example])?;
        let wanted = e.target.flatten_all()?.to_vec1::<u32>()?;
        let reached = text_is_choice(&e, draft_vocab)?.flatten_all()?.to_vec1::<f32>()?;
        // Rows whose chain is still alive: every draft so far right, and the text with them.
        let mut alive = vec![true; wanted.len()];
        for (step, (logits, _)) in module.forward_chain(&e.hidden, &e.tokens, steps)?.iter().enumerate() {
            let predicted = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?;
            let (same, total) = &mut counts[step];
            for (r, &guess) in predicted.iter().enumerate() {
                if !alive[r] {
                    continue;
                }
                let right = guess == wanted[r + step];
                *same += usize::from(right);
                *total += 1;
                alive[r] = right && reached.get(r + step) == Some(&1.0);
            }
        }
    }
    Ok(counts.iter().map(|&(same, total)| if total == 0 { 0.0 } else { same as f64 / total as f64 }).collect())
}

/// Token `id` as the module's output index (its place in `draft_vocab`, sorted); an id no output
/// holds maps to one no base choice has (`Example::target` marks those `u32::MAX`).
fn output_id(id: u32, draft_vocab: Option<&[u32]>) -> u32 {
    match draft_vocab {
        Some(ids) => ids.binary_search(&id).map_or(u32::MAX - 1, |i| i as u32),
        None => id,
    }
}

/// `[B, T - 1]`: 1 where the text's next token (row r + 1's x) is the base's argmax at row r,
/// in the module's output ids (`draft_vocab` maps them).
fn text_is_choice(e: &Example, draft_vocab: Option<&[u32]>) -> Result<Tensor, TrainError> {
    let tokens = e.tokens.to_vec2::<u32>()?;
    let target = e.target.to_vec2::<u32>()?;
    let rows = tokens.first().map_or(0, Vec::len).saturating_sub(1);
    let values: Vec<f32> = tokens
        .iter()
        .zip(&target)
        .flat_map(|(t, w)| (0..rows).map(move |r| f32::from(u8::from(output_id(t[r + 1], draft_vocab) == w[r]))))
        .collect();
    Ok(Tensor::from_vec(values, (tokens.len(), rows), e.tokens.device())?)
}

/// The module of `dir`'s `recycle.safetensors`: its `recycle` block (from `config.json`) and its
/// draft vocabulary, if it has one (checked: sorted ids within `vocab`).
fn init_module(dir: &Path, vocab: usize) -> Result<(RecycleConfig, Option<Vec<u32>>), TrainError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let config: LlamaConfig =
        serde_json::from_str(&text).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let recycle =
        config.recycle.ok_or_else(|| TrainError::Data(format!("{} has no `recycle` block", path.display())))?;
    let path = dir.join("recycle.safetensors");
    let weights = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let ids: Option<Vec<u32>> = match weights.get("draft_vocab") {
        Some(ids) => Some(ids.to_vec1::<f32>()?.into_iter().map(|id| id as u32).collect()),
        None => None,
    };
    if let Some(ids) = &ids {
        if !ids.windows(2).all(|w| w[0] < w[1]) || ids.last().is_some_and(|&id| id as usize >= vocab) {
            return Err(TrainError::Data(format!(
                "{}: `draft_vocab` is not a sorted list of token ids",
                path.display()
            )));
        }
    }
    Ok((recycle, ids))
}

/// Sets `varmap`'s variables from the module file at `path`. Fusion weights the file lacks (a
/// module of the paper's form starting one of EAGLE-3's) start as the paper's form: the norms
/// at one and `fc` passing the last feature layer through (a norm before `hnorm` changes
/// nothing, as RMSNorm is scale-free), so training starts from the module's own agreement.
fn load_init(varmap: &VarMap, path: &Path) -> Result<(), TrainError> {
    let saved = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    let data = varmap.data().lock().map_err(|_| TrainError::Data("the variable map is poisoned".into()))?;
    for (name, var) in data.iter() {
        let value = match saved.get(name) {
            Some(value) => value.to_device(var.device())?.to_dtype(var.dtype())?,
            None if name.starts_with("taps.") => var.ones_like()?,
            None if name == "fc.weight" => {
                let (d, wide) = var.dims2()?;
                let zeros = Tensor::zeros((d, wide - d), var.dtype(), var.device())?;
                Tensor::cat(&[zeros, Tensor::eye(d, var.dtype(), var.device())?], 1)?
            }
            None => return Err(TrainError::Data(format!("{}: no `{name}` tensor", path.display()))),
        };
        var.set(&value)?;
    }
    Ok(())
}

/// The loss of one batch: the first draft's cross-entropy against the base's top K, each
/// chained step's where serving's chain reaches, and the feature loss.
fn batch_loss(
    module: &TrainableModule,
    e: &Example,
    options: &DistillOptions,
    ids: Option<&[u32]>,
    noise_rng: &mut impl Rng,
) -> Result<Tensor, TrainError> {
    let input = noisy(&e.hidden, options.feature_noise, noise_rng)?;
    let passes = module.forward_chain(&input, &e.tokens, options.chain_steps)?;
    let (logits, features) =
        passes.first().ok_or_else(|| TrainError::Data("a training window has no positions".into()))?;
    let mut loss = crate::layers::top_k_cross_entropy(logits, &e.top_ids, &e.top_probs)?;
    // Where the text's next token is the base's choice: only there does a chain in serving
    // (which feeds its drafts, the base's choices when accepted) see what training feeds.
    let reached = if passes.len() > 1 { Some(text_is_choice(e, ids)?) } else { None };
    let mut alive: Option<Tensor> = None;
    for (ahead, (logits, _)) in passes.iter().enumerate().skip(1) {
        // Chain step i's row r drafts what the first step's row r + i does, and is reached
        // where the text took the base's choice at rows r..r + i - 1.
        let rows = logits.dim(1)?;
        let choice = reached.as_ref().map(|c| c.narrow(1, ahead - 1, rows)).transpose()?;
        let mask = match (alive.take(), choice) {
            (Some(before), Some(choice)) => (before.narrow(1, 0, rows)? * choice)?,
            (None, Some(choice)) => choice,
            (_, None) => return Err(TrainError::Data("a chained step without its mask".into())),
        };
        let (top, probs) = (e.top_ids.narrow(1, ahead, rows)?, e.top_probs.narrow(1, ahead, rows)?);
        let chained = crate::layers::masked_top_k_cross_entropy(logits, &top, &probs, &mask)?;
        loss = (loss + (chained * options.chain_weight)?)?;
        alive = Some(mask);
    }
    let positions = features.dim(1)?;
    if options.feature_weight > 0.0 && positions > 1 {
        // The module's output at x_t should read like what it reads at t (the base's next
        // feature, held fixed), so that it can stand in for it when drafts are chained.
        let predicted = features.narrow(1, 0, positions - 1)?;
        let wanted = module.input_features(&e.hidden)?.detach().narrow(1, 1, positions - 1)?;
        loss = (loss + (crate::layers::feature_loss(&predicted, &wanted)? * options.feature_weight)?)?;
    }
    Ok(loss)
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
    // Checked before the teacher pass, which is the slow part.
    if options.chain_steps == 0 || options.chain_steps >= corpus.shortest() || options.chain_weight < 0.0 {
        return Err(TrainError::Data(format!(
            "chain steps must be at least 1 and below the shortest sequence's {} tokens, and the chain weight \
             not negative",
            corpus.shortest()
        )));
    }
    let mut config: LlamaConfig = model.config().clone();
    let mut recycle = config.default_recycle(options.layers);
    recycle.feature_layers = options.feature_layers.clone();
    let taps = recycle.taps(config.num_hidden_layers);
    config.recycle = Some(recycle.clone());
    config.validate()?;
    let started = std::time::Instant::now();
    let bar = teacher::progress_bar(train.len() + held_out.len(), options.progress);
    let view = |sequences| match &options.teacher_cache {
        Some(cache) => cache.examples(model, sequences, &taps, &bar),
        None => teacher::compute(model, sequences, &taps, &bar),
    };
    let mut train = view(train)?;
    let mut held_out = view(held_out)?;
    bar.finish_and_clear();
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "the base model's view of the corpus computed");
    let (embedding, mut head) = model.embedding_and_head()?;
    let init = match &options.init {
        Some(dir) => {
            let (init, ids) = init_module(dir, config.vocab_size)?;
            let wanted = options.draft_vocab.filter(|&size| size < config.vocab_size);
            let fused = init.feature_layers.is_some();
            let last = config.num_hidden_layers;
            if !fused && options.feature_layers.as_ref().is_some_and(|layers| layers.last() != Some(&last)) {
                // `fc` starts passing the last feature layer through, as the paper's form reads
                // the last hidden state: only the same layer continues that module.
                return Err(TrainError::Data(format!(
                    "a module of the paper's form starts one of EAGLE-3's only when the last feature layer is the \
                     model's last ({last})"
                )));
            }
            if init.num_layers != options.layers
                || ids.as_ref().map(Vec::len) != wanted
                || (fused && init.feature_layers != options.feature_layers)
            {
                let vocab = ids.as_ref().map_or(String::new(), |ids| format!(" --draft-vocab {}", ids.len()));
                let taps = init.feature_layers.map_or(String::new(), |layers| {
                    let layers: Vec<String> = layers.iter().map(usize::to_string).collect();
                    format!(" --feature-layers {}", layers.join(","))
                });
                return Err(TrainError::Data(format!(
                    "the module in {} was trained with --layers {}{vocab}{taps}: give the same with --init",
                    dir.display(),
                    init.num_layers
                )));
            }
            Some(ids)
        }
        None => None,
    };
    let draft_vocab = match options.draft_vocab {
        Some(size) if size < config.vocab_size => {
            let ids = match init {
                Some(Some(ids)) => ids,
                _ => teacher::draft_vocab(&train, config.vocab_size, size)?,
            };
            head = head.index_select(&Tensor::new(ids.as_slice(), head.device())?, 0)?;
            train = train.iter().map(|e| e.restricted(&ids)).collect::<Result<_, _>>()?;
            held_out = held_out.iter().map(|e| e.restricted(&ids)).collect::<Result<_, _>>()?;
            recycle.draft_vocab_size = Some(ids.len());
            Some(ids)
        }
        _ => None,
    };
    let chain_steps = options.chain_steps;
    let chainable = if options.feature_weight > 0.0 { chain_steps.max(CHAINED_DRAFTS) } else { chain_steps };
    recycle.max_draft_tokens = (chainable > 1).then_some(chainable);
    config.recycle = Some(recycle);
    config.validate()?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, model.device());
    let module = TrainableModule::new(vb, &config, embedding.clone(), head)?;
    if let Some(dir) = &options.init {
        load_init(&varmap, &dir.join("recycle.safetensors"))?;
    }
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
    let ids = draft_vocab.as_deref();
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
        let loss = batch_loss(&module, &e, options, ids, &mut noise_rng)?;
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
    let train_agreement = agreement(&module, &train[..held_out.len().min(train.len())], 1, ids)?[0];
    let mut chain_agreement = agreement(&module, &held_out, chain_steps, ids)?;
    let agreement = chain_agreement.remove(0);
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
    tracing::info!(first_loss, last_loss, agreement, train_agreement, ?chain_agreement, "recyclable module trained");
    crate::output::write_model(model_dir, out, &config, &varmap)?;
    Ok(DistillReport { steps: options.steps, first_loss, last_loss, agreement, train_agreement, chain_agreement })
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

    /// A chain goes on from row r only where the text's next token is the base's choice there,
    /// compared in the module's output ids; a token outside the draft vocabulary never is.
    #[test]
    fn a_chain_is_reached_where_the_text_took_the_bases_choice() -> Result<(), TrainError> {
        let device = Device::Cpu;
        let vocab = [4u32, 7, 9, 30];
        // x_t per row, and the base's argmax per row as draft-vocabulary indices (MAX: outside).
        let tokens = Tensor::new(&[[4u32, 7, 9, 5, 30]], &device)?;
        let target = Tensor::new(&[[1u32, 0, u32::MAX, 3, 2]], &device)?;
        let zeros = Tensor::zeros((1, 5, 2), DType::F32, &device)?;
        let e =
            Example { hidden: zeros.clone(), tokens, top_ids: zeros.to_dtype(DType::U32)?, top_probs: zeros, target };
        // Row 0: 7 is index 1 (yes); row 1: 9 is 2, not 0; row 2: 5 is outside the vocabulary;
        // row 3: 30 is index 3 (yes).
        assert_eq!(text_is_choice(&e, Some(&vocab))?.to_vec2::<f32>()?, [[1.0, 0.0, 0.0, 1.0]]);
        assert_eq!(output_id(5, Some(&vocab)), u32::MAX - 1);
        assert_eq!(output_id(5, None), 5);
        Ok(())
    }
}
