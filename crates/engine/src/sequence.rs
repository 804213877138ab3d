//! One request's decoding state: its caches, the tokens it has emitted, and where it is in the
//! prefill → decode → finished life cycle.
use crate::sampling::{distribution, verify_draft, SamplingParams, TokenDist, TokenHistory, TokenLogprob};
use crate::{DecodeMode, EngineError};
use rand::rngs::StdRng;
use rand::SeedableRng;
use recyclegpt_model::{KvCache, RecycleGpt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
}

/// Where a sequence is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceState {
    /// Its prompt is being fed, a chunk per step.
    Prefilling,
    /// It emits tokens each step.
    Decoding,
    Finished(FinishReason),
}

#[derive(Debug, Clone)]
pub struct StopCriteria {
    pub max_tokens: usize,
    pub eos_ids: Vec<u32>,
}

/// Counters a caller reports (`generate --json`, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequenceStats {
    /// Full forwards that produced tokens (the last prefill chunk and every decode step).
    pub full_forwards: usize,
    pub recycle_steps: usize,
    /// Recycled tokens verified and kept / replaced (`verify` mode).
    pub accepted: usize,
    pub rejected: usize,
}

/// A recycled token waiting to be checked by the next full forward.
struct Draft {
    token: u32,
    dist: TokenDist,
}

/// What the next full forward must process for a sequence.
pub(crate) struct FullPlan {
    pub tokens: Vec<u32>,
    pub logits_rows: Vec<usize>,
    prefill_done: bool,
    has_draft: bool,
}

pub struct Sequence {
    id: u64,
    mode: DecodeMode,
    params: SamplingParams,
    stop: StopCriteria,
    context_len: usize,
    tokens: Vec<u32>,
    prompt_len: usize,
    prefilled: usize,
    pub(crate) full_cache: KvCache,
    pub(crate) recycle_cache: Option<KvCache>,
    draft: Option<Draft>,
    history: TokenHistory,
    rng: StdRng,
    fresh: Vec<u32>,
    fresh_logprobs: Vec<TokenLogprob>,
    stats: SequenceStats,
    finish: Option<FinishReason>,
}

impl Sequence {
    pub fn new(
        id: u64,
        model: &RecycleGpt,
        prompt: Vec<u32>,
        mode: DecodeMode,
        params: SamplingParams,
        stop: StopCriteria,
    ) -> Result<Self, EngineError> {
        let context_len = model.context_len();
        if prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if prompt.len() >= context_len {
            return Err(EngineError::Invalid(format!(
                "the prompt has {} tokens but the context is {context_len}: no room to generate",
                prompt.len()
            )));
        }
        if mode != DecodeMode::Off && !model.has_recycle() {
            return Err(EngineError::Invalid(format!(
                "mode `{}` needs a recyclable module and this model has none",
                mode.as_str()
            )));
        }
        // The last emitted token is never processed, so this many positions always suffice.
        let capacity = context_len.min(prompt.len() + stop.max_tokens + 1);
        let recycle_cache = match mode {
            DecodeMode::Off => None,
            _ => model.new_recycle_cache(capacity)?,
        };
        let rng = StdRng::seed_from_u64(params.seed.unwrap_or_else(rand::random));
        let mut seq = Self {
            id,
            mode,
            stop,
            context_len,
            history: TokenHistory::from_prompt(&prompt),
            prompt_len: prompt.len(),
            tokens: prompt,
            prefilled: 0,
            full_cache: model.new_cache(capacity)?,
            recycle_cache,
            draft: None,
            rng,
            params,
            fresh: Vec::new(),
            fresh_logprobs: Vec::new(),
            stats: SequenceStats::default(),
            finish: None,
        };
        if seq.stop.max_tokens == 0 {
            seq.finish = Some(FinishReason::Length);
        }
        Ok(seq)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn mode(&self) -> DecodeMode {
        self.mode
    }

    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    pub fn stats(&self) -> SequenceStats {
        self.stats
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    pub fn state(&self) -> SequenceState {
        match self.finish {
            Some(reason) => SequenceState::Finished(reason),
            None if self.is_prefilling() => SequenceState::Prefilling,
            None => SequenceState::Decoding,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    pub fn is_prefilling(&self) -> bool {
        self.prefilled < self.prompt_len
    }

    /// Tokens emitted since the last call.
    pub fn take_new_tokens(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.fresh)
    }

    /// Log-probabilities of the tokens emitted since the last call (when asked for).
    pub fn take_new_logprobs(&mut self) -> Vec<TokenLogprob> {
        std::mem::take(&mut self.fresh_logprobs)
    }

    /// Tokens cached in the full model's KV cache (the scheduler's KV budget counts these).
    pub fn cached_tokens(&self) -> usize {
        self.full_cache.len()
    }

    pub(crate) fn plan_full(&self, prefill_chunk: usize) -> FullPlan {
        if self.is_prefilling() {
            let end = self.prompt_len.min(self.prefilled + prefill_chunk.max(1));
            let tokens = self.tokens[self.prefilled..end].to_vec();
            let prefill_done = end == self.prompt_len;
            let logits_rows = if prefill_done { vec![tokens.len() - 1] } else { Vec::new() };
            return FullPlan { tokens, logits_rows, prefill_done, has_draft: false };
        }
        let mut tokens = self.tokens[self.full_cache.len()..].to_vec();
        if let Some(d) = &self.draft {
            tokens.push(d.token);
        }
        let has_draft = tokens.len() == 2;
        let logits_rows = match (self.mode, has_draft) {
            (DecodeMode::Verify, true) => vec![0, 1],
            _ => vec![tokens.len() - 1],
        };
        FullPlan { tokens, logits_rows, prefill_done: true, has_draft }
    }

    /// Takes the full forward's logits; returns how many of the plan's positions stay cached.
    pub(crate) fn accept_full(&mut self, plan: &FullPlan, mut logits: Vec<Vec<f32>>) -> Result<usize, EngineError> {
        let fed = plan.tokens.len();
        if self.is_prefilling() {
            self.prefilled += fed;
            if !plan.prefill_done {
                return Ok(fed);
            }
        }
        self.stats.full_forwards += 1;
        let kept = match (self.mode, plan.has_draft) {
            (DecodeMode::Verify, true) => {
                let (Some(draft), [first, second]) = (self.draft.take(), &mut logits[..]) else {
                    return Err(EngineError::Internal("a verify step lost its draft or logits".into()));
                };
                let raw = self.raw_for_logprobs(first);
                let p = distribution(std::mem::take(first), &self.params, &self.history);
                let (token, accepted) = verify_draft(draft.token, &draft.dist, &p, &mut self.rng);
                self.emit(token, raw.as_deref());
                if accepted {
                    self.stats.accepted += 1;
                    if !self.is_finished() {
                        let raw = self.raw_for_logprobs(second);
                        let next = distribution(std::mem::take(second), &self.params, &self.history);
                        let token = next.sample(&mut self.rng);
                        self.emit(token, raw.as_deref());
                    }
                    fed
                } else {
                    self.stats.rejected += 1;
                    // The draft's position holds a token the model did not choose: forget it.
                    self.full_cache.truncate(self.full_cache.len() - 1);
                    fed - 1
                }
            }
            _ => {
                let Some(row) = logits.pop() else {
                    return Err(EngineError::Internal("a full step returned no logits".into()));
                };
                let raw = self.raw_for_logprobs(&row);
                let token = distribution(row, &self.params, &self.history).sample(&mut self.rng);
                self.draft = None;
                self.emit(token, raw.as_deref());
                fed
            }
        };
        Ok(kept)
    }

    /// The module's new (h_{t-1}, x_t) pairs are the positions just cached, each paired with
    /// the token after it; the module's cache then covers positions 1..=full_len.
    pub(crate) fn recycle_tokens(&self, kept: usize) -> Option<Vec<u32>> {
        if self.is_finished() || self.recycle_cache.is_none() || kept == 0 {
            return None;
        }
        let end = self.full_cache.len();
        Some(self.tokens[end + 1 - kept..=end].to_vec())
    }

    /// A draft is wanted once the prompt is in and decoding goes on.
    pub(crate) fn wants_draft(&self) -> bool {
        !self.is_finished() && !self.is_prefilling()
    }

    pub(crate) fn accept_draft(&mut self, logits: Vec<f32>) {
        self.stats.recycle_steps += 1;
        let raw = self.raw_for_logprobs(&logits);
        let dist = distribution(logits, &self.params, &self.history);
        let token = dist.sample(&mut self.rng);
        match self.mode {
            // The paper's schedule: the recycled token is kept unchecked.
            DecodeMode::Alternate => self.emit(token, raw.as_deref()),
            _ => self.draft = Some(Draft { token, dist }),
        }
    }

    /// A copy of a logits row for `emit`, only when log-probabilities were asked for: sampling
    /// consumes the row, and copying every row of every step would be wasted work otherwise.
    fn raw_for_logprobs(&self, logits: &[f32]) -> Option<Vec<f32>> {
        self.params.logprobs.map(|_| logits.to_vec())
    }

    /// `logits` are the raw logits the token was chosen from, kept when log-probabilities were
    /// asked for.
    fn emit(&mut self, token: u32, logits: Option<&[f32]>) {
        if self.is_finished() {
            return;
        }
        if let (Some(top_n), Some(logits)) = (self.params.logprobs, logits) {
            self.fresh_logprobs.push(TokenLogprob::from_logits(logits, token, top_n));
        }
        self.tokens.push(token);
        self.history.push_generated(token);
        self.fresh.push(token);
        if self.stop.eos_ids.contains(&token) {
            self.finish = Some(FinishReason::Stop);
        } else if self.generated().len() >= self.stop.max_tokens || self.tokens.len() >= self.context_len {
            self.finish = Some(FinishReason::Length);
        }
    }
}
