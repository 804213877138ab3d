//! The seam between HTTP and generation: routes queue jobs and watch the worker through this
//! trait, so they can be exercised with any backend, and the worker knows nothing of HTTP. The
//! types that cross it live here: `Job` in, `Event`s out, `SubmitError` when a request cannot
//! be queued (`error.rs` maps those to OpenAI's shapes).
use recyclegpt_engine::scheduler::Finished;
use recyclegpt_engine::{Constraint, DecodeMode, SamplingParams, TokenLogprob, TokenSource};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// One sequence to generate; its events go to `events` tagged with `index`.
pub struct Job {
    pub request_id: String,
    pub index: usize,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub eos_ids: Vec<u32>,
    pub mode: DecodeMode,
    /// The grammar its tokens must fit, if any.
    pub constraint: Option<Constraint>,
    pub events: mpsc::UnboundedSender<(usize, Event)>,
    /// Set by the request when it needs no more tokens (a stop string matched).
    pub cancel: Arc<AtomicBool>,
    /// When the request reached its route: time to first token counts from here, so it
    /// includes validation, the grammar, the template and tokenization.
    pub arrived: Instant,
    /// The request's span: the worker logs the sequence's life inside it.
    pub span: tracing::Span,
}

impl Job {
    pub(crate) fn abandoned(&self) -> bool {
        self.events.is_closed()
    }
}

#[derive(Debug)]
pub enum Event {
    /// New tokens, and their log-probabilities when asked for.
    Tokens {
        tokens: Vec<u32>,
        /// Where each token came from (may be empty: all the model's own).
        sources: Vec<TokenSource>,
        logprobs: Vec<TokenLogprob>,
        /// The prompt's log-probabilities, on the first event, when asked for.
        prompt_logprobs: Vec<TokenLogprob>,
        /// Prompt tokens that came from the prefix cache.
        cached_prompt_tokens: usize,
    },
    Finished(Finished),
    Failed(Failure),
}

/// Why a job ended without finishing.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The server began shutting down before the job started: safe to retry elsewhere.
    NotStarted,
    /// The shutdown grace period ended while the job was running.
    Interrupted,
    /// The engine failed (or panicked) in a step that included this job.
    Engine(String),
}

/// Why a request's jobs were not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full")]
    QueueFull,
    #[error("the server is shutting down")]
    Draining,
    #[error("the model worker has stopped")]
    Stopped,
}

pub trait Backend: Send + Sync + 'static {
    /// Queues every job of one request, or none of them.
    fn submit(&self, jobs: Vec<Job>) -> Result<(), SubmitError>;
    /// Whether generation can still happen (`/health`).
    fn is_alive(&self) -> bool;
    /// Shutdown has begun: refuse new jobs and fail the ones not yet started.
    fn begin_drain(&self);
    /// The grace period is over: fail the running jobs now.
    fn abort_running(&self);
}
