//! `recyclegpt bench decode`: what one decode step costs, what each decoding mode delivers, and
//! how throughput grows with the batch, all in one process.
use crate::bandwidth::{copy_bandwidth_gb_per_s, read_bandwidth_gb_per_s};
use crate::{median_ms, time};
use rand::{Rng, SeedableRng};
use recyclegpt_engine::agreement::module_agreement;
use recyclegpt_engine::{
    generate_with_costs, CostModel, DecodeMode, EngineError, SamplingParams, SequenceStats, StopCriteria,
};
use recyclegpt_model::{ForwardOutput, KvCache, LlamaConfig, RecycleGpt, SeqInput};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub rounds: usize,
    /// Tokens already cached when a step is timed.
    pub cached: usize,
    /// Tokens generated per mode per round.
    pub generate_tokens: usize,
    pub batch_sizes: Vec<usize>,
    /// Prompts the decode modes are compared on (each generates `generate_tokens`, or stops
    /// at an end of sequence); empty: a continuation of the random cached tokens.
    pub prompts: Vec<Vec<u32>>,
    /// Where those prompts' answers end (the tokenizer's end-of-sequence ids).
    pub eos_ids: Vec<u32>,
    /// `verify` and `auto` also draft from the text where it repeats itself.
    pub prompt_lookup: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            rounds: 5,
            cached: 128,
            generate_tokens: 32,
            batch_sizes: vec![1, 4, 8, 16],
            prompts: Vec::new(),
            eos_ids: Vec::new(),
            prompt_lookup: true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeReport {
    pub shape: String,
    /// `cpu` or `cuda:N`, and the weights' dtype.
    pub device: String,
    pub dtype: String,
    /// The format the linear layers are kept in (`none`, `q8_0`, `q4_0`, `q4_1`).
    pub quantization: String,
    /// Tokens in the cache when steps are timed.
    pub cached_tokens: usize,
    pub params: usize,
    /// Bytes of weights one single-token forward reads (layers, final norm and output head).
    pub weight_bytes: usize,
    pub forward_1_ms: f64,
    /// A forward over that many tokens of one sequence (a chain's verification), logits for
    /// each: what drafting more tokens per step costs.
    pub forward_ms: BTreeMap<usize, f64>,
    pub recycle_step_ms: f64,
    pub head_ms: f64,
    pub tokens_per_second: BTreeMap<String, f64>,
    /// Tokens per full forward in `verify` mode (a random module is nearly always rejected).
    pub verify_tokens_per_full_forward: f64,
    /// In `verify`, the share of drafts accepted at each place of a chain (one entry without
    /// chains), over the last round.
    pub verify_acceptance_by_position: Vec<f64>,
    /// In `verify`, over the last round: drafted tokens read from the text (prompt lookup)
    /// rather than made by the module, and how many of them were accepted.
    pub verify_text_drafted: usize,
    pub verify_text_accepted: usize,
    /// In `auto`, over the last round: tokens per full forward, and the share of decode steps
    /// on which it chose not to draft.
    pub auto_tokens_per_full_forward: f64,
    pub auto_skipped_share: f64,
    /// Module top-1 agreement with the full model along the standard greedy text (`None`
    /// without a module); greedy verify emits about 1 + this many tokens per full forward.
    pub module_agreement: Option<f64>,
    pub batched_tokens_per_second: BTreeMap<String, f64>,
    pub batched_2_tokens_per_second: BTreeMap<String, f64>,
    /// Prompt tokens per second when a prompt of this many tokens is fed in one forward
    /// (lengths that fit the context).
    pub prefill_tokens_per_second: BTreeMap<String, f64>,
    /// A large copy, read + write traffic.
    pub bandwidth_gb_per_s: f64,
    /// A large read.
    pub read_bandwidth_gb_per_s: f64,
    /// Weight bytes ÷ 1-token forward time, as a fraction of the read bandwidth.
    pub weight_read_fraction: f64,
}

/// The machine's measured memory bandwidths (GB/s).
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    pub copy: f64,
    pub read: f64,
}

impl Bandwidth {
    /// Copy and read bandwidth over 1 GiB, best of 5.
    pub fn measure() -> Self {
        Self { copy: copy_bandwidth_gb_per_s(1 << 30, 5), read: read_bandwidth_gb_per_s(1 << 30, 5) }
    }
}

/// Parameters of the base model (the module excluded).
pub fn parameter_count(c: &LlamaConfig) -> usize {
    let s = c.base_shape();
    let attention = s.hidden * s.head_dim * (2 * s.heads + 2 * s.kv_heads);
    let layer = attention + 3 * s.hidden * s.intermediate + 2 * s.hidden;
    let embed = c.vocab_size * c.hidden_size;
    let head = if c.tie_word_embeddings { 0 } else { embed };
    embed + s.layers * layer + s.hidden + head
}

/// Tokens per forward whose cost is reported (one sequence, as a chain's verification).
const FORWARD_SIZES: [usize; 5] = [1, 2, 4, 8, 16];

/// Prompt lengths whose prefill speed is reported.
const PREFILL_LENGTHS: [usize; 2] = [128, 512];

fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(3..vocab as u32)).collect()
}

/// Runs `tokens` through the full model on `cache`, asking for logits at `rows`.
fn full(
    model: &RecycleGpt,
    cache: &mut KvCache,
    tokens: &[u32],
    rows: Vec<usize>,
) -> Result<ForwardOutput, EngineError> {
    Ok(model.forward(&mut [SeqInput { tokens, cache, logits_rows: rows }])?)
}

/// The module's agreement rate along `text` from position `from` (>= 1) on.
fn agreement_rate(model: &RecycleGpt, text: &[u32], from: usize) -> Result<Option<f64>, EngineError> {
    if !model.has_recycle() || text.len() < from + 2 {
        return Ok(None);
    }
    let mut cache = model.new_cache(text.len())?;
    let logits_rows = (from..text.len() - 1).collect();
    let out = model.forward(&mut [SeqInput { tokens: text, cache: &mut cache, logits_rows }])?;
    let counts = module_agreement(model, text, &out.features, &out.logits, from)?;
    Ok(counts.map(|(same, compared)| same as f64 / compared as f64))
}

pub fn run(
    name: &str,
    model: &RecycleGpt,
    options: &DecodeOptions,
    bandwidth: Bandwidth,
) -> Result<DecodeReport, EngineError> {
    let config = model.config();
    let params = parameter_count(config);
    let weight_bytes = model.weight_bytes();
    let vocab = config.vocab_size;
    // A short-context model caches half its context and generates into part of the rest.
    let context = model.context_len();
    let cached = options.cached.min(context / 2).max(2);
    let generate_tokens = options.generate_tokens.min(context.saturating_sub(cached + 2)).max(1);
    let capacity = (cached + generate_tokens + 4).min(context);
    let prompt = random_tokens(cached, vocab, 1);
    tracing::info!(shape = name, params, "prefilling {cached} tokens");

    let mut cache = model.new_cache(capacity)?;
    let prompt_features = full(model, &mut cache, &prompt, vec![])?.features;
    let mut module_cache = model.new_recycle_cache(capacity)?;
    if let Some(module_cache) = module_cache.as_mut() {
        // The module's cache holds the same positions (pairs h_{t-1}, x_t for t = 1..).
        let pairs = prompt_features.narrow(0, 0, cached - 1)?;
        model.recycle_forward(
            &pairs,
            &mut [SeqInput { tokens: &prompt[1..], cache: module_cache, logits_rows: vec![] }],
        )?;
    }
    // One cost model for every generation of the run, as a server keeps one for its life:
    // what one generation timed serves the next. Modes share it, as requests in a server do:
    // `verify`'s chains time the larger forwards that `auto` decides with.
    let mut costs = CostModel::measure(model, 1)?;
    let mut batch_caches: Vec<KvCache> = Vec::new();
    for _ in 0..options.batch_sizes.iter().copied().max().unwrap_or(1) {
        batch_caches.push(cache.duplicate()?);
    }

    let next = random_tokens(FORWARD_SIZES[FORWARD_SIZES.len() - 1], vocab, 2);
    let mut forwards: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut record = |key: &'static str, seconds: f64| samples.entry(key).or_default().push(seconds);
    let mut mode_rates: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut batched: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    let mut verify_tpf = Vec::new();
    let mut acceptance_by_position = Vec::new();
    let mut text_drafts = (0, 0);
    let mut verify_emitted = 0usize;
    let mut auto_figures = (0.0, 0.0);
    // Chat prompts end at the model's end of sequence, as served; random text never does.
    let eos_ids: Vec<u32> = if options.prompts.is_empty() { Vec::new() } else { options.eos_ids.clone() };
    let prefill_lengths: Vec<usize> = PREFILL_LENGTHS.iter().copied().filter(|&n| n < context).collect();
    let mut prefill: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut standard_text: Vec<u32> = Vec::new();
    let modes: Vec<DecodeMode> = if model.has_recycle() {
        vec![DecodeMode::Off, DecodeMode::Auto, DecodeMode::Verify, DecodeMode::Alternate]
    } else {
        vec![DecodeMode::Off]
    };
    let base = cached;
    for round in 0..options.rounds {
        tracing::info!(shape = name, round, "round");
        // The 2-token forward's rows feed the head and module timings below.
        let mut two = None;
        for &size in &FORWARD_SIZES {
            let (out, t) = time(|| full(model, &mut cache, &next[..size], (0..size).collect()));
            let out = out?;
            forwards.entry(size).or_default().push(t);
            cache.truncate(base);
            if size == 2 {
                two = Some(out);
            }
        }
        let two = two.ok_or_else(|| EngineError::Internal("FORWARD_SIZES lacks 2".into()))?;
        let (_, t) = time(|| model.head_logits(&two.hidden.narrow(0, 1, 1)?));
        record("head", t);
        if let Some(module_cache) = module_cache.as_mut() {
            let (out, t) = time(|| {
                model.recycle_forward(
                    &two.features,
                    &mut [SeqInput { tokens: &next[..2], cache: module_cache, logits_rows: vec![1] }],
                )
            });
            out?;
            record("recycle_step", t);
            module_cache.truncate(base - 1);
        }
        for &size in &options.batch_sizes {
            for new in [1usize, 2] {
                let tokens: Vec<Vec<u32>> = (0..size).map(|i| random_tokens(new, vocab, 10 + i as u64)).collect();
                let mut inputs: Vec<SeqInput> = batch_caches
                    .iter_mut()
                    .zip(&tokens)
                    .map(|(cache, tokens)| SeqInput { tokens, cache, logits_rows: (0..new).collect() })
                    .collect();
                let (out, t) = time(|| model.forward(&mut inputs));
                out?;
                batched.entry((size, new)).or_default().push((size * new) as f64 / t);
                batch_caches.iter_mut().for_each(|c| c.truncate(base));
            }
        }
        for &length in &prefill_lengths {
            let tokens = random_tokens(length, vocab, 20 + round as u64);
            let mut fresh = model.new_cache(length)?;
            let (out, t) = time(|| full(model, &mut fresh, &tokens, vec![length - 1]));
            out?;
            prefill.entry(length).or_default().push(length as f64 / t);
        }
        let prompts = if options.prompts.is_empty() { std::slice::from_ref(&prompt) } else { &options.prompts };
        for &mode in &modes {
            let (mut tokens, mut seconds, mut forwards) = (0usize, 0f64, 0usize);
            let mut stats = SequenceStats::default();
            let mut emitted = 0usize;
            for (i, prompt) in prompts.iter().enumerate() {
                let room = context.saturating_sub(prompt.len() + 1).max(1);
                let stop = StopCriteria { max_tokens: generate_tokens.min(room), eos_ids: eos_ids.clone() };
                let generation = generate_with_costs(
                    model,
                    prompt.clone(),
                    mode,
                    SamplingParams::greedy(),
                    stop,
                    options.prompt_lookup,
                    costs.as_mut(),
                )?;
                tokens += generation.decode_tokens;
                seconds += generation.decode_seconds;
                forwards += generation.stats.full_forwards;
                for j in 0..stats.drafted_at.len() {
                    stats.drafted_at[j] += generation.stats.drafted_at[j];
                    stats.accepted_at[j] += generation.stats.accepted_at[j];
                }
                stats.text_drafted += generation.stats.text_drafted;
                stats.text_accepted += generation.stats.text_accepted;
                stats.skipped_drafts += generation.stats.skipped_drafts;
                emitted += generation.ids.len();
                if mode == DecodeMode::Verify {
                    verify_emitted += generation.ids.len();
                }
                if mode == DecodeMode::Off && i == 0 {
                    standard_text = generation.ids;
                }
            }
            mode_rates.entry(mode.as_str().to_string()).or_default().push(tokens as f64 / seconds.max(1e-9));
            if mode == DecodeMode::Auto {
                let steps = (forwards.saturating_sub(prompts.len())).max(1) as f64;
                auto_figures = (emitted as f64 / forwards.max(1) as f64, stats.skipped_drafts as f64 / steps);
            }
            if mode == DecodeMode::Verify {
                verify_tpf.push(verify_emitted as f64 / forwards.max(1) as f64);
                verify_emitted = 0;
                text_drafts = (stats.text_drafted, stats.text_accepted);
                acceptance_by_position = (0..stats.drafted_at.len())
                    .filter(|&j| stats.drafted_at[j] > 0)
                    .map(|j| stats.accepted_at[j] as f64 / stats.drafted_at[j] as f64)
                    .collect();
            }
        }
    }

    // Agreement along the text that verify checks: the first prompt's greedy continuation.
    let first = options.prompts.first().unwrap_or(&prompt);
    let text: Vec<u32> = first.iter().chain(&standard_text).copied().collect();
    let module_agreement = agreement_rate(model, &text, first.len())?;
    let mut ms = |key: &str| median_ms(samples.get_mut(key).map(Vec::as_mut_slice).unwrap_or(&mut []));
    let median = |v: &mut Vec<f64>| median_ms(v) / 1e3;
    let forward_ms: BTreeMap<usize, f64> = forwards.iter_mut().map(|(&n, v)| (n, median_ms(v))).collect();
    let forward_1_ms = forward_ms.get(&1).copied().unwrap_or(f64::NAN);
    Ok(DecodeReport {
        shape: name.to_string(),
        device: recyclegpt_model::device_name(model.device()),
        dtype: format!("{:?}", model.dtype()).to_lowercase(),
        quantization: model.quantization().map_or("none".into(), |q| q.to_string()),
        cached_tokens: cached,
        params,
        weight_bytes,
        forward_1_ms,
        forward_ms,
        recycle_step_ms: ms("recycle_step"),
        head_ms: ms("head"),
        tokens_per_second: mode_rates.iter_mut().map(|(k, v)| (k.clone(), median(v))).collect(),
        verify_tokens_per_full_forward: median(&mut verify_tpf),
        verify_acceptance_by_position: acceptance_by_position,
        verify_text_drafted: text_drafts.0,
        verify_text_accepted: text_drafts.1,
        auto_tokens_per_full_forward: auto_figures.0,
        auto_skipped_share: auto_figures.1,
        module_agreement,
        batched_tokens_per_second: batched
            .iter_mut()
            .filter(|((_, new), _)| *new == 1)
            .map(|((size, _), v)| (size.to_string(), median(v)))
            .collect(),
        batched_2_tokens_per_second: batched
            .iter_mut()
            .filter(|((_, new), _)| *new == 2)
            .map(|((size, _), v)| (size.to_string(), median(v)))
            .collect(),
        prefill_tokens_per_second: prefill.iter_mut().map(|(n, v)| (n.to_string(), median(v))).collect(),
        bandwidth_gb_per_s: bandwidth.copy,
        read_bandwidth_gb_per_s: bandwidth.read,
        weight_read_fraction: weight_bytes as f64 / (forward_1_ms / 1e3) / 1e9 / bandwidth.read,
    })
}
