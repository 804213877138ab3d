//! Drafts read from the text itself (prompt lookup, as in vLLM's `ngram` method and llama.cpp's
//! lookup decoding): where the text's last few tokens occurred before, the tokens that followed
//! them there are proposed. Text that repeats itself (a greedy loop, a question quoted back, the
//! keys of a JSON list, code being edited) is where the module, trained on ordinary answers,
//! drafts worst and the text drafts best. These drafts need no module step: they cost only their
//! places in the forward, and they are verified exactly as the module's are.
use super::{draft_limit, is_seeded_sampling, Draft, Sequence, INITIAL_ACCEPTANCE, MAX_DRAFTS};
use crate::sampling::TokenDist;
use crate::DecodeMode;

/// The longest suffix of the text looked for; longer matches seldom predict better.
const LONGEST_MATCH: usize = 4;
/// The shortest: two tokens match by chance too often in prose.
const SHORTEST_MATCH: usize = 3;

/// Weight of the newest verified token in a sequence's estimate of how often text drafts are
/// accepted (tokens, not drafts: a chain of four counts four verdicts, up to its first rejection).
const TEXT_ACCEPTANCE_WEIGHT: f64 = 0.1;

/// How far each match that the estimate turned down moves it back toward the start
/// ([`INITIAL_ACCEPTANCE`]). The estimate only learns from drafts it lets through, so without
/// this a sequence whose first matches were poor would never look up again, even when its text
/// falls into a loop later, where lookup pays best. About twenty refused matches undo a bad
/// record, and each draft that is then rejected pushes it down again.
const RECOVERY: f64 = 0.05;

/// What followed the latest earlier occurrence of the longest suffix of `text` (of
/// [`SHORTEST_MATCH`] to [`LONGEST_MATCH`] tokens) found before, at most `limit` tokens. Where
/// that runs into the text's end, the text is taken to go on repeating with the period between
/// the two occurrences (a loop of 2 tokens drafts 4, not 2).
///
/// A plain backward scan: it costs a few microseconds per thousand tokens of text, beside a
/// forward's milliseconds, and an index kept up to date per token would cost more code than it
/// saves.
pub(super) fn continuation(text: &[u32], limit: usize) -> Vec<u32> {
    for n in (SHORTEST_MATCH..=LONGEST_MATCH).rev() {
        let Some(last_start) = text.len().checked_sub(n) else { continue };
        let suffix = &text[last_start..];
        if let Some(start) = (0..last_start).rev().find(|&s| text[s..s + n] == *suffix) {
            let from = start + n;
            let mut drafts = text[from..text.len().min(from + limit)].to_vec();
            // The text after its end is predicted to be what followed the match: draft i stands
            // at position from + i, which is draft i - period once past the end.
            let period = last_start - start;
            while drafts.len() < limit {
                drafts.push(drafts[drafts.len() - period]);
            }
            return drafts;
        }
    }
    Vec::new()
}

impl Sequence {
    /// Proposes drafts from the text, when it repeats itself, up to the draft limit: those whose
    /// chance of being reached, from the sequence's estimate of text drafts' acceptance, is at
    /// least `threshold(j)` for the j-th (what one more token in the forward must be worth).
    /// Seeded sampling takes every token the match offers: its text must not depend on timings.
    /// Returns how many were proposed.
    pub(crate) fn draft_from_text(&mut self, threshold: impl Fn(usize) -> f64) -> usize {
        // The caller asks only for decoding sequences with no pending drafts.
        let looks_up = self.prompt_lookup
            && matches!(self.mode, DecodeMode::Verify | DecodeMode::Auto)
            && self.constraint.is_none();
        if !looks_up {
            return 0;
        }
        let limit = draft_limit(&self.params, MAX_DRAFTS).min(self.draft_room());
        let proposed = continuation(&self.tokens, limit);
        let gated = !is_seeded_sampling(&self.params);
        let mut reach = 1.0;
        for (j, token) in proposed.iter().copied().enumerate() {
            reach *= self.text_acceptance;
            if gated && reach < threshold(j) {
                break;
            }
            self.drafts.push(Draft {
                token,
                dist: TokenDist::Greedy(token),
                confidence: 1.0,
                constrained: false,
                from_text: true,
            });
            if self.stop.eos_ids.contains(&token) {
                break;
            }
        }
        if self.drafts.is_empty() && !proposed.is_empty() {
            self.text_acceptance += RECOVERY * (INITIAL_ACCEPTANCE - self.text_acceptance);
        }
        self.drafts.len()
    }

    /// Tokens `drafts` text drafts are expected to add: the chance of reaching each, summed.
    pub(crate) fn text_reach(&self, drafts: usize) -> f64 {
        (1..=drafts).map(|j| self.text_acceptance.powi(j as i32)).sum()
    }

    /// Takes the verdicts on `drafted` text drafts: `accepted` tokens, then a rejection unless
    /// all were (or an accepted one ended the sequence).
    pub(super) fn record_text_verdicts(&mut self, drafted: usize, accepted: usize, all: bool) {
        self.stats.text_drafted += drafted;
        self.stats.text_accepted += accepted;
        let verdicts = std::iter::repeat_n(1.0, accepted).chain((!all).then_some(0.0));
        for verdict in verdicts {
            self.text_acceptance += TEXT_ACCEPTANCE_WEIGHT * (verdict - self.text_acceptance);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::continuation;

    #[test]
    fn proposes_what_followed_the_latest_longest_match() {
        // "1 2 3 4" occurred twice: the latest occurrence's continuation wins.
        let text = [1, 2, 3, 4, 5, 6, 9, 1, 2, 3, 4, 7, 8, 1, 2, 3, 4];
        assert_eq!(continuation(&text, 3), [7, 8, 1]);
        assert_eq!(continuation(&text, 1), [7]);
        // Only a 3-token suffix matches; the continuation may run up to the text's end.
        let text = [5, 2, 3, 4, 9, 9, 2, 3, 4];
        assert_eq!(continuation(&text, 4), [9, 9, 2, 3]);
    }

    #[test]
    fn a_loop_is_drafted_past_the_texts_end() {
        assert_eq!(continuation(&[7, 1, 2, 3, 1, 2, 3], 4), [1, 2, 3, 1]);
        assert_eq!(continuation(&[7, 1, 2, 1, 2, 1, 2], 4), [1, 2, 1, 2]);
        assert_eq!(continuation(&[6, 6, 6, 6, 6], 4), [6, 6, 6, 6]);
    }

    #[test]
    fn proposes_nothing_without_a_long_enough_match() {
        assert!(continuation(&[1, 2, 3, 4, 2, 3], 4).is_empty(), "two tokens are not enough");
        assert!(continuation(&[1, 2, 3], 4).is_empty());
        assert!(continuation(&[], 4).is_empty());
        assert!(continuation(&[1, 2, 3, 1, 2, 3], 0).is_empty());
    }
}
