//! A sequence's drafts: the module's proposals (and the text's, `lookup.rs`) waiting for
//! verification, their verification, how `auto` decides whether to draft (its acceptance
//! estimate and probes), chains of drafts, and the grammar's tentative steps over them.
use super::{FinishReason, Sequence, TokenSource};
use crate::constraint::MASK_BUDGET;
use crate::cost::DraftValue;
use crate::sampling::{distribution, greedy_with_confidence, verify_draft, TokenDist};
use crate::DecodeMode;
use crate::EngineError;

/// Weight of the newest verification in a sequence's acceptance estimate (a moving average
/// over roughly the last 1/weight drafts).
const ACCEPTANCE_WEIGHT: f64 = 0.15;

/// The estimate before any draft was checked: optimistic, so that drafting is tried before it
/// is judged. The scheduler starts later sequences from what earlier ones learned.
pub(crate) const INITIAL_ACCEPTANCE: f64 = 0.5;

/// How far each step without a draft pulls an `auto` sequence's moving averages back toward
/// its verdicts over the whole answer: a run of rejections must not keep a module that is
/// usually right off for the rest of the answer (the averages only learn from drafts made),
/// while a module that is never right has nothing to drift back to. About 25 steps undo half
/// of a drop.
const RECOVERY: f64 = 0.03;

/// Verdicts the start value is worth in the whole-answer figures.
const START_WEIGHT: f64 = 4.0;

/// An `auto` sequence that does not draft still drafts after this many steps, to notice when
/// its module starts to agree again; each probe doubles the wait, up to the maximum, so a
/// module that never agrees, or one that agrees but not often enough to pay at this load,
/// costs a draft every few hundred tokens.
pub(super) const FIRST_PROBE_WAIT: usize = 8;
const LONGEST_PROBE_WAIT: usize = 256;

/// How an `auto` sequence has fared with its drafts.
#[derive(Debug, Clone, Copy)]
pub(super) struct DraftRecord {
    /// Moving average of the verifications of first drafts (1 accepted, 0 rejected).
    pub(super) acceptance: f64,
    /// Moving average of the module's drafts accepted per step that drafted, its chain
    /// included (0 for a rejected one): what a decision to draft yields, which is more than
    /// the first draft's acceptance wherever chains pay.
    pub(super) yield_per_draft: f64,
    /// Moving averages of the module's drafts the forward carried per step that drafted, and
    /// of the module steps run for them (a chained draft trimmed as not worth its row still
    /// cost its step): what a decision to draft costs.
    pub(super) rows: f64,
    pub(super) steps: f64,
    /// Module steps that made the drafts pending now.
    pub(super) pending_steps: usize,
    /// Where the acceptance and yield averages started.
    pub(super) start: f64,
    /// Decode steps since its last draft.
    pub(super) idle: usize,
    /// Steps to wait before probing.
    pub(super) probe_wait: usize,
    /// The pending draft is a probe (made although the cost model said it would not pay).
    pub(super) probing: bool,
    /// Verdicts on first drafts so far: accepted, and all.
    pub(super) accepted: usize,
    pub(super) judged: usize,
    /// The module's drafts accepted over those verdicts, chains included.
    pub(super) tokens: usize,
}

impl DraftRecord {
    pub(super) fn new(start: f64) -> Self {
        Self {
            acceptance: start,
            yield_per_draft: start,
            rows: 1.0,
            steps: 1.0,
            pending_steps: 0,
            start,
            idle: 0,
            probe_wait: FIRST_PROBE_WAIT,
            probing: false,
            accepted: 0,
            judged: 0,
            tokens: 0,
        }
    }

    /// The verdict on a step's `rows` module drafts: `tokens` of them accepted in a row (0: the
    /// first was rejected).
    fn record_verification(&mut self, tokens: usize, rows: usize, steps: usize) {
        let accepted = tokens > 0;
        debug_assert!(steps >= rows, "{steps} module steps made {rows} drafts");
        let steps = steps.max(rows);
        self.acceptance += ACCEPTANCE_WEIGHT * (f64::from(u8::from(accepted)) - self.acceptance);
        self.yield_per_draft += ACCEPTANCE_WEIGHT * (tokens as f64 - self.yield_per_draft);
        self.rows += ACCEPTANCE_WEIGHT * (rows as f64 - self.rows);
        self.steps += ACCEPTANCE_WEIGHT * (steps as f64 - self.steps);
        self.accepted += usize::from(accepted);
        self.tokens += tokens;
        self.judged += 1;
        // Any probe doubles the wait: an accepted one moves the estimate up, and once that is
        // enough the cost model says "pays" without a probe. (Resetting the wait on accepted
        // probes kept a module that agrees half the time probing every few steps under load,
        // where no draft pays: about 4% of throughput at 4-64 clients.) An accepted draft that
        // was judged to pay restarts the probe schedule for when drafting stops paying.
        if self.probing {
            self.probe_wait = (self.probe_wait * 2).min(LONGEST_PROBE_WAIT);
        } else if accepted {
            self.probe_wait = FIRST_PROBE_WAIT;
        }
        self.probing = false;
    }

    /// What drafting has yielded and cost per step that drafted.
    fn value(&self) -> DraftValue {
        DraftValue { yielded: self.yield_per_draft, rows: self.rows, steps: self.steps }
    }

    /// A step without a draft: the acceptance and yield averages drift toward the whole
    /// answer's figures (what a draft costs does not drift: it is the module's, not the text's).
    fn recover(&mut self) {
        let (judged, start) = (self.judged as f64 + START_WEIGHT, START_WEIGHT * self.start);
        let (acceptance, yields) = ((self.accepted as f64 + start) / judged, (self.tokens as f64 + start) / judged);
        self.acceptance += RECOVERY * (acceptance - self.acceptance);
        self.yield_per_draft += RECOVERY * (yields - self.yield_per_draft);
    }
}

/// A recycled token waiting to be checked by the next full forward.
pub(super) struct Draft {
    pub(super) token: u32,
    pub(super) dist: TokenDist,
    /// The module's own probability for it (greedy: the softmax of its logits after bias and
    /// penalties; sampling: its probability in the distribution it was drawn from), which
    /// decides whether it is verified and whether the chain goes on; 1 for a text draft.
    pub(super) confidence: f64,
    /// It advanced the sequence's constraint (tentatively, until verification).
    pub(super) constrained: bool,
    /// It was read from the text (prompt lookup), not made by the module.
    pub(super) from_text: bool,
}

impl Sequence {
    /// The estimated probability that this sequence's next draft is accepted.
    pub(crate) fn acceptance(&self) -> f64 {
        self.record.acceptance
    }

    /// Starts the acceptance estimate at `estimate` (what earlier sequences of this server
    /// found) instead of [`INITIAL_ACCEPTANCE`].
    pub(crate) fn start_acceptance_at(&mut self, estimate: f64) {
        self.record = DraftRecord::new(estimate.clamp(0.0, 1.0));
    }

    /// What a decision to draft is expected to yield and cost, chains included: what `auto`
    /// weighs.
    pub fn draft_value(&self) -> DraftValue {
        self.record.value()
    }

    /// (accepted, judged): the verdicts on this sequence's first drafts.
    pub(crate) fn draft_verdicts(&self) -> (usize, usize) {
        (self.record.accepted, self.record.judged)
    }

    /// `auto`'s decision for this step: `pays` is the cost model's verdict; a sequence that has
    /// waited out its probe interval drafts anyway where a probe is worth making. Returns
    /// whether it drafts.
    pub(crate) fn decide_draft(&mut self, pays: bool, worth_probing: bool) -> bool {
        if pays || (worth_probing && self.record.idle >= self.record.probe_wait) {
            self.record.probing = !pays;
            self.record.idle = 0;
            return true;
        }
        self.record.idle += 1;
        self.record.recover();
        self.stats.skipped_drafts += 1;
        false
    }

    /// Checks the drafts in order against the forward's rows (row j verifies draft j; the row
    /// after the last draft gives a bonus token when all are accepted); returns how many of the
    /// `fed` positions stay cached: those up to the first rejected draft.
    pub(super) fn verify_drafts(&mut self, fed: usize, logits: Vec<Vec<f32>>) -> Result<usize, EngineError> {
        let steps = self.record.pending_steps;
        let drafts = self.retract_drafts();
        if logits.len() != drafts.len() + 1 {
            return Err(EngineError::Internal("a verify step lost its drafts or logits".into()));
        }
        let mut rows = logits.into_iter();
        let mut accepted = 0;
        let from_text = drafts.first().is_some_and(|d| d.from_text);
        let mut ended = false;
        self.stats.drafts += 1;
        for drafted in &mut self.stats.drafted_at[..drafts.len()] {
            *drafted += 1;
        }
        for (j, draft) in drafts.iter().enumerate() {
            let Some(mut row) = rows.next() else { break };
            let raw = self.raw_for_logprobs(&row);
            self.constrain(&mut row);
            let p = distribution(row, &self.params, &self.history);
            let (token, ok) = verify_draft(draft.token, &draft.dist, &p, &mut self.rng);
            let source = match (ok, draft.from_text) {
                (false, _) => TokenSource::Model,
                (true, false) => TokenSource::Module,
                (true, true) => TokenSource::Lookup,
            };
            self.emit(token, raw.as_deref(), source);
            if !ok {
                self.stats.rejected += 1;
                break;
            }
            self.stats.accepted += 1;
            self.stats.accepted_at[j] += 1;
            accepted += 1;
            if self.is_finished() {
                // An accepted draft ended the sequence: what follows it is never read.
                ended = true;
                break;
            }
        }
        if !from_text && !drafts.is_empty() {
            self.record_verification(accepted, drafts.len(), steps);
        }
        if from_text {
            self.record_text_verdicts(drafts.len(), accepted, ended || accepted == drafts.len());
        }
        if ended {
            return Ok(fed);
        }
        if accepted == drafts.len() {
            if let Some(mut row) = rows.next() {
                let raw = self.raw_for_logprobs(&row);
                self.constrain(&mut row);
                let token = distribution(row, &self.params, &self.history).sample(&mut self.rng);
                self.emit(token, raw.as_deref(), TokenSource::Model);
            }
            return Ok(fed);
        }
        // The rejected draft's position and those after it hold tokens the model did not
        // choose: forget them.
        let dropped = drafts.len() - accepted;
        self.full_cache.truncate(self.full_cache.len() - dropped);
        Ok(fed - dropped)
    }

    /// The verdict on a step's `rows` module drafts: `tokens` of them accepted in a row (0: the
    /// first was rejected).
    pub(super) fn record_verification(&mut self, tokens: usize, rows: usize, steps: usize) {
        self.record.record_verification(tokens, rows, steps);
    }

    /// Takes the module's logits for the next token: `alternate` emits its token, the other
    /// modes keep it as a draft. Returns whether a draft was made (a constrained sequence makes
    /// none where the grammar allows nothing in the module's draft vocabulary).
    pub(crate) fn accept_draft(&mut self, mut logits: Vec<f32>) -> bool {
        self.stats.recycle_steps += 1;
        if self.constraint.as_ref().is_some_and(|c| c.is_complete()) {
            // The text is complete (a draft may have completed it): nothing may follow.
            return false;
        }
        let alternate = self.mode == DecodeMode::Alternate;
        let raw = if alternate { self.raw_for_logprobs(&logits) } else { None };
        // The step is spent whether or not it makes a draft.
        self.record.pending_steps += 1;
        if self.constrain(&mut logits) && logits.iter().all(|l| *l == f32::NEG_INFINITY) {
            // Nothing the grammar allows is in the module's draft vocabulary: no draft.
            return false;
        }
        if alternate {
            // The paper's schedule: the recycled token is kept unchecked.
            let token = distribution(logits, &self.params, &self.history).sample(&mut self.rng);
            self.emit(token, raw.as_deref(), TokenSource::Module);
            return false;
        }
        let (token, dist, confidence) = if self.params.is_greedy() {
            let (token, confidence) = greedy_with_confidence(logits, &self.params, &self.history);
            (token, TokenDist::Greedy(token), confidence)
        } else {
            let dist = distribution(logits, &self.params, &self.history);
            let token = dist.sample(&mut self.rng);
            let confidence = f64::from(dist.prob(token));
            (token, dist, confidence)
        };
        // A chained draft is masked in the state after this one: advance, to be taken back.
        let constrained = match &mut self.constraint {
            Some(c) if !self.stop.eos_ids.contains(&token) => match c.advance(token) {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, "the grammar refused a draft it allowed: no draft");
                    return false;
                }
            },
            _ => false,
        };
        self.drafts.push(Draft { token, dist, confidence, constrained, from_text: false });
        true
    }

    /// Masks `logits` with the constraint, if any; returns whether there is one. A grammar
    /// that fails fails the sequence, and so does one whose masks stay dearer than
    /// [`MASK_BUDGET`].
    pub(super) fn constrain(&mut self, logits: &mut [f32]) -> bool {
        let Some(constraint) = &mut self.constraint else { return false };
        let started = std::time::Instant::now();
        let masked = constraint.mask(logits);
        let took = started.elapsed();
        if let Err(error) = masked {
            tracing::warn!(%error, "the grammar failed: the sequence fails");
            self.finish.get_or_insert(FinishReason::ConstraintFailed);
        } else if self.mask_cost.over_budget(took) {
            tracing::warn!(
                mask_ms = took.as_secs_f64() * 1e3,
                budget_ms = MASK_BUDGET.as_secs_f64() * 1e3,
                "the grammar's masks stay dearer than the budget: the sequence fails"
            );
            self.finish.get_or_insert(FinishReason::ConstraintFailed);
        }
        true
    }

    /// Takes the pending drafts, and takes them back from the constraint.
    pub(super) fn retract_drafts(&mut self) -> Vec<Draft> {
        let drafts = std::mem::take(&mut self.drafts);
        self.record.pending_steps = 0;
        self.unconstrain(drafts.iter().filter(|d| d.constrained).count());
        drafts
    }

    pub(super) fn unconstrain(&mut self, tokens: usize) {
        if let (Some(constraint), 1..) = (&mut self.constraint, tokens) {
            if let Err(error) = constraint.rollback(tokens) {
                tracing::warn!(%error, "the grammar could not take back drafts: the sequence fails");
                self.finish.get_or_insert(FinishReason::ConstraintFailed);
            }
        }
    }

    /// The estimated chance that every pending draft is accepted: the acceptance average for
    /// the first, the module's own probability for each chained one.
    pub(super) fn chain_value(&self) -> f64 {
        self.record.acceptance * self.drafts.iter().skip(1).map(|d| d.confidence).product::<f64>()
    }

    /// Drops the last chained draft when the chain with it is worth less than `threshold`
    /// (the module step is spent, but the forward does not carry a token unlikely to pay).
    /// Returns whether it did.
    pub(crate) fn trim_chain(&mut self, threshold: f64) -> bool {
        let trim = self.drafts.len() > 1 && self.chain_value() < threshold;
        if let Some(draft) = self.drafts.pop_if(|_| trim) {
            self.unconstrain(usize::from(draft.constrained));
        }
        trim
    }

    /// Drafts the next forward has room for, from either drafter: they must fit the cache beside
    /// the pending token, and be worth emitting (the forward emits at most drafts + 1 tokens,
    /// and `max_tokens` caps them).
    pub(super) fn draft_room(&self) -> usize {
        let room = self.full_cache.capacity().saturating_sub(self.full_cache.len() + 1);
        let left = self.stop.max_tokens.saturating_sub(self.generated().len());
        room.min(left.saturating_sub(1))
    }

    /// The last draft's token, when the chain may grow: `verify`/`auto`, below `max_drafts`,
    /// not ended by an end-of-sequence draft, and the chance that all drafts so far are
    /// accepted (an upper bound on what one more is worth) at least `threshold`, the
    /// acceptance at which one more draft token pays on this device.
    pub(crate) fn chain_from(&self, threshold: f64) -> Option<u32> {
        let last = self.drafts.last()?;
        let chains = matches!(self.mode, DecodeMode::Verify | DecodeMode::Auto)
            && self.drafts.len() < self.max_drafts.min(self.draft_room())
            && !self.stop.eos_ids.contains(&last.token)
            && !self.constraint.as_ref().is_some_and(|c| c.is_complete())
            && self.chain_value() >= threshold;
        chains.then_some(last.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::CostModel;

    /// A device where one more token in the forward and a module step cost 30% of a 1-token
    /// forward (a draft pays above 0.33 tokens expected, with the margin), and three more
    /// tokens with three module steps 60% (a chain of three pays above 0.66).
    fn costs() -> CostModel {
        CostModel::from_points(vec![(1, 0.010), (2, 0.012), (4, 0.013)], vec![(1, 0.001), (2, 0.0012)])
    }

    fn pays(record: &DraftRecord) -> bool {
        costs().choose(1, &[], 1.0, &[record.value()])[0]
    }

    #[test]
    fn chains_count_in_what_a_draft_yields_and_costs() {
        // First drafts accepted a third of the time, but each accepted one led a chain of three:
        // the first draft's acceptance says no, the yield says yes, as verify's speed does.
        let mut record = DraftRecord::new(0.5);
        for tokens in [3, 0, 0].repeat(20) {
            record.record_verification(tokens, 3, 3);
        }
        assert!(record.acceptance < 0.33 && !costs().choose(1, &[], 1.0, &[DraftValue::single(record.acceptance)])[0]);
        assert!((record.rows - 3.0).abs() < 0.01 && (record.steps - 3.0).abs() < 0.01, "{record:?}");
        assert!(pays(&record), "{record:?}");
        // The same verdicts from chains that also ran a fourth module step, its draft trimmed:
        // the record learns the step, and on a device where a module step is dearer it tips
        // the decision.
        let mut trimmed = record;
        for tokens in [3, 0, 0].repeat(20) {
            trimmed.record_verification(tokens, 3, 4);
        }
        assert!((trimmed.steps - 4.0).abs() < 0.01, "{trimmed:?}");
        let dearer = CostModel::from_points(vec![(1, 0.010), (2, 0.012), (4, 0.013)], vec![(1, 0.0013)]);
        assert!(dearer.choose(1, &[], 1.0, &[record.value()])[0], "{record:?}");
        assert!(!dearer.choose(1, &[], 1.0, &[trimmed.value()])[0], "{trimmed:?}");
    }

    #[test]
    fn a_run_of_rejections_is_forgiven_and_a_module_never_right_is_not() {
        let mut usual = DraftRecord::new(0.5);
        for tokens in [1, 2, 0, 1].repeat(5).into_iter().chain([0; 10]) {
            usual.record_verification(tokens, 1, 1);
        }
        assert!(!pays(&usual), "ten rejections in a row stop the drafts: {usual:?}");
        let mut never = DraftRecord::new(0.5);
        for _ in 0..12 {
            never.record_verification(0, 1, 1);
        }
        let mut steps = 0;
        while !pays(&usual) {
            usual.recover();
            never.recover();
            steps += 1;
        }
        assert!(steps <= 40, "the usually right module drafts again after {steps} steps");
        for _ in 0..200 {
            never.recover();
        }
        assert!(!pays(&never), "a module never right stays off (probes aside): {never:?}");
    }
}
