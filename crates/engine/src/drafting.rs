//! Which sequences draft and how far: `auto`'s per-step decision, and chains of drafts, where
//! the module is applied again to its own output.
use crate::cost::{CostModel, DraftValue};
use crate::sequence::MAX_DRAFTS;
use crate::{DecodeMode, EngineError, Sequence};
use candle_core::Tensor;
use recyclegpt_model::{RecycleGpt, SeqInput};

/// A sequence's new (h_{t-1}, x_t) pairs for the module: `tokens` with the hidden rows from
/// `first_row` on, and whether the module drafts for it after them.
pub(crate) struct Pairs {
    pub seq: usize,
    pub tokens: Vec<u32>,
    pub first_row: u32,
    pub draft: bool,
    /// The tokens are the prompt's last chunk (the module still reads them when not drafting).
    pub prompt: bool,
}

/// What the next full forward holds before any draft.
pub(crate) struct NextForward {
    /// Tokens it feeds: one per decoding sequence, a prompt chunk per prefilling one.
    pub tokens: usize,
    /// Tokens it is expected to emit: one per decoding sequence (plus what drafts add, once
    /// they are chosen).
    pub decoding: f64,
}

impl NextForward {
    pub fn of(seqs: &[&mut Sequence], prefill_chunk: usize) -> Self {
        let live = seqs.iter().filter(|s| !s.is_finished());
        Self {
            tokens: live.clone().map(|s| s.next_feed(prefill_chunk)).sum(),
            decoding: live.filter(|s| !s.is_prefilling()).count() as f64,
        }
    }
}

/// Drafts from the text for the sequences whose text repeats itself (`Sequence::draft_from_text`),
/// before the module is asked: a sequence with such drafts makes no module draft this step,
/// but the module still reads its new pairs, in `auto` as in `verify`: gaps in the module's
/// cache would cost its later drafts acceptance, for a module step worth about 5% of a forward.
/// Without `costs`, every token a match offers is drafted. `load` grows by what the drafts add
/// to the next forward.
pub(crate) fn draft_from_text(
    costs: Option<&CostModel>,
    seqs: &mut [&mut Sequence],
    pairs: &mut [Pairs],
    load: &mut NextForward,
) {
    for pair in pairs.iter_mut().filter(|p| p.draft) {
        let seq = &mut seqs[pair.seq];
        let (tokens, expected) = (load.tokens, load.decoding);
        // The j-th draft joins a forward that already holds the j before it, and is expected
        // to emit what they add.
        let reach: Vec<f64> = (0..MAX_DRAFTS).map(|j| seq.text_reach(j)).collect();
        let threshold = |j: usize| {
            let before = reach.get(j).copied().unwrap_or(0.0);
            costs.map_or(0.0, |c| c.extra_token_threshold(tokens + j, expected + before))
        };
        let drafted = seq.draft_from_text(threshold);
        if drafted == 0 {
            continue;
        }
        pair.draft = false;
        load.tokens += drafted;
        load.decoding += seq.text_reach(drafted);
    }
}

/// `auto`'s decision for the coming step. The next forward feeds one token per decoding
/// sequence (a prompt chunk per prefilling one) plus the drafts; `verify` and `alternate`
/// sequences draft anyway, and the cost model picks which `auto` sequences add theirs. An `auto`
/// sequence that does not draft skips the module entirely: its module cache passes over these
/// positions (`KvCache::skip`), so a module that never agrees costs nothing but rare probes.
pub(crate) fn decide_auto_drafts(
    costs: &CostModel,
    seqs: &mut [&mut Sequence],
    pairs: &mut Vec<Pairs>,
    load: &NextForward,
) -> Result<(), EngineError> {
    let is_candidate = |p: &Pairs, seqs: &[&mut Sequence]| p.draft && seqs[p.seq].mode() == DecodeMode::Auto;
    if !pairs.iter().any(|p| is_candidate(p, &*seqs)) {
        return Ok(());
    }
    let fixed: Vec<DraftValue> =
        pairs.iter().filter(|p| p.draft && !is_candidate(p, &*seqs)).map(|p| seqs[p.seq].draft_value()).collect();
    let candidates: Vec<usize> = (0..pairs.len()).filter(|&k| is_candidate(&pairs[k], &*seqs)).collect();
    // A draft is valued at what drafting has yielded the sequence and cost it, its chains
    // included: the first draft's acceptance alone undervalues it wherever chains pay, and
    // `auto` fell behind `verify` (1.09x against 1.25x `off` on chat) by declining drafts that
    // paid.
    let values: Vec<DraftValue> = candidates.iter().map(|&k| seqs[pairs[k].seq].draft_value()).collect();
    let pays = costs.choose(load.tokens, &fixed, load.decoding, &values);
    // Probes are only worth making where a draft that is always accepted would pay: in a
    // compute-bound batch none would, and probing there would only cost.
    let worth_probing = costs.choose(load.tokens, &fixed, load.decoding, &[DraftValue::single(1.0)])[0];
    let mut skipped = vec![false; pairs.len()];
    for (&k, pays) in candidates.iter().zip(pays) {
        let pair = &mut pairs[k];
        pair.draft = seqs[pair.seq].decide_draft(pays, worth_probing);
        // The prompt's last chunk is still read (without a draft): drafts made later need it.
        if !pair.draft && !pair.prompt {
            skipped[k] = true;
            seqs[pair.seq].module_cache()?.skip(pair.tokens.len());
        }
    }
    let mut skipped = skipped.into_iter();
    pairs.retain(|_| !skipped.next().unwrap_or(false));
    Ok(())
}

/// Chains drafts: while some sequence's drafts are confident enough that one more token pays
/// (`threshold`, from the cost model), the module runs again for those sequences on its own
/// output (its feature at the last draft as the next h, the last draft as the next x). The
/// chain's entries in the module caches are speculative, so they are dropped afterwards: the
/// next step writes the verified pairs with the full model's own hidden states.
pub(crate) fn chain_drafts(
    model: &RecycleGpt,
    costs: &CostModel,
    seqs: &mut [&mut Sequence],
    features: &Tensor,
    mut rows: Vec<(usize, u32)>,
    mut forward: NextForward,
) -> Result<(), EngineError> {
    let mut features = features.clone();
    let mut stored: Vec<(usize, usize)> = Vec::new();
    let mut drafts = rows.len();
    loop {
        // What one more token is worth paying for, as the forward grows with the chain.
        let threshold = costs.extra_draft_threshold(forward.tokens, drafts, forward.decoding);
        let chained: Vec<(usize, u32, u32)> =
            rows.iter().filter_map(|&(i, row)| seqs[i].chain_from(threshold).map(|token| (i, row, token))).collect();
        if chained.is_empty() {
            break;
        }
        let picked: Vec<u32> = chained.iter().map(|c| c.1).collect();
        let hidden = features.index_select(&Tensor::new(picked.as_slice(), features.device())?, 0)?;
        let tokens: Vec<[u32; 1]> = chained.iter().map(|c| [c.2]).collect();
        let output = {
            let mut inputs = Vec::with_capacity(chained.len());
            let mut wanted = chained.iter().zip(&tokens).peekable();
            for (i, seq) in seqs.iter_mut().enumerate() {
                let Some((_, tokens)) = wanted.next_if(|(c, _)| c.0 == i) else {
                    continue;
                };
                let cache = seq.module_cache()?;
                if !stored.iter().any(|&(s, _)| s == i) {
                    stored.push((i, cache.len()));
                }
                inputs.push(SeqInput { tokens: tokens.as_slice(), cache, logits_rows: vec![0] });
            }
            model.recycle_forward_features(&hidden, &mut inputs)?
        };
        rows.clear();
        for (k, ((i, _, _), row)) in chained.iter().zip(output.logits).enumerate() {
            // A chain that was cut here, or where no draft was made, ends here.
            if seqs[*i].accept_draft(row) && !seqs[*i].trim_chain(threshold) {
                rows.push((*i, k as u32));
            }
        }
        forward.tokens += rows.len();
        drafts += rows.len();
        features = output.features;
    }
    for (i, len) in stored {
        seqs[i].module_cache()?.truncate(len);
    }
    Ok(())
}
