//! Decoding on top of the model core: sampling, the per-request `Sequence` state machine, and
//! the batched step that runs the `standard`, `alternate` and `verify` schedules side by side.
pub mod agreement;
mod constraint;
mod cost;
mod drafting;
mod generate;
pub mod sampling;
pub mod scheduler;
mod sequence;
mod step;

pub use constraint::{Constraint, TokenConstraint, MASK_BUDGET, MASK_BUDGET_STREAK};
pub use cost::{CostModel, DraftValue};
pub use generate::{generate, generate_with_costs, generate_with_lookup, Generation};
pub use sampling::{argmax, SamplingParams, TokenLogprob};
pub use scheduler::{Scheduler, SchedulerConfig, SeqId, SequenceRequest, Update};
pub use sequence::{FinishReason, Sequence, SequenceState, SequenceStats, StopCriteria, TokenSource};
pub use step::{step, StepReport};

use recyclegpt_model::ModelError;

/// How a sequence uses the recyclable module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeMode {
    /// One token per full forward; the module is not used.
    Off,
    /// The paper's schedule: every other token comes from the module, unchecked.
    Alternate,
    /// Lossless: the module drafts, the next full forward verifies for free.
    Verify,
    /// `verify` where a draft pays: each step, each sequence drafts only when its estimated
    /// acceptance makes the expected tokens per second beat plain decoding on this device.
    Auto,
}

impl DecodeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeMode::Off => "off",
            DecodeMode::Alternate => "alternate",
            DecodeMode::Verify => "verify",
            DecodeMode::Auto => "auto",
        }
    }
}

impl std::str::FromStr for DecodeMode {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(DecodeMode::Off),
            "alternate" => Ok(DecodeMode::Alternate),
            "verify" => Ok(DecodeMode::Verify),
            "auto" => Ok(DecodeMode::Auto),
            other => Err(EngineError::Invalid(format!(
                "unknown decode mode `{other}` (expected off, alternate, verify or auto)"
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("internal engine error: {0}")]
    Internal(String),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Model(ModelError::Candle(e))
    }
}
