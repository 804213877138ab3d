//! The seam between HTTP and generation: routes queue jobs and watch the worker through this
//! trait, so they can be exercised with any backend, and the worker knows nothing of HTTP.
use crate::error::ApiError;
use crate::worker::Job;

pub trait Backend: Send + Sync + 'static {
    /// Queues every job of one request, or none of them (`QueueFull`, `Draining`, or a 400 for
    /// a request that could never be queued).
    fn submit(&self, jobs: Vec<Job>) -> Result<(), ApiError>;
    /// Whether generation can still happen (`/health`).
    fn is_alive(&self) -> bool;
    /// Shutdown has begun: refuse new jobs and fail the ones not yet started.
    fn begin_drain(&self);
    /// The grace period is over: fail the running jobs now.
    fn abort_running(&self);
}
