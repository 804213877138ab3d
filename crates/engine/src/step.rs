//! One engine step over any number of sequences, in any mix of modes: one ragged forward of
//! the full model, acceptance, then one ragged forward of the recyclable module.
use crate::sequence::{FullPlan, Sequence};
use crate::EngineError;
use candle_core::Tensor;
use recyclegpt_model::{RecycleGpt, SeqInput};

/// What one step did, for schedulers and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    pub full_tokens: usize,
    pub recycle_tokens: usize,
}

/// Advances every unfinished sequence by one step; prompts are fed `prefill_chunk` tokens at a time.
pub fn step(model: &RecycleGpt, seqs: &mut [&mut Sequence], prefill_chunk: usize) -> Result<StepReport, EngineError> {
    let active: Vec<usize> = (0..seqs.len()).filter(|&i| !seqs[i].is_finished()).collect();
    if active.is_empty() {
        return Ok(StepReport::default());
    }
    let plans: Vec<FullPlan> = active.iter().map(|&i| seqs[i].plan_full(prefill_chunk)).collect();
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

    // Acceptance, and the module's new pairs: h rows of the kept positions with their next tokens.
    let mut logits = output.logits.into_iter();
    let mut hidden_rows: Vec<u32> = Vec::new();
    let mut recycle: Vec<(usize, Vec<u32>, bool)> = Vec::new();
    let mut row_offset = 0u32;
    for (plan, &i) in plans.iter().zip(&active) {
        let rows: Vec<Vec<f32>> = logits.by_ref().take(plan.logits_rows.len()).collect();
        let kept = seqs[i].accept_full(plan, rows)?;
        if let Some(tokens) = seqs[i].recycle_tokens(kept) {
            hidden_rows.extend(row_offset..row_offset + kept as u32);
            recycle.push((i, tokens, seqs[i].wants_draft()));
        }
        row_offset += plan.tokens.len() as u32;
    }
    if recycle.is_empty() {
        return Ok(StepReport { full_tokens, recycle_tokens: 0 });
    }
    let hidden = output.hidden.index_select(&Tensor::new(hidden_rows.as_slice(), output.hidden.device())?, 0)?;
    let drafts = {
        let mut inputs: Vec<SeqInput> = Vec::with_capacity(recycle.len());
        let mut wanted = recycle.iter().peekable();
        for (i, seq) in seqs.iter_mut().enumerate() {
            let Some((_, tokens, wants_draft)) = wanted.next_if(|r| r.0 == i) else {
                continue;
            };
            let cache = seq
                .recycle_cache
                .as_mut()
                .ok_or_else(|| EngineError::Internal("a recycling sequence has no module cache".into()))?;
            inputs.push(SeqInput {
                tokens,
                cache,
                logits_rows: if *wants_draft { vec![tokens.len() - 1] } else { Vec::new() },
            });
        }
        model.recycle_forward(&hidden, &mut inputs)?
    };
    let mut drafts = drafts.into_iter();
    for (i, _, wants_draft) in &recycle {
        if *wants_draft {
            let row = drafts.next().ok_or_else(|| EngineError::Internal("the module returned too few rows".into()))?;
            seqs[*i].accept_draft(row);
        }
    }
    Ok(StepReport { full_tokens, recycle_tokens: hidden_rows.len() })
}
