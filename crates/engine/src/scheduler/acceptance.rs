//! The acceptance a new sequence starts from. Each sequence keeps its own estimate of how often
//! its module's drafts are accepted; starting every one at the same optimistic guess made a
//! module that never agrees on this server's traffic cost about nine rejected drafts per
//! request (a random module), and made one that agrees wait for its estimate to build up. A new
//! sequence starts instead from what the sequences before it found: the share of their module
//! steps whose first draft was accepted, recent
//! sequences weighing most. One prior serves every mode and temperature: it is only where a
//! sequence's own estimate starts, and that estimate follows the sequence's drafts within a few
//! verifications.
use crate::sequence::INITIAL_ACCEPTANCE;

/// Each finished sequence that judged a draft scales the counts before it by this: the
/// estimate follows the last ten or so of them, as traffic changes.
const DECAY: f64 = 0.9;

/// Verdicts the optimistic start is worth: the first few sequences' drafts soon outweigh it.
const START_WEIGHT: f64 = 4.0;

/// Accepted and judged first drafts, decayed per finished sequence.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AcceptancePrior {
    accepted: f64,
    judged: f64,
}

impl AcceptancePrior {
    /// A finished sequence's verdicts: `accepted` of `judged` first drafts.
    pub(super) fn learn(&mut self, accepted: usize, judged: usize) {
        if judged == 0 {
            return;
        }
        self.accepted = self.accepted * DECAY + accepted as f64;
        self.judged = self.judged * DECAY + judged as f64;
    }

    pub(super) fn estimate(&self) -> f64 {
        (self.accepted + START_WEIGHT * INITIAL_ACCEPTANCE) / (self.judged + START_WEIGHT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_optimistic_then_follows_the_verdicts() {
        let mut prior = AcceptancePrior::default();
        assert_eq!(prior.estimate(), INITIAL_ACCEPTANCE);
        prior.learn(0, 0);
        assert_eq!(prior.estimate(), INITIAL_ACCEPTANCE, "a sequence that never drafted says nothing");
        prior.learn(0, 9);
        assert!(prior.estimate() < 0.2, "{}", prior.estimate());
        for _ in 0..30 {
            prior.learn(16, 20);
        }
        assert!((prior.estimate() - 0.8).abs() < 0.02, "recent sequences weigh most: {}", prior.estimate());
    }
}
