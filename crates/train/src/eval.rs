//! `recyclegpt eval`: how good the full model is on held-out text, how often its module agrees
//! with it, what `verify` gains from that, and what `alternate` costs in quality.
use crate::TrainError;
use recyclegpt_engine::{argmax, generate, DecodeMode, SamplingParams, StopCriteria};
use recyclegpt_model::{RecycleGpt, SeqInput, TextTokenizer};
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
        Self {
            window: 128,
            prompts: 8,
            prompt_tokens: 8,
            generate_tokens: 64,
        }
    }
}

fn log_softmax_at(row: &[f32], token: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = f64::from(max) + row.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>().ln();
    f64::from(row[token as usize]) - log_sum
}

/// Negative log-likelihood (sum, count) of `window[scored_from..]` under the full model; and,
/// with a module, (agreeing positions, positions).
fn score(model: &RecycleGpt, window: &[u32], scored_from: usize) -> Result<((f64, usize), (usize, usize)), TrainError> {
    let n = window.len();
    let mut cache = model.new_cache(n)?;
    let out = model.forward(&mut [SeqInput {
        tokens: window,
        cache: &mut cache,
        logits_rows: (0..n - 1).collect(),
    }])?;
    let mut nll = 0.0;
    for t in scored_from.max(1)..n {
        nll -= log_softmax_at(&out.logits[t - 1], window[t]);
    }
    let counted = n - scored_from.max(1);
    let Some(mut module_cache) = model.new_recycle_cache(n)? else {
        return Ok(((nll, counted), (0, 0)));
    };
    // The module's prediction for x_{t+1} from (h_{t-1}, x_t), t = 1..n-1, against the model's.
    let hidden = out.hidden.narrow(0, 0, n - 1)?;
    let drafts = model.recycle_forward(&hidden, &mut [SeqInput {
        tokens: &window[1..],
        cache: &mut module_cache,
        logits_rows: (0..n - 2).collect(),
    }])?;
    let same = drafts.iter().enumerate().filter(|(i, d)| argmax(d) == argmax(&out.logits[i + 1])).count();
    Ok(((nll, counted), (same, drafts.len())))
}

pub fn evaluate(model: &RecycleGpt, tokenizer: &TextTokenizer, data: &[PathBuf], options: &EvalOptions) -> Result<EvalReport, TrainError> {
    let window = options.window.min(model.context_len()).max(3);
    let windows = crate::corpus::windows(data, tokenizer, window, 3)?;
    if windows.is_empty() {
        return Err(TrainError::Data("the evaluation files hold fewer than 3 tokens".into()));
    }
    let (mut nll, mut count, mut same, mut compared) = (0.0, 0, 0, 0);
    for w in &windows {
        let ((n, c), (s, p)) = score(model, w, 1)?;
        nll += n;
        count += c;
        same += s;
        compared += p;
    }
    let generation_nll = |mode: DecodeMode| -> Result<(f64, f64), TrainError> {
        let (mut nll, mut count, mut tokens, mut forwards) = (0.0, 0, 0, 0);
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
            let ((n, c), _) = score(model, &full, prompt.len())?;
            nll += n;
            count += c;
        }
        Ok(((nll / count.max(1) as f64).exp(), tokens as f64 / forwards.max(1) as f64))
    };
    let (standard_ppl, _) = generation_nll(DecodeMode::Standard)?;
    let (alternate_ppl, verify_tpf) = if model.has_recycle() {
        let (alternate, _) = generation_nll(DecodeMode::Alternate)?;
        let (_, verify) = generation_nll(DecodeMode::Verify)?;
        (Some(alternate), Some(verify))
    } else {
        (None, None)
    };
    Ok(EvalReport {
        tokens: count,
        perplexity: (nll / count.max(1) as f64).exp(),
        agreement: (compared > 0).then(|| same as f64 / compared as f64),
        verify_tokens_per_full_forward: verify_tpf,
        standard_generation_perplexity: standard_ppl,
        alternate_generation_perplexity: alternate_ppl,
    })
}
