//! What a draft costs on this device, measured at start-up and refined by the steps as they
//! run, and the decision `auto` makes with it each step: which sequences draft.
//!
//! A decision to draft adds the sequence's drafts to the next full forward (their bodies and
//! head rows: one, or more with a chain) and runs the module steps that make them; it pays
//! back the tokens Y its drafts are expected to have accepted ([`DraftValue`], learned per
//! sequence). So drafting for a sequence raises the step's throughput E/T exactly when
//! Y·T > E·ΔT, where E is the tokens the step is expected to emit, T its time and ΔT what the
//! drafts add. At batch 1 the second token of a forward is nearly free and a modest Y pays; at
//! large batches a forward is compute-bound, ΔT approaches T/E and no draft pays, so `auto`
//! stops drafting by itself.
//!
//! The start-up figures come from small forwards on empty caches. Decoding costs more than
//! that, and not in proportion: attention grows with the context and with the rows that read
//! it, and a module step between forwards pushes the base's weights out of the caches. On the
//! embedded model the second token of a forward measured 1.06x the first at start-up and
//! 1.25-1.4x in generation, enough to turn a draft that pays into one that loses. So each
//! decoding step's forward and module step are timed and pulled into the estimate for their
//! size ([`CostModel::observe_full`], [`CostModel::observe_module`]).
use crate::EngineError;
use candle_core::Tensor;
use recyclegpt_model::{KvCache, RecycleGpt, SeqInput};
use std::time::Instant;

/// Forward sizes are measured at powers of two up to this many tokens; larger ones are
/// extrapolated along the last segment (by then a forward's time grows linearly).
const LARGEST_MEASURED: usize = 128;

/// Timed runs per size (after one warm-up run); the fastest is kept, since what noise adds
/// to a run (another process, a page fault) only ever makes it slower.
const RUNS: usize = 5;

/// How much a draft's expected tokens must exceed what it costs, in the same units: the
/// acceptance estimate is a moving average and the costs are estimates from noisy timings, so
/// a draft judged to pay by a hair loses as often as it wins. Where drafting pays clearly, the
/// margin changes nothing.
const DRAFT_MARGIN: f64 = 1.1;

/// How far one timed step moves the level of the learned costs (see [`Curve`]): about the
/// last ten steps count, so the estimate follows a context that grows without jumping at
/// every step.
const OBSERVED_WEIGHT: f64 = 0.1;

/// A timing counts as at most this factor away from the estimate: a step the OS preempted
/// for a millisecond should nudge the estimate, not double it.
const OBSERVED_CLAMP: f64 = 2.0;

/// What a decision to draft has meant for a sequence, as moving averages over its drafting
/// steps: the module's drafts accepted (`yielded`), the drafts the forward carried (`rows`: the
/// first and its chain) and the module steps run (`steps`: one per draft, and one for a chained
/// draft trimmed as not worth its row). Valuing a draft at its chain's yield but its first
/// draft's cost let a module whose steps are dear draft where its chains lost: `auto` at
/// 0.93-0.95x `off` with a module drafting from the whole 49,152-token head (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftValue {
    pub yielded: f64,
    pub rows: f64,
    pub steps: f64,
}

impl DraftValue {
    /// One draft, no chain, accepted with probability `acceptance`.
    pub fn single(acceptance: f64) -> Self {
        Self { yielded: acceptance, rows: 1.0, steps: 1.0 }
    }
}

/// What a decoding step holds as drafts join it: the tokens its full forward feeds, and the
/// module steps it runs for its drafting sequences (a first step for all of them, then one per
/// chain depth for those whose chains reach it). A sequence that drafts adds its rows to the
/// forward, what one more sequence adds to each module step its chain shares with others, and
/// a step of its own, at the cost of a step for one sequence, for each depth no other chain
/// reaches.
#[derive(Debug, Clone)]
struct StepLoad {
    /// Tokens the full forward feeds (fractional: chains add their average rows).
    fed: f64,
    /// Sequences drafting.
    drafters: usize,
    /// The deepest chain so far, in module steps (fractional: an average).
    depth: f64,
}

impl StepLoad {
    fn new(tokens: usize) -> Self {
        Self { fed: tokens as f64, drafters: 0, depth: 0.0 }
    }

    /// Adds `draft`'s rows and module steps; returns the seconds they add to the step.
    fn add(&mut self, costs: &CostModel, draft: &DraftValue) -> f64 {
        let forward = costs.full_at(self.fed + draft.rows) - costs.full_at(self.fed);
        let shared_step = costs.module_seconds(self.drafters + 1) - costs.module_seconds(self.drafters);
        let shared = draft.steps.min(self.depth.max(1.0));
        let alone = (draft.steps - shared).max(0.0);
        self.fed += draft.rows;
        self.drafters += 1;
        self.depth = self.depth.max(draft.steps);
        forward + shared_step * shared + costs.module_seconds(1) * alone
    }
}

#[derive(Debug, Clone)]
pub struct CostModel {
    /// Seconds of a decoding forward over that many tokens, with a logits row for each.
    full: Curve,
    /// Seconds of a module step drafting for that many sequences.
    module: Curve,
    /// Whether timed steps refine the figures (those given by [`CostModel::from_points`] stay).
    learns: bool,
}

impl CostModel {
    /// Measures `model` for batches of up to `max_batch` sequences (each may carry a draft, so
    /// forwards of up to twice that many tokens). `None` when the model has no module.
    pub fn measure(model: &RecycleGpt, max_batch: usize) -> Result<Option<Self>, EngineError> {
        if !model.has_recycle() {
            return Ok(None);
        }
        let largest = (2 * max_batch.max(1)).min(LARGEST_MEASURED);
        let sizes: Vec<usize> =
            std::iter::successors(Some(1usize), |n| Some(n * 2)).take_while(|&n| n <= largest).collect();
        let mut full = Vec::with_capacity(sizes.len());
        let mut module = Vec::with_capacity(sizes.len());
        let d = model.config().hidden_size;
        for &n in &sizes {
            full.push((n, fastest_seconds(|| forward_once(model, n))?));
            let hidden = Tensor::zeros((n, d), model.dtype(), model.device())?;
            module.push((n, fastest_seconds(|| module_once(model, &hidden, n))?));
        }
        let costs = Self { full: Curve::new(full), module: Curve::new(module), learns: true };
        tracing::info!(
            forward_1_ms = costs.full_seconds(1) * 1e3,
            forward_2_ms = costs.full_seconds(2) * 1e3,
            module_ms = costs.module_seconds(1) * 1e3,
            largest,
            "draft cost model measured"
        );
        Ok(Some(costs))
    }

    /// A cost model from known figures, held fixed (timed steps do not change it): for tests
    /// and for callers that measured elsewhere.
    pub fn from_points(full: Vec<(usize, f64)>, module: Vec<(usize, f64)>) -> Self {
        Self { full: Curve::new(full), module: Curve::new(module), learns: false }
    }

    /// A decoding forward over `tokens` tokens took `seconds` (prefill chunks are not counted:
    /// the table is about decode-sized forwards).
    pub fn observe_full(&mut self, tokens: usize, seconds: f64) {
        if self.learns {
            self.full.observe(tokens, seconds);
        }
    }

    /// A module step drafting for `drafts` sequences took `seconds`.
    pub fn observe_module(&mut self, drafts: usize, seconds: f64) {
        if self.learns && drafts > 0 {
            self.module.observe(drafts, seconds);
        }
    }

    /// Seconds of a full forward over `tokens` tokens.
    pub fn full_seconds(&self, tokens: usize) -> f64 {
        self.full.at(tokens)
    }

    /// [`CostModel::full_seconds`] between sizes: a candidate's chains put a fractional number
    /// of rows into the forward on average.
    fn full_at(&self, tokens: f64) -> f64 {
        let below = tokens.floor().max(0.0) as usize;
        let (low, high) = (self.full_seconds(below), self.full_seconds(below + 1));
        low + (high - low) * (tokens - below as f64)
    }

    /// Seconds of a module step drafting for `drafts` sequences (none: no module step).
    pub fn module_seconds(&self, drafts: usize) -> f64 {
        if drafts == 0 {
            0.0
        } else {
            self.module.at(drafts)
        }
    }

    /// Which candidates draft. The next forward feeds `base_tokens` tokens before any draft;
    /// the `fixed` drafts are made anyway (other modes), and the step is expected to emit
    /// `expected` tokens without any draft. Each candidate's [`DraftValue`] says what drafting
    /// has yielded it and cost it, its chains included; the best yield for its cost is
    /// considered first, and each is added only while it raises the expected tokens per second
    /// by a clear margin ([`DRAFT_MARGIN`]).
    pub fn choose(
        &self,
        base_tokens: usize,
        fixed: &[DraftValue],
        expected: f64,
        candidates: &[DraftValue],
    ) -> Vec<bool> {
        let mut load = StepLoad::new(base_tokens);
        let mut time = self.full_at(load.fed);
        for draft in fixed {
            time += load.add(self, draft);
        }
        let mut emitted = expected + fixed.iter().map(|d| d.yielded).sum::<f64>();
        // What each candidate would add to the step as it stands; the order is fixed before
        // any is chosen, so a candidate whose chains are dear does not stop one that pays.
        let alone: Vec<f64> = candidates.iter().map(|c| load.clone().add(self, c)).collect();
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| (candidates[b].yielded / alone[b]).total_cmp(&(candidates[a].yielded / alone[a])));
        let mut chosen = vec![false; candidates.len()];
        for i in order {
            let candidate = &candidates[i];
            let mut with = load.clone();
            let added = with.add(self, candidate);
            if candidate.yielded * time <= DRAFT_MARGIN * emitted * added {
                break;
            }
            chosen[i] = true;
            load = with;
            emitted += candidate.yielded;
            time += added;
        }
        chosen
    }

    /// The acceptance probability above which one more token in a forward of `tokens` tokens,
    /// expected to emit `expected`, pays for itself (its module step already spent).
    pub fn extra_token_threshold(&self, tokens: usize, expected: f64) -> f64 {
        let time = self.full_seconds(tokens);
        if time <= 0.0 {
            return f64::INFINITY;
        }
        expected * (self.full_seconds(tokens + 1) - self.full_seconds(tokens)) / time
    }

    /// The acceptance probability above which one more chained draft pays, when the next
    /// forward already holds `tokens` tokens with `drafts` drafts and is expected to emit
    /// `expected` tokens: the extra token's share of the forward and a module step of its own,
    /// against the step's time per token.
    pub fn extra_draft_threshold(&self, tokens: usize, drafts: usize, expected: f64) -> f64 {
        let time = self.full_seconds(tokens) + self.module_seconds(drafts);
        let added = self.full_seconds(tokens + 1) - self.full_seconds(tokens) + self.module_seconds(1);
        if time <= 0.0 {
            return f64::INFINITY;
        }
        expected * added / time
    }
}

fn fastest_seconds(mut run: impl FnMut() -> Result<(), EngineError>) -> Result<f64, EngineError> {
    run()?;
    let mut fastest = f64::INFINITY;
    for _ in 0..RUNS {
        let start = Instant::now();
        run()?;
        fastest = fastest.min(start.elapsed().as_secs_f64());
    }
    Ok(fastest)
}

/// One decode step over `n` tokens with fresh caches, shaped as drafting shapes it: sequences
/// of two tokens (the pending one and a draft), and one of a single token when `n` is odd.
/// Measured as `n` one-token sequences, every size above 1 would pay the per-sequence work
/// (attention calls, cache writes) of twice the sequences a drafting step has: at batch 1 the
/// forward a draft joins is one sequence of two tokens, not two sequences.
fn forward_once(model: &RecycleGpt, n: usize) -> Result<(), EngineError> {
    let tokens: Vec<Vec<u32>> = (0..n)
        .step_by(2)
        .map(|first| (first..n.min(first + 2)).map(|i| (i % model.config().vocab_size) as u32).collect())
        .collect();
    let mut caches = tokens.iter().map(|t| model.new_cache(t.len())).collect::<Result<Vec<_>, _>>()?;
    let mut inputs: Vec<SeqInput> = caches
        .iter_mut()
        .zip(&tokens)
        .map(|(cache, tokens)| SeqInput { tokens, cache, logits_rows: (0..tokens.len()).collect() })
        .collect();
    model.forward(&mut inputs)?;
    Ok(())
}

/// One module step drafting for `n` sequences.
fn module_once(model: &RecycleGpt, hidden: &Tensor, n: usize) -> Result<(), EngineError> {
    let mut caches = Vec::with_capacity(n);
    for _ in 0..n {
        caches.push(
            model
                .new_recycle_cache(1)?
                .ok_or_else(|| EngineError::Internal("a model with a module made no module cache".into()))?,
        );
    }
    let tokens = one_token_each(model, n);
    model.recycle_forward(hidden, &mut inputs(&mut caches, &tokens))?;
    Ok(())
}

fn one_token_each(model: &RecycleGpt, n: usize) -> Vec<[u32; 1]> {
    (0..n).map(|i| [(i % model.config().vocab_size) as u32]).collect()
}

/// One input per cache, each one token with its logits row.
fn inputs<'a>(caches: &'a mut [KvCache], tokens: &'a [[u32; 1]]) -> Vec<SeqInput<'a>> {
    caches.iter_mut().zip(tokens).map(|(cache, tokens)| SeqInput { tokens, cache, logits_rows: vec![0] }).collect()
}

/// Seconds against size: the measured points, scaled by what decoding was seen to pay.
///
/// The correction has two parts. A level, which every timed step moves, follows what all sizes
/// share: a longer context, the machine's load. A shape per size timed, learned more slowly
/// against the level, keeps what sets one size apart: on the embedded model a second token
/// costs 1.3x as much again in generation as measured, while the first costs what was
/// measured. The smallest measured size anchors the shape (its shape is 1). Sizes not timed
/// take the shape of their neighbours and follow the level, so a size timed long ago, at
/// another context or load, does not keep its old seconds; and the measured slope survives
/// between sizes (a batch of 64 timed dear must not make the 65th token look free, as
/// correcting the seconds themselves did).
#[derive(Debug, Clone)]
struct Curve {
    /// (size, seconds) as measured (or given), sorted by size.
    measured: Vec<(usize, f64)>,
    /// Decoding's seconds over the measured ones, shared by every size.
    level: f64,
    /// (size, departure from the level) for the sizes timed, sorted by size; the smallest
    /// measured size is never here (its shape is 1).
    shapes: Vec<(usize, f64)>,
    /// The corrected curve at every size above, made non-decreasing (see [`monotone`]).
    read: Vec<(usize, f64)>,
}

/// How far one timed step moves a size's shape: slower than the level, so that what all sizes
/// share lands in the level and a shape holds only a size's own departure.
const SHAPE_WEIGHT: f64 = 0.05;

impl Curve {
    fn new(points: Vec<(usize, f64)>) -> Self {
        let mut measured = points;
        measured.sort_by_key(|p| p.0);
        measured.dedup_by_key(|p| p.0);
        Self { read: monotone(measured.clone()), measured, level: 1.0, shapes: Vec::new() }
    }

    fn at(&self, size: usize) -> f64 {
        interpolate(&self.read, size)
    }

    /// The size whose shape is 1.
    fn anchor(&self) -> usize {
        self.measured.first().map_or(1, |p| p.0)
    }

    /// A size's departure from the level: piecewise-linear from the anchor's 1 through the
    /// sizes timed, constant past the last.
    fn shape(&self, size: usize) -> f64 {
        let mut previous = (self.anchor(), 1.0);
        for &(seen, shape) in &self.shapes {
            if seen >= size {
                if size <= previous.0 {
                    return previous.1;
                }
                return previous.1 + (shape - previous.1) * (size - previous.0) as f64 / (seen - previous.0) as f64;
            }
            previous = (seen, shape);
        }
        previous.1
    }

    /// Pulls the level, and the shape of `size`, toward `seconds` over the measured figure; a
    /// size not yet timed starts from the shape the curve gave it. Sizes past 256 (prefill
    /// chunks, not decoding) are not tracked.
    fn observe(&mut self, size: usize, seconds: f64) {
        if size == 0 || size > 2 * LARGEST_MEASURED || !(seconds > 0.0 && seconds.is_finite()) {
            return;
        }
        let measured = interpolate(&self.measured, size);
        if !(measured > 0.0 && measured.is_finite()) {
            return;
        }
        let shape = self.shape(size);
        let expected = self.level * shape;
        let seen = (seconds / measured).clamp(expected / OBSERVED_CLAMP, expected * OBSERVED_CLAMP);
        self.level += OBSERVED_WEIGHT * (seen / shape - self.level);
        if size != self.anchor() {
            let index = match self.shapes.binary_search_by_key(&size, |p| p.0) {
                Ok(index) => index,
                Err(index) => {
                    self.shapes.insert(index, (size, shape));
                    index
                }
            };
            let shape = &mut self.shapes[index].1;
            *shape += SHAPE_WEIGHT * (seen / self.level - *shape);
        }
        let mut sizes: Vec<usize> = self.measured.iter().chain(&self.shapes).map(|p| p.0).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let corrected = sizes.into_iter().map(|n| (n, interpolate(&self.measured, n) * self.level * self.shape(n)));
        self.read = monotone(corrected.collect());
    }
}

/// Timing noise can make a larger forward measure faster than a smaller one; a cost that falls
/// with size would make drafts look free, so each point is raised to the largest before it.
fn monotone(mut points: Vec<(usize, f64)>) -> Vec<(usize, f64)> {
    points.sort_by_key(|p| p.0);
    let mut highest = 0.0f64;
    for point in &mut points {
        highest = highest.max(point.1);
        point.1 = highest;
    }
    points
}

/// Piecewise-linear through `points` (sorted by size), extended along the end segments.
fn interpolate(points: &[(usize, f64)], at: usize) -> f64 {
    match points {
        [] => 0.0,
        [(_, only)] => *only,
        _ => {
            let segment = points.windows(2).find(|w| at <= w[1].0).unwrap_or(&points[points.len() - 2..]);
            let ((x0, y0), (x1, y1)) = (segment[0], segment[1]);
            let slope = (y1 - y0) / (x1 - x0) as f64;
            (y0 + slope * (at as f64 - x0 as f64)).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory-bound device: a forward costs 10 ms plus 0.5 ms a token up to 8 tokens, then
    /// becomes compute-bound at 2 ms a token; a module step costs 1 ms plus 0.1 ms a draft.
    fn device() -> CostModel {
        let full = [1usize, 2, 4, 8, 16, 32, 64, 128]
            .iter()
            .map(|&n| (n, if n <= 8 { 0.010 + 0.0005 * n as f64 } else { 0.014 + 0.002 * (n - 8) as f64 }))
            .collect();
        let module = [1usize, 2, 4, 8, 16, 32, 64].iter().map(|&n| (n, 0.001 + 0.0001 * n as f64)).collect();
        CostModel::from_points(full, module)
    }

    fn singles(acceptance: &[f64]) -> Vec<DraftValue> {
        acceptance.iter().map(|&a| DraftValue::single(a)).collect()
    }

    #[test]
    fn interpolation_follows_the_points_and_extends_the_last_segment() {
        let costs = device();
        assert!((costs.full_seconds(3) - 0.0115).abs() < 1e-9);
        assert!((costs.full_seconds(256) - (0.014 + 0.002 * 248.0)).abs() < 1e-9);
        assert_eq!(costs.module_seconds(0), 0.0);
    }

    #[test]
    fn a_likely_draft_pays_at_batch_one_and_an_unlikely_one_does_not() {
        let costs = device();
        // T = 10.5 ms, a draft adds 0.5 ms + 1.1 ms: it pays above α ≈ 0.15 (0.17 with the margin).
        assert_eq!(costs.choose(1, &[], 1.0, &singles(&[0.6])), vec![true]);
        assert_eq!(costs.choose(1, &[], 1.0, &singles(&[0.1])), vec![false]);
    }

    #[test]
    fn compute_bound_batches_stop_drafting() {
        let costs = device();
        let acceptance = vec![0.9; 64];
        let chosen = costs.choose(64, &[], 64.0, &singles(&acceptance));
        assert!(chosen.iter().all(|c| !c), "no draft pays once each token costs its own time");
        // Small batches still draft, the best yield for its cost first, while each draft pays.
        let chosen = costs.choose(4, &[], 4.0, &singles(&[0.2, 0.9, 0.8, 0.05]));
        assert_eq!(chosen, vec![false, true, true, false]);
    }

    #[test]
    fn a_chain_counts_its_rows_and_module_steps() {
        // A module step as dear as half a forward: one draft yielding 0.9 tokens pays, but the
        // same yield from chains of 2.5 rows and 3 module steps does not, nor from one row and
        // 3 module steps (two chained drafts trimmed).
        let costs = CostModel::from_points(vec![(1, 0.010), (2, 0.0105), (4, 0.0115)], vec![(1, 0.005), (2, 0.006)]);
        assert_eq!(costs.choose(1, &[], 1.0, &singles(&[0.9])), vec![true]);
        let chained = DraftValue { yielded: 0.9, rows: 2.5, steps: 3.0 };
        assert_eq!(costs.choose(1, &[], 1.0, &[chained]), vec![false]);
        let trimmed = DraftValue { yielded: 0.9, rows: 1.0, steps: 3.0 };
        assert_eq!(costs.choose(1, &[], 1.0, &[trimmed]), vec![false]);
        // Beside drafts made anyway, a draft shares their forward and their module step: 0.2
        // tokens pays there (a row and 1 ms more) and not alone (a row and a 5 ms step).
        let fixed = [DraftValue { yielded: 0.5, rows: 2.0, steps: 2.0 }];
        assert_eq!(costs.choose(1, &fixed, 1.0, &singles(&[0.2])), vec![true]);
        assert_eq!(costs.choose(1, &[], 1.0, &singles(&[0.2])), vec![false]);
        // A chain deeper than the others' runs its extra steps alone: beside that fixed draft,
        // a 0.9-token draft of 4 steps pays for 2 shared and 2 alone only with a cheaper module.
        let deep = DraftValue { yielded: 0.9, rows: 1.0, steps: 4.0 };
        assert_eq!(costs.choose(1, &fixed, 1.0, &[deep]), vec![false]);
        let cheap = CostModel::from_points(vec![(1, 0.010), (2, 0.0105), (4, 0.0115)], vec![(1, 0.001), (2, 0.0012)]);
        assert_eq!(cheap.choose(1, &fixed, 1.0, &[deep]), vec![true]);
    }

    #[test]
    fn a_dear_chain_does_not_stop_a_draft_that_pays() {
        // The 3-step chain yields more per row but less for its cost: the single draft is
        // considered first and chosen, the chain is not.
        let costs = device();
        let chain = DraftValue { yielded: 0.45, rows: 1.0, steps: 3.0 };
        assert_eq!(costs.choose(2, &[], 2.0, &[chain, DraftValue::single(0.4)]), vec![false, true]);
    }

    /// A measured (learning) model with `device()`'s figures.
    fn learning() -> CostModel {
        let fixed = device();
        CostModel { learns: true, ..fixed }
    }

    #[test]
    fn timed_steps_pull_the_estimate_toward_what_decoding_costs() {
        let mut costs = learning();
        // Start-up said a second token adds 0.5 ms to 10.5 ms; decoding finds it adds 5.5 ms.
        assert!(costs.choose(1, &[], 1.0, &singles(&[0.5])) == vec![true]);
        for _ in 0..200 {
            costs.observe_full(1, 0.0105);
            costs.observe_full(2, 0.016);
        }
        assert!((costs.full_seconds(1) - 0.0105).abs() < 1e-4, "{}", costs.full_seconds(1));
        assert!((costs.full_seconds(2) - 0.016).abs() < 1e-4, "{}", costs.full_seconds(2));
        // A draft accepted half the time no longer pays: 0.5 · 10.5 < 1.1 · (5.5 + 1.1).
        assert_eq!(costs.choose(1, &[], 1.0, &singles(&[0.5])), vec![false]);
        // A size never timed takes its neighbour's departure, then learns its own.
        let before = costs.full_seconds(3);
        assert!(before > 0.0115 * 1.4, "size 3 follows size 2's departure: {before}");
        costs.observe_full(3, 0.0150);
        assert!(costs.full_seconds(3) < before);
        costs.observe_module(1, 0.002);
        assert!(costs.module_seconds(1) > 0.0011);
    }

    #[test]
    fn a_size_not_timed_lately_follows_the_others() {
        // Drafting taught the model that a second token costs 1.5 ms; then drafting stopped
        // and only single-token forwards were timed, as the context grew (x2), then shrank
        // (a new, short request: x0.5).
        let mut costs = learning();
        for _ in 0..200 {
            costs.observe_full(1, 0.0105);
            costs.observe_full(2, 0.012);
        }
        let step = |c: &CostModel| c.full_seconds(2) - c.full_seconds(1);
        let learned = step(&costs);
        assert!((learned - 0.0015).abs() < 2e-4, "{learned}");
        for _ in 0..100 {
            costs.observe_full(1, 0.021);
        }
        assert!(
            (step(&costs) - 2.0 * learned).abs() < 0.1 * learned,
            "the second token grew with the first: {}",
            step(&costs)
        );
        for _ in 0..100 {
            costs.observe_full(1, 0.00525);
        }
        assert!((step(&costs) - 0.5 * learned).abs() < 0.1 * learned, "and shrank with it: {}", step(&costs));
        // So a draft that is always accepted still pays, and probes go on.
        assert_eq!(costs.choose(1, &[], 1.0, &singles(&[1.0])), vec![true]);
    }

    #[test]
    fn one_slow_step_nudges_the_estimate_and_fixed_figures_stay() {
        let mut costs = learning();
        costs.observe_full(1, 1.0);
        // Clamped to twice the estimate, then weighted: 10.5 ms + 0.1 · 10.5 ms.
        assert!((costs.full_seconds(1) - 0.01155).abs() < 1e-9);
        let mut fixed = device();
        fixed.observe_full(1, 1.0);
        fixed.observe_module(1, 1.0);
        assert_eq!(fixed.full_seconds(1), device().full_seconds(1));
        assert_eq!(fixed.module_seconds(1), device().module_seconds(1));
    }

    #[test]
    fn a_dear_batch_keeps_the_next_token_dear() {
        // Decoding 64 sequences takes 1.5x the start-up figure; 65 and 128 were never timed.
        let mut costs = learning();
        for _ in 0..60 {
            costs.observe_full(64, 1.5 * device().full_seconds(64));
        }
        let step = costs.full_seconds(65) - costs.full_seconds(64);
        let measured_step = device().full_seconds(65) - device().full_seconds(64);
        assert!((step - 1.5 * measured_step).abs() < 0.01 * measured_step, "{step} vs {measured_step}");
        assert!(costs.full_seconds(128) > costs.full_seconds(64));
        // So a full batch still drafts nothing, though each forward costs more than measured.
        assert!(costs.choose(64, &[], 64.0, &singles(&[0.9; 64])).iter().all(|c| !c));
    }

    #[test]
    fn noisy_measurements_never_make_a_larger_forward_cheaper() {
        let costs = CostModel::from_points(vec![(1, 0.010), (2, 0.009), (4, 0.012)], vec![(1, 0.001)]);
        assert!(costs.full_seconds(2) >= costs.full_seconds(1));
        // Nor do timed steps: a smaller forward that turns dear raises the larger ones.
        let mut costs = learning();
        for _ in 0..60 {
            costs.observe_full(1, 0.020);
        }
        assert!(costs.full_seconds(2) >= costs.full_seconds(1));
    }
}
