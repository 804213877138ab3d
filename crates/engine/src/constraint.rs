//! A constraint on the tokens a sequence may emit: a grammar, for structured outputs and forced
//! tool calls. The engine only needs these four operations, so any grammar engine (the server
//! uses llguidance, in `recyclegpt-grammar`) plugs in without the engine depending on it.
//!
//! Every token a sequence samples goes through `mask` first, drafts from the module included,
//! so a draft the grammar forbids is never proposed. Drafts advance the constraint tentatively
//! (a chained draft must be masked in the state after the drafts before it) and are taken back
//! before verification, which then advances it again only by the tokens actually emitted.
pub trait TokenConstraint: Send {
    /// Sets the logits of the tokens that may not come next to −∞.
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String>;
    /// Takes one more token (emitted, or drafted).
    fn advance(&mut self, token: u32) -> Result<(), String>;
    /// Takes back the last `tokens` tokens.
    fn rollback(&mut self, tokens: usize) -> Result<(), String>;
    /// Whether the text is complete and nothing may follow: the sequence stops.
    fn is_complete(&self) -> bool;
}

/// A sequence's constraint as queued (a named type so requests stay printable).
pub struct Constraint(pub Box<dyn TokenConstraint>);

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

/// The longest a mask may take, and how many masks in a row may take longer before the sequence
/// fails. Masks are computed on the worker that steps every sequence, so a grammar whose every
/// mask is dear slows every client of the server: the probe's `^a{100000}$` cost 70 ms a token,
/// and four ordinary clients' gaps between chunks went from 128 ms to 316 ms beside eight of
/// them. An ordinary grammar's masks take well under a millisecond, and a large schema's first
/// ones tens of milliseconds at most, so only a grammar that stays dear is stopped.
pub const MASK_BUDGET: std::time::Duration = std::time::Duration::from_millis(20);
pub const MASK_BUDGET_STREAK: usize = 4;

/// How a sequence's masks have fared against [`MASK_BUDGET`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MaskCost {
    /// Masks in a row that took longer than the budget.
    streak: usize,
}

impl MaskCost {
    /// Takes one mask's time; true once [`MASK_BUDGET_STREAK`] masks in a row took longer than
    /// [`MASK_BUDGET`].
    pub(crate) fn over_budget(&mut self, took: std::time::Duration) -> bool {
        self.streak = if took > MASK_BUDGET { self.streak + 1 } else { 0 };
        self.streak >= MASK_BUDGET_STREAK
    }
}
