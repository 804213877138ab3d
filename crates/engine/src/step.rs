//! One engine step over any number of sequences, in any mix of modes: one ragged forward of
//! the full model, acceptance, then one ragged forward of the recyclable module.
use crate::cost::CostModel;
use crate::drafting::{chain_drafts, decide_auto_drafts, draft_from_text, NextForward, Pairs};
use crate::sequence::{FullPlan, Sequence};
use crate::EngineError;
use candle_core::Tensor;
use recyclegpt_model::{RecycleGpt, SeqInput};
use std::time::Instant;

/// What one step did, for schedulers and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    pub full_tokens: usize,
    pub recycle_tokens: usize,
}

/// Advances every unfinished sequence by one step; prompts are fed `prefill_chunk` tokens at a
/// time. `costs` lets `auto` sequences draft only where it pays (without it they always draft),
/// and learns from this step's timings.
pub fn step(
    model: &RecycleGpt,
    seqs: &mut [&mut Sequence],
    prefill_chunk: usize,
    mut costs: Option<&mut CostModel>,
) -> Result<StepReport, EngineError> {
    let active: Vec<usize> = (0..seqs.len()).filter(|&i| !seqs[i].is_finished()).collect();
    if active.is_empty() {
        return Ok(StepReport::default());
    }
    let plans: Vec<FullPlan> = active.iter().map(|&i| seqs[i].plan_full(prefill_chunk)).collect();
    let started = Instant::now();
    let output = {
        let mut inputs: Vec<SeqInput> = seqs
            .iter_mut()
            .filter(|s| !s.is_finished())
            .zip(&plans)
            .map(|(seq, plan)| SeqInput {
                tokens: &plan.tokens,
                cache: &mut seq.full_cache,
                logits_rows: plan.logits_rows.clone(),
            })
            .collect();
        model.forward(&mut inputs)?
    };
    let full_tokens: usize = plans.iter().map(|p| p.tokens.len()).sum();
    if let Some(costs) = costs.as_deref_mut().filter(|_| plans.iter().all(|p| !p.prompt)) {
        costs.observe_full(full_tokens, started.elapsed().as_secs_f64());
    }

    // Acceptance, and the module's new pairs: h rows of the kept positions with their next tokens.
    let mut logits = output.logits.into_iter();
    let mut pairs: Vec<Pairs> = Vec::new();
    let mut row_offset = 0u32;
    for (plan, &i) in plans.iter().zip(&active) {
        let rows: Vec<Vec<f32>> = logits.by_ref().take(plan.logits_rows.len()).collect();
        let kept = seqs[i].accept_full(plan, rows)?;
        if let Some(tokens) = seqs[i].recycle_tokens(kept) {
            pairs.push(Pairs {
                seq: i,
                tokens,
                first_row: row_offset,
                draft: seqs[i].wants_draft(),
                prompt: plan.prompt,
            });
        }
        row_offset += plan.tokens.len() as u32;
    }
    let mut load = NextForward::of(seqs, prefill_chunk);
    draft_from_text(costs.as_deref(), seqs, &mut pairs, &mut load);
    if let Some(costs) = costs.as_deref() {
        decide_auto_drafts(costs, seqs, &mut pairs, &load)?;
    }
    if pairs.is_empty() {
        return Ok(StepReport { full_tokens, recycle_tokens: 0 });
    }
    let started = Instant::now();
    let hidden_rows: Vec<u32> = pairs.iter().flat_map(|p| p.first_row..p.first_row + p.tokens.len() as u32).collect();
    let hidden = output.features.index_select(&Tensor::new(hidden_rows.as_slice(), output.features.device())?, 0)?;
    let output = {
        let mut inputs: Vec<SeqInput> = Vec::with_capacity(pairs.len());
        let mut wanted = pairs.iter().peekable();
        for (i, seq) in seqs.iter_mut().enumerate() {
            let Some(Pairs { tokens, draft, .. }) = wanted.next_if(|p| p.seq == i) else {
                continue;
            };
            let cache = seq.module_cache()?;
            inputs.push(SeqInput {
                tokens,
                cache,
                logits_rows: if *draft { vec![tokens.len() - 1] } else { Vec::new() },
            });
        }
        model.recycle_forward_features(&hidden, &mut inputs)?
    };
    let drafting = pairs.iter().filter(|p| p.draft).count();
    // The module curve is timed here only, at its first step of each decoding step (one or two
    // pairs per sequence, with the drafts' bookkeeping); chained steps, one pair each, cost
    // less and would make the estimate swing between the two.
    if let Some(costs) = costs.as_deref_mut().filter(|_| pairs.iter().all(|p| !p.prompt)) {
        costs.observe_module(drafting, started.elapsed().as_secs_f64());
    }
    let mut drafts = output.logits.into_iter();
    // Each drafting sequence's feature row: the module's output at its last new token. A first
    // draft always joins the forward: `auto` decided it pays from the verdicts on the
    // sequence's drafts, not from the module's own probability, which a module can be right
    // more often than (dropping drafts on it starved `auto` at 4 clients: docs/benchmarks.md).
    let mut feature_rows = Vec::new();
    let mut offset = 0u32;
    for pair in &pairs {
        offset += pair.tokens.len() as u32;
        if pair.draft {
            let row = drafts.next().ok_or_else(|| EngineError::Internal("the module returned too few rows".into()))?;
            if seqs[pair.seq].accept_draft(row) {
                feature_rows.push((pair.seq, offset - 1));
            }
        }
    }
    if let Some(costs) = costs {
        let drafted = feature_rows.len();
        let expected = load.decoding + feature_rows.iter().map(|&(i, _)| seqs[i].acceptance()).sum::<f64>();
        let forward = NextForward { tokens: load.tokens + drafted, decoding: expected };
        chain_drafts(model, costs, seqs, &output.features, feature_rows, forward)?;
    }
    Ok(StepReport { full_tokens, recycle_tokens: hidden_rows.len() })
}
