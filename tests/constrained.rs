//! Constrained decoding in every mode: each emitted token fits the constraint, drafts included,
//! and `verify` / `auto` (with chained drafts) still equal `off` under the same constraint.
//! The constraint here is stateful (what may come next depends on every token taken so far),
//! so a draft taken back without a rollback would show. On the in-repo model.
mod common;

use common::{load, random_module};
use recyclegpt_engine::{
    step, Constraint, CostModel, DecodeMode, FinishReason, SamplingParams, Sequence, StopCriteria, TokenConstraint,
    MASK_BUDGET, MASK_BUDGET_STREAK,
};
use std::path::PathBuf;

fn embedded() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare")
}

/// Token `k` of the output must have an id ≡ (sum of the ids before it) mod 3, and the text is
/// complete after `length` tokens.
struct ModThree {
    taken: Vec<u32>,
    length: usize,
}

impl ModThree {
    fn allows(taken: &[u32], token: u32) -> bool {
        token % 3 == taken.iter().sum::<u32>() % 3
    }
}

impl TokenConstraint for ModThree {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        for (token, logit) in logits.iter_mut().enumerate() {
            if !Self::allows(&self.taken, token as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    fn advance(&mut self, token: u32) -> Result<(), String> {
        if !Self::allows(&self.taken, token) {
            return Err(format!("token {token} does not fit after {:?}", self.taken));
        }
        self.taken.push(token);
        Ok(())
    }

    fn rollback(&mut self, tokens: usize) -> Result<(), String> {
        let keep = self.taken.len().checked_sub(tokens).ok_or("rolled back too far")?;
        self.taken.truncate(keep);
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.taken.len() >= self.length
    }
}

const PROMPTS: [&str; 3] = ["ROMEO.", "Once upon a time", "To be, or not to be, that is the question"];

#[test]
fn every_mode_emits_only_allowed_tokens_and_verify_equals_off() {
    let loaded = load(&embedded(), random_module(8));
    let model = &loaded.model;
    // Drafts cost nothing here, so `auto` drafts and chains run to their end.
    let mut free = CostModel::from_points(vec![(1, 0.010), (256, 0.010)], vec![(1, 0.0), (256, 0.0)]);
    let stop = StopCriteria { max_tokens: 50, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    let modes = [DecodeMode::Off, DecodeMode::Verify, DecodeMode::Auto, DecodeMode::Alternate];
    let mut seqs: Vec<(DecodeMode, Sequence)> = Vec::new();
    for (p, prompt) in PROMPTS.iter().enumerate() {
        for (m, mode) in modes.into_iter().enumerate() {
            let ids = loaded.tokenizer.encode(prompt).unwrap();
            let constraint = Constraint(Box::new(ModThree { taken: Vec::new(), length: 40 }));
            let seq = Sequence::new((p * 4 + m) as u64, model, ids, mode, SamplingParams::greedy(), stop.clone())
                .unwrap()
                .with_max_drafts(3)
                .with_constraint(Some(constraint));
            seqs.push((mode, seq));
        }
    }
    // All twelve in one batch, prompts fed in chunks, as the server runs them.
    while seqs.iter().any(|(_, s)| !s.is_finished()) {
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().map(|(_, s)| s).collect();
        step(model, &mut refs, 4, Some(&mut free)).unwrap();
    }
    let mut drafts = 0;
    for chunk in seqs.chunks(4) {
        let off = chunk[0].1.generated();
        assert_eq!(off.len(), 40, "the constraint ends the text after 40 tokens");
        for (mode, seq) in chunk {
            let out = seq.generated();
            for k in 0..out.len() {
                assert!(ModThree::allows(&out[..k], out[k]), "{mode:?}: token {k} of {out:?} breaks the rule");
            }
            if matches!(mode, DecodeMode::Verify | DecodeMode::Auto) {
                assert_eq!(out, off, "{mode:?} under the constraint equals off");
            }
            drafts += seq.stats().draft_tokens();
        }
    }
    assert!(drafts > 100, "drafts were made and checked: {drafts}");
}

/// Allows every token until it has taken `fail_after`, then fails as a grammar engine does
/// past what it can follow (llguidance: "Current row has 2500 items; max is 2000").
struct FailsAfter {
    taken: usize,
    fail_after: usize,
}

impl TokenConstraint for FailsAfter {
    fn mask(&mut self, _logits: &mut [f32]) -> Result<(), String> {
        if self.taken >= self.fail_after {
            return Err("the grammar's row is too wide".into());
        }
        Ok(())
    }

    fn advance(&mut self, _token: u32) -> Result<(), String> {
        self.taken += 1;
        Ok(())
    }

    fn rollback(&mut self, tokens: usize) -> Result<(), String> {
        self.taken -= tokens;
        Ok(())
    }

    fn is_complete(&self) -> bool {
        false
    }
}

/// A grammar that fails mid-generation fails its sequence in every mode (the server turns that
/// into an error), where it used to finish as an ordinary `stop`.
#[test]
fn a_grammar_that_fails_mid_generation_fails_the_sequence() {
    let loaded = load(&embedded(), random_module(8));
    let model = &loaded.model;
    let mut free = CostModel::from_points(vec![(1, 0.010), (256, 0.010)], vec![(1, 0.0), (256, 0.0)]);
    let stop = StopCriteria { max_tokens: 50, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    for mode in [DecodeMode::Off, DecodeMode::Verify, DecodeMode::Auto, DecodeMode::Alternate] {
        let ids = loaded.tokenizer.encode(PROMPTS[0]).unwrap();
        let constraint = Constraint(Box::new(FailsAfter { taken: 0, fail_after: 6 }));
        let mut seq = Sequence::new(1, model, ids, mode, SamplingParams::greedy(), stop.clone())
            .unwrap()
            .with_max_drafts(3)
            .with_constraint(Some(constraint));
        while !seq.is_finished() {
            step(model, &mut [&mut seq], 4, Some(&mut free)).unwrap();
        }
        assert_eq!(seq.finish_reason(), Some(FinishReason::ConstraintFailed), "{mode:?}");
        assert!(seq.generated().len() <= 6, "{mode:?}: {:?}", seq.generated());
    }
}

/// Allows every token, and takes longer than the mask budget for its first `dear` masks.
struct Dear {
    masks: usize,
    dear: usize,
}

impl TokenConstraint for Dear {
    fn mask(&mut self, _logits: &mut [f32]) -> Result<(), String> {
        self.masks += 1;
        if self.masks <= self.dear {
            std::thread::sleep(MASK_BUDGET + std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    fn advance(&mut self, _token: u32) -> Result<(), String> {
        Ok(())
    }

    fn rollback(&mut self, _tokens: usize) -> Result<(), String> {
        Ok(())
    }

    fn is_complete(&self) -> bool {
        false
    }
}

/// A grammar whose masks stay dearer than the budget fails its sequence within a few tokens
/// (the worker steps every client's sequences, so its cost is everyone's); one whose first
/// masks are dear and the rest cheap, as a large schema's, runs to the end.
#[test]
fn a_grammar_whose_masks_stay_dear_fails_the_sequence() {
    let loaded = load(&embedded(), random_module(8));
    let model = &loaded.model;
    let stop = StopCriteria { max_tokens: 12, eos_ids: Vec::new() };
    for (dear, fails) in [(usize::MAX, true), (MASK_BUDGET_STREAK - 1, false)] {
        let ids = loaded.tokenizer.encode(PROMPTS[0]).unwrap();
        let constraint = Constraint(Box::new(Dear { masks: 0, dear }));
        let mut seq = Sequence::new(1, model, ids, DecodeMode::Off, SamplingParams::greedy(), stop.clone())
            .unwrap()
            .with_constraint(Some(constraint));
        while !seq.is_finished() {
            step(model, &mut [&mut seq], 64, None).unwrap();
        }
        if fails {
            assert_eq!(seq.finish_reason(), Some(FinishReason::ConstraintFailed));
            assert!(seq.generated().len() < MASK_BUDGET_STREAK, "{:?}", seq.generated());
        } else {
            assert_eq!(seq.finish_reason(), Some(FinishReason::Length));
            assert_eq!(seq.generated().len(), 12);
        }
    }
}
