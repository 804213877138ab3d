//! Drafts read from the text itself (prompt lookup, as in vLLM's `ngram` method and llama.cpp's
//! lookup decoding): where the text's last few tokens occurred before, the tokens that followed
//! them there are proposed. Text that repeats itself (a greedy loop, a question quoted back, the
//! keys of a JSON list, code being edited) is where the module, trained on ordinary answers,
//! drafts worst and the text drafts best. These drafts need no module step: they cost only their
//! places in the forward, and they are verified exactly as the module's are.
use super::{draft_limit, Draft, Sequence, MAX_DRAFTS};
use crate::sampling::TokenDist;
use crate::DecodeMode;

/// The longest suffix of the text looked for; longer matches seldom predict better.
const LONGEST_MATCH: usize = 4;
/// The shortest: two tokens match by chance too often in prose.
const SHORTEST_MATCH: usize = 3;

/// Weight of the newest verified token in a sequence's estimate of how often text drafts are
/// accepted (tokens, not drafts: a chain of four counts four verdicts, up to its first rejection).
const ACCEPTANCE_WEIGHT: f64 = 0.1;

/// The tokens that followed the latest earlier occurrence of the longest suffix of `text` (of
/// [`SHORTEST_MATCH`] to [`LONGEST_MATCH`] tokens) found before, at most `limit` of them.
///
/// A plain backward scan: a text is at most a context long (a few thousand tokens), so one scan
/// costs microseconds beside a forward's milliseconds, and an index kept up to date per token
/// would cost more code than it saves.
pub(super) fn continuation(text: &[u32], limit: usize) -> &[u32] {
    for n in (SHORTEST_MATCH..=LONGEST_MATCH).rev() {
        let Some(last_start) = text.len().checked_sub(n) else { continue };
        let suffix = &text[last_start..];
        if let Some(start) = (0..last_start).rev().find(|&s| text[s..s + n] == *suffix) {
            let from = start + n;
            return &text[from..text.len().min(from + limit)];
        }
    }
    &[]
}

impl Sequence {
    /// Proposes drafts from the text, when it repeats itself: in `verify`, every token the match
    /// offers (up to the draft limit); in `auto`, those whose chance of being reached, from this
    /// sequence's record, is at least `threshold(j)` for the j-th (what one more token in the
    /// forward must be worth). Returns how many were proposed.
    pub(crate) fn draft_from_text(&mut self, threshold: impl Fn(usize) -> f64) -> usize {
        let looks_up = self.prompt_lookup
            && matches!(self.mode, DecodeMode::Verify | DecodeMode::Auto)
            && self.constraint.is_none()
            && self.drafts.is_empty()
            && self.wants_draft();
        if !looks_up {
            return 0;
        }
        // Like the module's chains: the drafts must fit the cache beside the pending token, and
        // the forward emits at most drafts + 1 tokens.
        let room = self.full_cache.capacity().saturating_sub(self.full_cache.len() + 1);
        let left = self.stop.max_tokens.saturating_sub(self.generated().len()).saturating_sub(1);
        let limit = draft_limit(&self.params, MAX_DRAFTS).min(room).min(left);
        let proposed: Vec<u32> = continuation(&self.tokens, limit).to_vec();
        let mut reach = 1.0;
        for (j, token) in proposed.into_iter().enumerate() {
            reach *= self.text_acceptance;
            if self.mode == DecodeMode::Auto && reach < threshold(j) {
                break;
            }
            let from_text = true;
            self.drafts.push(Draft {
                token,
                dist: TokenDist::Greedy(token),
                confidence: 1.0,
                constrained: false,
                from_text,
            });
            self.stats.text_drafted += 1;
            if self.stop.eos_ids.contains(&token) {
                break;
            }
        }
        self.drafts.len()
    }

    /// Tokens `drafts` text drafts are expected to add: the chance of reaching each, summed.
    pub(crate) fn text_reach(&self, drafts: usize) -> f64 {
        (1..=drafts).map(|j| self.text_acceptance.powi(j as i32)).sum()
    }

    /// Takes the verdicts on a text draft: `accepted` tokens, then a rejection unless all were.
    pub(super) fn record_text_verdicts(&mut self, accepted: usize, all: bool) {
        self.stats.text_accepted += accepted;
        let verdicts = std::iter::repeat_n(1.0, accepted).chain((!all).then_some(0.0));
        for verdict in verdicts {
            self.text_acceptance += ACCEPTANCE_WEIGHT * (verdict - self.text_acceptance);
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
        assert_eq!(continuation(&text, 3), &[7, 8, 1]);
        assert_eq!(continuation(&text, 1), &[7]);
        // Only a 3-token suffix matches; the continuation may run up to the text's end.
        let text = [5, 2, 3, 4, 9, 9, 2, 3, 4];
        assert_eq!(continuation(&text, 4), &[9, 9, 2, 3]);
        // A loop continues itself.
        let text = [7, 1, 2, 3, 1, 2, 3];
        assert_eq!(continuation(&text, 4), &[1, 2, 3]);
    }

    #[test]
    fn proposes_nothing_without_a_long_enough_match() {
        assert!(continuation(&[1, 2, 3, 4, 2, 3], 4).is_empty(), "two tokens are not enough");
        assert!(continuation(&[1, 2, 3], 4).is_empty());
        assert!(continuation(&[], 4).is_empty());
        assert!(continuation(&[1, 2, 3, 1, 2, 3], 0).is_empty());
    }
}
