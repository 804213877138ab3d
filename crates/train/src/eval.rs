//! `recyclegpt eval`: how good the full model is on held-out text, how often its module agrees
//! with it, what `verify` gains from that, and what `alternate` costs in quality.
use crate::TrainError;
use recyclegpt_engine::agreement::module_agreement;
use recyclegpt_engine::{generate, DecodeMode, SamplingParams, StopCriteria};
use recyclegpt_model::{ForwardOutput, RecycleGpt, SeqInput, TextTokenizer};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub tokens: usize,
    pub perplexity: f64,
    /// Top-1 agreement of the module with the full model (null without a module).
    pub agreement: Option<f64>,
    pub verify_tokens_per_full_forward: Option<f64>,
    /// The full model's perplexity on what each mode generated from the same prompts.
    pub standard_generation_perplexity: f64,
    pub alternate_generation_perplexity: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Tokens per scored window.
    pub window: usize,
    /// Prompts (window starts) used for the generation measurements, and their lengths.
    pub prompts: usize,
    pub prompt_tokens: usize,
    pub generate_tokens: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { window: 128, prompts: 8, prompt_tokens: 8, generate_tokens: 64 }
    }
}

fn log_softmax_at(row: &[f32], token: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = f64::from(max) + row.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>().ln();
    f64::from(row[token as usize]) - log_sum
}

/// The full model along `window`, with logits at every position but the last.
fn full_forward(model: &RecycleGpt, window: &[u32]) -> Result<ForwardOutput, TrainError> {
    let n = window.len();
    let mut cache = model.new_cache(n)?;
    Ok(model.forward(&mut [SeqInput { tokens: window, cache: &mut cache, logits_rows: (0..n - 1).collect() }])?)
}

/// Negative log-likelihood (sum, count) of `window[scored_from..]` given the full model's `out`.
fn nll(out: &ForwardOutput, window: &[u32], scored_from: usize) -> (f64, usize) {
    let from = scored_from.max(1);
    let sum = (from..window.len()).map(|t| -log_softmax_at(&out.logits[t - 1], window[t])).sum();
    (sum, window.len() - from)
}

pub fn evaluate(
    model: &RecycleGpt,
    tokenizer: &TextTokenizer,
    data: &[PathBuf],
    options: &EvalOptions,
) -> Result<EvalReport, TrainError> {
    let window = options.window.min(model.context_len()).max(3);
    let windows = crate::corpus::windows(data, tokenizer, window, 3)?;
    if windows.is_empty() {
        return Err(TrainError::Data("the evaluation files hold fewer than 3 tokens".into()));
    }
    let (mut total_nll, mut count, mut same, mut compared) = (0.0, 0, 0, 0);
    for w in &windows {
        let out = full_forward(model, w)?;
        let (n, c) = nll(&out, w, 1);
        total_nll += n;
        count += c;
        if let Some((s, p)) = module_agreement(model, w, &out.features, &out.logits[1..], 1)? {
            same += s;
            compared += p;
        }
    }
    let generation_nll = |mode: DecodeMode| -> Result<(f64, f64), TrainError> {
        let (mut sum, mut count, mut tokens, mut forwards) = (0.0, 0, 0, 0);
        for w in windows.iter().take(options.prompts) {
            let prompt = w[..options.prompt_tokens.min(w.len() - 1)].to_vec();
            let stop = StopCriteria {
                max_tokens: options.generate_tokens.min(model.context_len() - prompt.len() - 1),
                eos_ids: tokenizer.eos_ids().to_vec(),
            };
            let generation = generate(model, prompt.clone(), mode, SamplingParams::greedy(), stop)?;
            tokens += generation.ids.len();
            forwards += generation.stats.full_forwards;
            let mut full = prompt.clone();
            full.extend(&generation.ids);
            let (n, c) = nll(&full_forward(model, &full)?, &full, prompt.len());
            sum += n;
            count += c;
        }
        Ok(((sum / count.max(1) as f64).exp(), tokens as f64 / forwards.max(1) as f64))
    };
    let (standard_ppl, _) = generation_nll(DecodeMode::Off)?;
    let (alternate_ppl, verify_tpf) = if model.has_recycle() {
        let (alternate, _) = generation_nll(DecodeMode::Alternate)?;
        let (_, verify) = generation_nll(DecodeMode::Verify)?;
        (Some(alternate), Some(verify))
    } else {
        (None, None)
    };
    Ok(EvalReport {
        tokens: count,
        perplexity: (total_nll / count.max(1) as f64).exp(),
        agreement: (compared > 0).then(|| same as f64 / compared as f64),
        verify_tokens_per_full_forward: verify_tpf,
        standard_generation_perplexity: standard_ppl,
        alternate_generation_perplexity: alternate_ppl,
    })
}
