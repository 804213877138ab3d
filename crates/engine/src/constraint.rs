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
