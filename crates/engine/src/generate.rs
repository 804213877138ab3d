//! Decoding one prompt to the end: the library call behind `recyclegpt generate`.
use crate::cost::CostModel;
use crate::sampling::SamplingParams;
use crate::sequence::{FinishReason, Sequence, SequenceStats, StopCriteria};
use crate::step::step;
use crate::{DecodeMode, EngineError};
use recyclegpt_model::RecycleGpt;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub stats: SequenceStats,
    /// Tokens emitted after the step that consumed the prompt, and the time they took.
    pub decode_tokens: usize,
    pub decode_seconds: f64,
}

impl Generation {
    pub fn tokens_per_second(&self) -> f64 {
        if self.decode_seconds > 0.0 {
            self.decode_tokens as f64 / self.decode_seconds
        } else {
            0.0
        }
    }

    pub fn tokens_per_full_forward(&self) -> f64 {
        if self.stats.full_forwards == 0 {
            return 0.0;
        }
        self.ids.len() as f64 / self.stats.full_forwards as f64
    }
}

/// Generates from `prompt` with one sequence; the whole prompt is prefilled in one forward.
/// `auto` (and `verify` with chained drafts) decide with costs measured here, for this one
/// generation; see [`generate_with_costs`] to keep them across generations, as a server does.
pub fn generate(
    model: &RecycleGpt,
    prompt: Vec<u32>,
    mode: DecodeMode,
    params: SamplingParams,
    stop: StopCriteria,
) -> Result<Generation, EngineError> {
    generate_with_lookup(model, prompt, mode, params, stop, true)
}

/// [`generate`], with prompt lookup (`verify` and `auto` also drafting from the text where it
/// repeats itself) on or off.
pub fn generate_with_lookup(
    model: &RecycleGpt,
    prompt: Vec<u32>,
    mode: DecodeMode,
    params: SamplingParams,
    stop: StopCriteria,
    prompt_lookup: bool,
) -> Result<Generation, EngineError> {
    let seq = Sequence::new(0, model, prompt, mode, params, stop)?.with_prompt_lookup(prompt_lookup);
    let mut costs = if needs_costs(&seq) { CostModel::measure(model, 1)? } else { None };
    run(model, seq, costs.as_mut())
}

/// [`generate`], deciding drafts with `costs` (measured for batch 1; `None`: `auto` always
/// drafts), which learn from its steps: callers that generate many times keep one, so that
/// what one generation timed serves the next (a 64-token generation is over before a fresh
/// model has learned much). `prompt_lookup` lets `verify` and `auto` draft from the text
/// where it repeats itself ([`generate`] always does).
pub fn generate_with_costs(
    model: &RecycleGpt,
    prompt: Vec<u32>,
    mode: DecodeMode,
    params: SamplingParams,
    stop: StopCriteria,
    prompt_lookup: bool,
    costs: Option<&mut CostModel>,
) -> Result<Generation, EngineError> {
    let seq = Sequence::new(0, model, prompt, mode, params, stop)?.with_prompt_lookup(prompt_lookup);
    let costs = if needs_costs(&seq) { costs } else { None };
    run(model, seq, costs)
}

/// `auto` decides, and chains of drafts stop, with the costs; plain `verify` without chains
/// and the other modes do not need them. The mode is the sequence's own (`auto` may have
/// become `off` or `verify`).
fn needs_costs(seq: &Sequence) -> bool {
    match seq.mode() {
        DecodeMode::Auto => true,
        DecodeMode::Verify => seq.can_chain(),
        DecodeMode::Off | DecodeMode::Alternate => false,
    }
}

fn run(model: &RecycleGpt, mut seq: Sequence, mut costs: Option<&mut CostModel>) -> Result<Generation, EngineError> {
    let prompt_len = seq.prompt().len();
    let mut decode_start: Option<(Instant, usize)> = None;
    while !seq.is_finished() {
        step(model, &mut [&mut seq], prompt_len, costs.as_deref_mut())?;
        if decode_start.is_none() {
            decode_start = Some((Instant::now(), seq.generated().len()));
        }
    }
    let (start, prefill_tokens) = decode_start.unwrap_or((Instant::now(), 0));
    Ok(Generation {
        ids: seq.generated().to_vec(),
        finish_reason: seq.finish_reason().unwrap_or(FinishReason::Length),
        stats: seq.stats(),
        decode_tokens: seq.generated().len() - prefill_tokens,
        decode_seconds: start.elapsed().as_secs_f64(),
    })
}
