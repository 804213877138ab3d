//! One request's decoding state: its caches, the tokens it has emitted, and where it is in the
//! prefill → decode → finished life cycle.
use crate::constraint::{Constraint, MaskCost, TokenConstraint};
use crate::sampling::{distribution, SamplingParams, TokenHistory, TokenLogprob};
use crate::{DecodeMode, EngineError};
use rand::rngs::StdRng;
use rand::SeedableRng;
use recyclegpt_model::{KvCache, RecycleGpt};

mod drafts;
mod lookup;
pub(crate) use drafts::INITIAL_ACCEPTANCE;
use drafts::{Draft, DraftRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
    /// The output's grammar failed (a state beyond what its engine follows): the text is not
    /// what was asked for, so the request fails rather than finishing.
    ConstraintFailed,
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
    /// Prompt tokens whose keys and values came from the prefix cache, not a forward.
    pub cached_prompt_tokens: usize,
    /// Full forwards that produced tokens (the last prefill chunk and every decode step).
    pub full_forwards: usize,
    pub recycle_steps: usize,
    /// Drafted tokens verified and kept / replaced (`verify` and `auto`; the module's and the
    /// text's).
    pub accepted: usize,
    pub rejected: usize,
    /// Decode steps on which `auto` chose not to draft.
    pub skipped_drafts: usize,
    /// Forwards that verified drafts.
    pub drafts: usize,
    /// Drafted tokens sent to verification, and those accepted, by their place in the chain
    /// (0: the first drafted token). Drafts after a rejected one count as sent, unchecked, as
    /// in vLLM's metrics.
    pub drafted_at: [usize; MAX_DRAFTS],
    pub accepted_at: [usize; MAX_DRAFTS],
    /// Of the drafted and accepted tokens, those read from the text (prompt lookup).
    pub text_drafted: usize,
    pub text_accepted: usize,
}

impl SequenceStats {
    pub fn draft_tokens(&self) -> usize {
        self.drafted_at.iter().sum()
    }
}

/// The longest chain of drafts one forward verifies.
pub const MAX_DRAFTS: usize = 4;

/// What the next full forward must process for a sequence.
pub(crate) struct FullPlan {
    pub tokens: Vec<u32>,
    pub logits_rows: Vec<usize>,
    prefill_done: bool,
    has_draft: bool,
    /// Its tokens are (the end of) the prompt.
    pub prompt: bool,
}

/// Where an emitted token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The full model's own choice (a plain step, a rejected draft's replacement, a bonus token).
    Model,
    /// The recyclable module's draft, verified (or, in `alternate`, kept unchecked).
    Module,
    /// A draft read from the text where it repeats itself (prompt lookup), verified.
    Lookup,
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
    /// Drafts waiting for verification, in order: at most `max_drafts` from the module, at most
    /// [`MAX_DRAFTS`] read from the text.
    drafts: Vec<Draft>,
    max_drafts: usize,
    /// Drafts may be read from the text when it repeats itself (`lookup.rs`).
    prompt_lookup: bool,
    /// Estimated chance that a text draft's token is accepted (a moving average).
    text_acceptance: f64,
    history: TokenHistory,
    /// The grammar every sampled token must fit (structured outputs), if any.
    constraint: Option<Box<dyn TokenConstraint>>,
    mask_cost: MaskCost,
    rng: StdRng,
    fresh: Vec<u32>,
    fresh_logprobs: Vec<TokenLogprob>,
    /// Where each of `fresh` came from.
    fresh_sources: Vec<TokenSource>,
    /// Prompt tokens' log-probabilities (from the second token on), when asked for; handed out
    /// once the whole prompt is in.
    prompt_logprobs: Vec<TokenLogprob>,
    stats: SequenceStats,
    record: DraftRecord,
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
        // `auto` picks the fastest way, and without a module that is plain decoding. Seeded
        // sampling runs `verify`: `auto`'s choices depend on timings and on the batch, and each
        // choice changes how the seed's random draws are spent, so the same seed would not give
        // the same text twice. (Greedy output is the same in every mode.)
        let mode = match mode {
            DecodeMode::Auto if !model.has_recycle() => DecodeMode::Off,
            DecodeMode::Auto if is_seeded_sampling(&params) => DecodeMode::Verify,
            mode => mode,
        };
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
            drafts: Vec::new(),
            max_drafts: draft_limit(
                &params,
                model.config().recycle.as_ref().and_then(|r| r.max_draft_tokens).unwrap_or(1),
            ),
            prompt_lookup: true,
            text_acceptance: INITIAL_ACCEPTANCE,
            constraint: None,
            mask_cost: MaskCost::default(),
            rng,
            params,
            fresh: Vec::new(),
            fresh_logprobs: Vec::new(),
            fresh_sources: Vec::new(),
            prompt_logprobs: Vec::new(),
            stats: SequenceStats::default(),
            record: DraftRecord::new(INITIAL_ACCEPTANCE),
            finish: None,
        };
        if seq.stop.max_tokens == 0 {
            seq.finish = Some(FinishReason::Length);
        }
        Ok(seq)
    }

    /// Lets the module chain up to `k` drafts (within 1..=[`MAX_DRAFTS`]) for one forward to
    /// verify, in `verify` and `auto`; each chained draft feeds the module's own output back as
    /// the next h. The default is the module config's `max_draft_tokens` (1 when absent); seeded
    /// sampling always drafts one at a time.
    pub fn with_max_drafts(mut self, k: usize) -> Self {
        self.max_drafts = draft_limit(&self.params, k);
        self
    }

    /// Lets `verify` and `auto` read drafts from the text where it repeats itself (on by
    /// default).
    pub fn with_prompt_lookup(mut self, on: bool) -> Self {
        self.prompt_lookup = on;
        self
    }

    /// Constrains every token this sequence samples, drafts included, to `constraint`.
    pub fn with_constraint(mut self, constraint: Option<Constraint>) -> Self {
        self.constraint = constraint.map(|c| c.0);
        self
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

    /// Where the tokens emitted since the last call came from.
    pub fn take_new_sources(&mut self) -> Vec<TokenSource> {
        std::mem::take(&mut self.fresh_sources)
    }

    /// Log-probabilities of the tokens emitted since the last call (when asked for).
    pub fn take_new_logprobs(&mut self) -> Vec<TokenLogprob> {
        std::mem::take(&mut self.fresh_logprobs)
    }

    /// The prompt's log-probabilities (one per prompt token after the first), once the prompt
    /// is in and when `prompt_logprobs` was asked for; empty after the first call.
    pub fn take_prompt_logprobs(&mut self) -> Vec<TokenLogprob> {
        if self.is_prefilling() {
            return Vec::new();
        }
        std::mem::take(&mut self.prompt_logprobs)
    }

    /// Starts from the first `len` prompt positions of another sequence's caches (prefix
    /// caching). The module's entry for position p pairs the hidden state at p - 1 with token
    /// p, so where the other module cache has positions 1..len - 1 one position fewer is reused:
    /// the forward over it makes the hidden state the next pair needs, and the module's history
    /// is exactly what it would have been (`alternate` output too); where the other module
    /// cache ends a few positions early, reuse stops there. Without them the module
    /// skips the reused positions, which costs acceptance of early drafts, never correctness;
    /// `alternate`, whose module tokens are not checked, then reuses nothing.
    pub(crate) fn reuse_prefix(
        &mut self,
        full: &KvCache,
        module: Option<&KvCache>,
        len: usize,
    ) -> Result<(), EngineError> {
        if len < 2 || len >= self.prompt_len || self.prefilled > 0 || self.params.prompt_logprobs.is_some() {
            return Ok(());
        }
        // A finished sequence's module history may end a few positions before its full cache
        // (the tokens of its last forward never reached the module). Reusing only as far as
        // that history goes recomputes those few tokens but keeps the module's pairs exact.
        let exact = module.filter(|m| m.contiguous_len() + MAX_DRAFTS + 1 >= len - 1);
        if exact.is_none() && self.mode == DecodeMode::Alternate {
            // Its module's tokens are emitted unchecked: a shorter module history would change
            // the text, so it computes the prompt itself.
            return Ok(());
        }
        let reused = match (&self.recycle_cache, exact) {
            (Some(_), Some(module)) => (len - 1).min(module.contiguous_len()),
            _ => len,
        };
        if reused == 0 {
            return Ok(());
        }
        self.full_cache.copy_prefix(full, reused)?;
        if let Some(own) = &mut self.recycle_cache {
            match exact {
                Some(module) => own.copy_prefix(module, reused)?,
                None => own.skip(reused),
            }
        }
        self.prefilled = reused;
        self.stats.cached_prompt_tokens = reused;
        Ok(())
    }

    /// What prefix caching keeps of a finished sequence: the tokens whose keys and values its
    /// full cache holds, that cache, and the module's.
    pub(crate) fn into_reusable(mut self) -> (Vec<u32>, KvCache, Option<KvCache>) {
        // A forward that ended the sequence early may hold drafts it never emitted: drop them.
        let len = self.full_cache.len().min(self.tokens.len());
        self.full_cache.truncate(len);
        self.tokens.truncate(len);
        (self.tokens, self.full_cache, self.recycle_cache)
    }

    /// Whether the prompt may come from the prefix cache (prompt log-probabilities need every
    /// prompt position computed).
    pub(crate) fn may_reuse_prefix(&self) -> bool {
        self.params.prompt_logprobs.is_none()
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
            let logits_rows = match (self.params.prompt_logprobs, prefill_done) {
                (Some(_), _) => (0..tokens.len()).collect(),
                (None, true) => vec![tokens.len() - 1],
                (None, false) => Vec::new(),
            };
            return FullPlan { tokens, logits_rows, prefill_done, has_draft: false, prompt: true };
        }
        let mut tokens = self.tokens[self.full_cache.len()..].to_vec();
        tokens.extend(self.drafts.iter().map(|d| d.token));
        let has_draft = !self.drafts.is_empty();
        let logits_rows = match (self.mode, has_draft) {
            (DecodeMode::Verify | DecodeMode::Auto, true) => (0..tokens.len()).collect(),
            _ => vec![tokens.len() - 1],
        };
        FullPlan { tokens, logits_rows, prefill_done: true, has_draft, prompt: false }
    }

    /// The module's KV cache; an error for a sequence that does not recycle.
    pub(crate) fn module_cache(&mut self) -> Result<&mut KvCache, EngineError> {
        self.recycle_cache
            .as_mut()
            .ok_or_else(|| EngineError::Internal("a recycling sequence has no module cache".into()))
    }

    /// Whether the module may chain drafts for this sequence.
    pub(crate) fn can_chain(&self) -> bool {
        self.max_drafts > 1
    }

    /// Tokens the next full forward feeds for this sequence, drafts aside.
    pub(crate) fn next_feed(&self, prefill_chunk: usize) -> usize {
        if self.is_prefilling() {
            (self.prompt_len - self.prefilled).min(prefill_chunk.max(1))
        } else {
            1
        }
    }

    /// Takes the full forward's logits; returns how many of the plan's positions stay cached.
    pub(crate) fn accept_full(&mut self, plan: &FullPlan, mut logits: Vec<Vec<f32>>) -> Result<usize, EngineError> {
        let fed = plan.tokens.len();
        if self.is_prefilling() {
            if let Some(top_n) = self.params.prompt_logprobs {
                // Row r (position prefilled + r) predicts the prompt token after it; the last
                // prompt position predicts the first generated token instead.
                for (r, row) in logits.iter().enumerate() {
                    if let Some(&next) = self.tokens[..self.prompt_len].get(self.prefilled + r + 1) {
                        self.prompt_logprobs.push(TokenLogprob::from_logits(row, next, top_n));
                    }
                }
            }
            self.prefilled += fed;
            if !plan.prefill_done {
                return Ok(fed);
            }
        }
        self.stats.full_forwards += 1;
        let kept = match (self.mode, plan.has_draft) {
            (DecodeMode::Verify | DecodeMode::Auto, true) => self.verify_drafts(fed, logits)?,
            _ => {
                let Some(mut row) = logits.pop() else {
                    return Err(EngineError::Internal("a full step returned no logits".into()));
                };
                let raw = self.raw_for_logprobs(&row);
                self.constrain(&mut row);
                let token = distribution(row, &self.params, &self.history).sample(&mut self.rng);
                self.retract_drafts();
                self.emit(token, raw.as_deref(), TokenSource::Model);
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

    /// A draft is wanted once the prompt is in and decoding goes on (`auto` then decides
    /// whether it pays).
    pub(crate) fn wants_draft(&self) -> bool {
        !self.is_finished() && !self.is_prefilling()
    }
    /// A copy of a logits row for `emit`, only when log-probabilities were asked for: sampling
    /// consumes the row, and copying every row of every step would be wasted work otherwise.
    fn raw_for_logprobs(&self, logits: &[f32]) -> Option<Vec<f32>> {
        self.params.logprobs.map(|_| logits.to_vec())
    }

    /// `logits` are the raw logits the token was chosen from, kept when log-probabilities were
    /// asked for.
    fn emit(&mut self, token: u32, logits: Option<&[f32]>, source: TokenSource) {
        if self.is_finished() {
            return;
        }
        let eos = self.stop.eos_ids.contains(&token);
        if let (Some(constraint), false) = (&mut self.constraint, eos) {
            // Checked before the token is kept: a token the grammar refuses (only possible when
            // it allowed none) never reaches the output.
            if let Err(error) = constraint.advance(token) {
                tracing::warn!(%error, "the grammar refused a token: the sequence fails");
                self.finish = Some(FinishReason::ConstraintFailed);
                return;
            }
        }
        if let (Some(top_n), Some(logits)) = (self.params.logprobs, logits) {
            self.fresh_logprobs.push(TokenLogprob::from_logits(logits, token, top_n));
        }
        self.tokens.push(token);
        self.history.push_generated(token);
        self.fresh.push(token);
        self.fresh_sources.push(source);
        // The grammar ends the text when nothing may follow what it has taken.
        if eos || self.constraint.as_ref().is_some_and(|c| c.is_complete()) {
            self.finish = Some(FinishReason::Stop);
        }
        let full = self.generated().len() >= self.stop.max_tokens || self.tokens.len() >= self.context_len;
        if self.finish.is_none() && full {
            self.finish = Some(FinishReason::Length);
        }
    }
}

/// Sampling with a seed, which promises the same text on every run.
fn is_seeded_sampling(params: &SamplingParams) -> bool {
    params.seed.is_some() && !params.is_greedy()
}

/// Drafts one forward may verify: `k` within 1..=[`MAX_DRAFTS`], and 1 for seeded sampling.
/// A chain's length follows the measured costs, and each length spends the seed's random
/// draws differently, so a seeded sequence that chained would not give the same text twice.
fn draft_limit(params: &SamplingParams, k: usize) -> usize {
    if is_seeded_sampling(params) {
        1
    } else {
        k.clamp(1, MAX_DRAFTS)
    }
}
