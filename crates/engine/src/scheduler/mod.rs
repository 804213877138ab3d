//! The scheduler decides what runs; `step` runs it. It owns the waiting and running sequences,
//! admits under the KV budget (`admission::admit`, a pure function), steps the running batch
//! and returns typed updates. It knows nothing of HTTP, text or clients: a caller maps sequence
//! ids to its own requests.
mod acceptance;
mod admission;
mod prefix_cache;

use acceptance::AcceptancePrior;
pub use admission::{admit, Budget};
use prefix_cache::PrefixCache;

use crate::constraint::Constraint;
use crate::cost::CostModel;
use crate::sampling::{SamplingParams, TokenLogprob};
use crate::sequence::{FinishReason, Sequence, SequenceState, SequenceStats, StopCriteria, TokenSource};
use crate::step::{step, StepReport};
use crate::{DecodeMode, EngineError};
use recyclegpt_model::RecycleGpt;
use std::collections::VecDeque;

/// The caller's name for a sequence.
pub type SeqId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub budget: Budget,
    /// Prompt tokens fed per sequence per step, so that a long prompt does not stall the
    /// sequences decoding beside it.
    pub prefill_chunk: usize,
    /// Keep finished sequences' caches for later prompts that share their prefix, in the part
    /// of the KV budget running sequences leave free.
    pub prefix_caching: bool,
    /// `verify` and `auto` also draft from the text where it repeats itself (prompt lookup).
    pub prompt_lookup: bool,
}

/// A sequence to generate, as queued.
#[derive(Debug)]
pub struct SequenceRequest {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    pub mode: DecodeMode,
    pub params: SamplingParams,
    pub stop: StopCriteria,
    /// The grammar its tokens must fit (structured outputs), if any.
    pub constraint: Option<Constraint>,
}

impl SequenceRequest {
    /// KV tokens it may come to hold: prompt + max_tokens, within the context.
    fn reservation(&self, context_len: usize) -> usize {
        self.prompt.len().saturating_add(self.stop.max_tokens).min(context_len)
    }
}

/// What one step did to one sequence.
#[derive(Debug, Clone)]
pub struct Update {
    pub id: SeqId,
    /// Tokens emitted by this step (may be empty while the prompt is being fed).
    pub tokens: Vec<u32>,
    /// Where each of them came from.
    pub sources: Vec<TokenSource>,
    /// Their log-probabilities, when asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// The prompt's log-probabilities, on the first update after the prompt is in, when asked for.
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Prompt tokens that came from the prefix cache.
    pub cached_prompt_tokens: usize,
    /// Set on the sequence's last update.
    pub finished: Option<Finished>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub stats: SequenceStats,
}

/// The result of one `Scheduler::step`.
#[derive(Debug, Default)]
pub struct StepOutcome {
    /// Sequences that started this step.
    pub started: Vec<SeqId>,
    pub updates: Vec<Update>,
    /// Sequences that could not start (their caches could not be made) and were dropped.
    pub refused: Vec<(SeqId, EngineError)>,
    pub report: StepReport,
}

/// A step that failed: every running sequence was dropped, since its caches may be half-written.
#[derive(Debug)]
pub struct StepFailed {
    pub ids: Vec<SeqId>,
    pub error: EngineError,
}

pub struct Scheduler {
    config: SchedulerConfig,
    /// What drafts cost on this device, for `auto` sequences (`None`: they always draft).
    costs: Option<CostModel>,
    context_len: usize,
    waiting: VecDeque<SequenceRequest>,
    running: Vec<Sequence>,
    reservations: Vec<usize>,
    prefix: Option<PrefixCache>,
    /// Where a new sequence's acceptance estimate starts: what the sequences before it found.
    acceptance_prior: AcceptancePrior,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, context_len: usize, costs: Option<CostModel>) -> Self {
        Self {
            prefix: config.prefix_caching.then(PrefixCache::new),
            config,
            costs,
            context_len,
            waiting: VecDeque::new(),
            running: Vec::new(),
            reservations: Vec::new(),
            acceptance_prior: AcceptancePrior::default(),
        }
    }

    pub fn enqueue(&mut self, request: SequenceRequest) {
        self.waiting.push_back(request);
    }

    /// Forgets a sequence, waiting or running (its KV cache is freed). For a running one, what
    /// it had done so far (reported as stopped), for metrics and logs.
    pub fn cancel(&mut self, id: SeqId) -> Option<Finished> {
        if let Some(at) = self.waiting.iter().position(|r| r.id == id) {
            self.waiting.remove(at);
            return None;
        }
        let at = self.running.iter().position(|s| s.id() == id)?;
        let seq = self.running.remove(at);
        self.reservations.remove(at);
        let finished = Finished {
            reason: FinishReason::Stop,
            prompt_tokens: seq.prompt().len(),
            completion_tokens: seq.generated().len(),
            stats: seq.stats(),
        };
        // A stop string ends most chat answers this way: what it computed is as reusable.
        self.retire(seq);
        self.fit_prefix_cache();
        Some(finished)
    }

    /// A sequence leaves the batch: what it learned of its module goes to the acceptance
    /// prior, its caches to the prefix cache (`fit_prefix_cache` then keeps that within the
    /// free KV budget).
    fn retire(&mut self, seq: Sequence) {
        let (accepted, judged) = seq.draft_verdicts();
        self.acceptance_prior.learn(accepted, judged);
        if let Some(prefix) = &mut self.prefix {
            let (tokens, full, module) = seq.into_reusable();
            prefix.insert(tokens, full, module);
        }
    }

    /// Evicts prefix-cache entries until they fit beside the running sequences' reservations.
    fn fit_prefix_cache(&mut self) {
        let free = self.config.budget.kv_tokens.saturating_sub(self.reservations.iter().sum());
        if let Some(prefix) = &mut self.prefix {
            prefix.shrink_to(free);
        }
    }

    /// KV positions the prefix cache holds.
    pub fn prefix_cache_tokens(&self) -> usize {
        self.prefix.as_ref().map_or(0, PrefixCache::held)
    }

    /// Drops every waiting sequence (shutdown), returning their ids.
    pub fn drain_waiting(&mut self) -> Vec<SeqId> {
        self.waiting.drain(..).map(|r| r.id).collect()
    }

    /// Drops every running sequence (grace period over, or a failed step), returning their ids.
    pub fn drain_running(&mut self) -> Vec<SeqId> {
        self.reservations.clear();
        self.running.drain(..).map(|s| s.id()).collect()
    }

    /// Whether `id` waits for admission.
    pub fn is_waiting(&self, id: SeqId) -> bool {
        self.waiting.iter().any(|r| r.id == id)
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Tokens held in the running sequences' full-model KV caches.
    pub fn kv_tokens_in_use(&self) -> usize {
        self.running.iter().map(Sequence::cached_tokens).sum()
    }

    /// Admits what the budget allows, then advances every running sequence by one step.
    pub fn step(&mut self, model: &RecycleGpt) -> Result<StepOutcome, StepFailed> {
        let mut outcome = StepOutcome::default();
        self.admit(model, &mut outcome);
        if self.running.is_empty() {
            return Ok(outcome);
        }
        let mut seqs: Vec<&mut Sequence> = self.running.iter_mut().collect();
        match step(model, &mut seqs, self.config.prefill_chunk, self.costs.as_mut()) {
            Ok(report) => outcome.report = report,
            Err(error) => {
                // Sequences refused at admission in this call are failed with the rest.
                let mut ids = self.drain_running();
                ids.extend(outcome.refused.into_iter().map(|(id, _)| id));
                return Err(StepFailed { ids, error });
            }
        }
        let mut kept = Vec::with_capacity(self.running.len());
        let mut kept_reservations = Vec::with_capacity(self.running.len());
        for (mut seq, reservation) in
            std::mem::take(&mut self.running).into_iter().zip(std::mem::take(&mut self.reservations))
        {
            let tokens = seq.take_new_tokens();
            let sources = seq.take_new_sources();
            let logprobs = seq.take_new_logprobs();
            let prompt_logprobs = seq.take_prompt_logprobs();
            let finished = match seq.state() {
                SequenceState::Finished(reason) => Some(Finished {
                    reason,
                    prompt_tokens: seq.prompt().len(),
                    completion_tokens: seq.generated().len(),
                    stats: seq.stats(),
                }),
                SequenceState::Prefilling | SequenceState::Decoding => None,
            };
            if !tokens.is_empty() || finished.is_some() {
                let cached_prompt_tokens = seq.stats().cached_prompt_tokens;
                outcome.updates.push(Update {
                    id: seq.id(),
                    tokens,
                    sources,
                    logprobs,
                    prompt_logprobs,
                    cached_prompt_tokens,
                    finished,
                });
            }
            if finished.is_none() {
                kept.push(seq);
                kept_reservations.push(reservation);
            } else {
                self.retire(seq);
            }
        }
        self.running = kept;
        self.reservations = kept_reservations;
        self.fit_prefix_cache();
        Ok(outcome)
    }

    fn admit(&mut self, model: &RecycleGpt, outcome: &mut StepOutcome) {
        let waiting: Vec<usize> = self.waiting.iter().map(|r| r.reservation(self.context_len)).collect();
        let count = admit(self.config.budget, &self.reservations, &waiting);
        // The prefix cache gives way before the new caches are made, so that together they
        // never hold more than the budget.
        let incoming: usize = waiting[..count].iter().sum();
        let free = self.config.budget.kv_tokens.saturating_sub(self.reservations.iter().sum::<usize>() + incoming);
        if let Some(prefix) = &mut self.prefix {
            prefix.shrink_to(free);
        }
        let admitted: Vec<SequenceRequest> = self.waiting.drain(..count).collect();
        for (request, reservation) in admitted.into_iter().zip(waiting) {
            let started = Sequence::new(request.id, model, request.prompt, request.mode, request.params, request.stop)
                .and_then(|seq| {
                    let seq = seq.with_constraint(request.constraint).with_prompt_lookup(self.config.prompt_lookup);
                    self.reuse_prefix(seq)
                })
                .map(|mut seq| {
                    seq.start_acceptance_at(self.acceptance_prior.estimate());
                    seq
                });
            match started {
                Ok(seq) => {
                    outcome.started.push(request.id);
                    self.running.push(seq);
                    self.reservations.push(reservation);
                }
                Err(error) => outcome.refused.push((request.id, error)),
            }
        }
        self.fit_prefix_cache();
    }

    /// Starts `seq` from the longest cached prefix of its prompt, if any.
    fn reuse_prefix(&mut self, mut seq: Sequence) -> Result<Sequence, EngineError> {
        if let Some(prefix) = self.prefix.as_mut().filter(|_| seq.may_reuse_prefix()) {
            if let Some(hit) = prefix.lookup(seq.prompt()) {
                seq.reuse_prefix(hit.full, hit.module, hit.len)?;
            }
        }
        Ok(seq)
    }
}
