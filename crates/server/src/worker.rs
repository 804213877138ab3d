//! The one worker that owns the model: a dedicated thread that feeds queued jobs to the engine's
//! `Scheduler`, runs its steps, and routes each update to the request it belongs to. Text, stop
//! strings and response shapes are the request tasks' business (`generation`), not this thread's.
//!
//! Concurrency, in one place:
//! - The queue is counted in sequences by a semaphore (`queue_capacity` permits). A request
//!   takes one permit per sequence, all or none, before its jobs are sent; a job gives its permit
//!   back when it starts running. So a full queue answers 429 at once and a request can never be
//!   half-queued.
//! - A job is cancelled when its request drops the event receiver (the client went away) or
//!   sets its `cancel` flag (a stop string ended it); the worker checks both before every step.
//! - `draining` (SIGTERM): waiting jobs fail with `Failure::NotStarted` (503, the client may
//!   retry elsewhere) while running ones go on. `abort` (grace period over): running ones fail
//!   with `Failure::Interrupted`.
//! - A panic inside a step fails that step's sequences and the worker goes on; if the thread
//!   itself dies, `AliveGuard` makes `/health` say so.
use crate::backend::{Backend, Event, Failure, Job, SubmitError};
use recyclegpt_engine::scheduler::{Finished, StepOutcome};
use recyclegpt_engine::{
    CostModel, DecodeMode, SamplingParams, Scheduler, SchedulerConfig, SeqId, SequenceRequest, StopCriteria,
};
use recyclegpt_model::RecycleGpt;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub scheduler: SchedulerConfig,
    pub context_len: usize,
    /// Sequences that may wait for a slot, all requests together.
    pub queue_capacity: usize,
}

/// State shared by the front end and the worker thread.
struct Shared {
    alive: AtomicBool,
    draining: AtomicBool,
    abort: AtomicBool,
    queue: Arc<Semaphore>,
    queue_capacity: usize,
}

/// A queued job and its queue permit (given back when the job starts or goes away).
struct Queued {
    job: Job,
    _slot: QueueSlot,
}

struct QueueSlot(Arc<Semaphore>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// The front end's side of the worker.
#[derive(Clone)]
pub struct WorkerHandle {
    sender: mpsc::UnboundedSender<Queued>,
    shared: Arc<Shared>,
}

impl Backend for WorkerHandle {
    fn submit(&self, jobs: Vec<Job>) -> Result<(), SubmitError> {
        if self.shared.draining.load(Ordering::Relaxed) {
            return Err(SubmitError::Draining);
        }
        // More jobs than the queue holds can never be queued: the routes' limit on sequences per
        // request (never above `queue_capacity`) keeps this from happening; it is a full queue
        // then, not a hang.
        let count = u32::try_from(jobs.len()).unwrap_or(u32::MAX);
        let permits = self.shared.queue.try_acquire_many(count).map_err(|_| SubmitError::QueueFull)?;
        // Each job carries its own permit from here on.
        permits.forget();
        let queued: Vec<Queued> =
            jobs.into_iter().map(|job| Queued { job, _slot: QueueSlot(self.shared.queue.clone()) }).collect();
        for queued in queued {
            if self.sender.send(queued).is_err() {
                return Err(SubmitError::Stopped);
            }
        }
        Ok(())
    }

    fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Relaxed)
    }

    fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        // Wake the worker so that it fails what waits even when nothing runs.
        let _ = self.sender.send(Queued::wake());
    }

    fn abort_running(&self) {
        self.shared.abort.store(true, Ordering::Relaxed);
        let _ = self.sender.send(Queued::wake());
    }
}

impl Queued {
    /// An empty job whose only purpose is to wake a worker blocked on the queue.
    fn wake() -> Self {
        let (events, _) = mpsc::unbounded_channel();
        let semaphore = Arc::new(Semaphore::new(0));
        Queued {
            job: Job {
                request_id: String::new(),
                index: 0,
                prompt: Vec::new(),
                params: SamplingParams::greedy(),
                max_tokens: 0,
                eos_ids: Vec::new(),
                mode: DecodeMode::Off,
                constraint: None,
                events,
                cancel: Arc::new(AtomicBool::new(true)),
                arrived: Instant::now(),
                span: tracing::Span::none(),
            },
            _slot: QueueSlot(semaphore),
        }
    }
}

/// Marks the worker dead however its thread ends, a panic included.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
        if std::thread::panicking() {
            metrics::counter!("recyclegpt_worker_panics_total").increment(1);
            tracing::error!("the model worker thread died");
        }
    }
}

/// A job inside the worker, with what its metrics and its span need.
struct Link {
    job: Job,
    slot: Option<QueueSlot>,
    /// When the scheduler admitted it (its queue time ends, its prefill begins).
    started: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

/// Starts the worker thread; it ends when every handle is dropped and its work is done.
pub fn spawn(model: RecycleGpt, config: WorkerConfig) -> WorkerHandle {
    let (sender, receiver) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        alive: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        queue: Arc::new(Semaphore::new(config.queue_capacity)),
        queue_capacity: config.queue_capacity,
    });
    let handle = WorkerHandle { sender, shared: shared.clone() };
    // Measured before the worker starts and before the server listens, while nothing else runs:
    // measured on the worker thread, the first sizes overlapped the rest of start-up and came
    // out twice too slow. The steps correct the figures as they run, but slowly, so the start
    // should be right.
    let costs = CostModel::measure(&model, config.scheduler.budget.max_running).unwrap_or_else(|e| {
        tracing::warn!("cannot measure what drafts cost ({e}); `auto` will always draft");
        None
    });
    let spawned = std::thread::Builder::new().name("recyclegpt-worker".into()).spawn(move || {
        let _alive = AliveGuard(shared.clone());
        let mut worker = Worker {
            scheduler: Scheduler::new(config.scheduler, config.context_len, costs),
            model,
            receiver,
            shared,
            links: HashMap::new(),
            next_id: 0,
        };
        worker.run();
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the worker thread: {e}");
        handle.shared.alive.store(false, Ordering::Relaxed);
    }
    handle
}

struct Worker {
    model: RecycleGpt,
    scheduler: Scheduler,
    receiver: mpsc::UnboundedReceiver<Queued>,
    shared: Arc<Shared>,
    links: HashMap<SeqId, Link>,
    next_id: SeqId,
}

impl Worker {
    fn run(&mut self) {
        while self.receive() {
            self.drop_cancelled();
            if self.shared.draining.load(Ordering::Relaxed) {
                let ids = self.scheduler.drain_waiting();
                self.fail(ids, Failure::NotStarted);
            }
            if self.shared.abort.load(Ordering::Relaxed) {
                let ids = self.scheduler.drain_running();
                self.fail(ids, Failure::Interrupted);
            }
            if !self.scheduler.is_idle() {
                self.step();
            }
            self.update_gauges();
        }
    }

    /// Takes queued jobs, waiting for one when there is nothing to do; false once every handle
    /// is gone and no work remains.
    fn receive(&mut self) -> bool {
        if self.scheduler.is_idle() {
            self.update_gauges();
            match self.receiver.blocking_recv() {
                Some(queued) => self.enqueue(queued),
                None => return false,
            }
        }
        while let Ok(queued) = self.receiver.try_recv() {
            self.enqueue(queued);
        }
        true
    }

    fn enqueue(&mut self, Queued { mut job, _slot: slot }: Queued) {
        if job.cancel.load(Ordering::Relaxed) || job.abandoned() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        // The sequence takes the prompt and settings; the link keeps what routing needs.
        self.scheduler.enqueue(SequenceRequest {
            id,
            prompt: std::mem::take(&mut job.prompt),
            mode: job.mode,
            params: std::mem::take(&mut job.params),
            stop: StopCriteria { max_tokens: job.max_tokens, eos_ids: std::mem::take(&mut job.eos_ids) },
            constraint: job.constraint.take(),
        });
        self.links.insert(id, Link { job, slot: Some(slot), started: None, first_token: None, last_token: None });
    }

    /// Frees the sequences (and KV caches) of requests that need no more tokens.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .links
            .iter()
            .filter(|(_, l)| l.job.abandoned() || l.job.cancel.load(Ordering::Relaxed))
            .map(|(&id, _)| id)
            .collect();
        let mut disconnected = 0;
        for id in gone {
            let done = self.scheduler.cancel(id);
            if let Some(link) = self.links.remove(&id) {
                disconnected += usize::from(link.job.abandoned());
                if let Some(done) = done {
                    record_finish(&link, &done);
                }
            }
        }
        if disconnected > 0 {
            tracing::info!(disconnected, "cancelled sequences of disconnected clients");
            metrics::counter!("recyclegpt_cancelled_total").increment(disconnected as u64);
        }
    }

    fn step(&mut self) {
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| self.scheduler.step(&self.model)));
        match result {
            Ok(Ok(outcome)) => self.deliver(outcome, started),
            Ok(Err(failed)) => {
                tracing::error!("engine step failed: {}", failed.error);
                metrics::counter!("recyclegpt_step_failures_total").increment(1);
                self.fail(failed.ids, Failure::Engine(format!("generation failed: {}", failed.error)));
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(%message, "an engine step panicked; failing its sequences");
                metrics::counter!("recyclegpt_worker_panics_total").increment(1);
                // Whatever the panic interrupted (running, or taken from the queue for admission)
                // fails; what still waits keeps its place.
                self.scheduler.drain_running();
                let lost: Vec<SeqId> =
                    self.links.keys().copied().filter(|&id| !self.scheduler.is_waiting(id)).collect();
                self.fail(lost, Failure::Engine("internal error: the engine failed on this request".into()));
            }
        }
    }

    /// `started`: when the step began, which is when the sequences it admitted left the queue.
    fn deliver(&mut self, outcome: StepOutcome, started: Instant) {
        metrics::counter!("recyclegpt_full_forwards_total").increment(1);
        metrics::counter!("recyclegpt_full_forward_tokens_total").increment(outcome.report.full_tokens as u64);
        for id in outcome.started {
            if let Some(link) = self.links.get_mut(&id) {
                link.slot = None;
                link.started = Some(started);
            }
        }
        for (id, error) in outcome.refused {
            self.fail(vec![id], Failure::Engine(error.to_string()));
        }
        for update in outcome.updates {
            let Some(link) = self.links.get_mut(&update.id) else { continue };
            if !update.tokens.is_empty() {
                let now = Instant::now();
                match link.last_token {
                    None => {
                        metrics::histogram!("recyclegpt_time_to_first_token_seconds")
                            .record((now - link.job.arrived).as_secs_f64());
                        link.first_token = Some(now);
                    }
                    Some(t) => metrics::histogram!("recyclegpt_inter_token_seconds")
                        .record((now - t).as_secs_f64() / update.tokens.len() as f64),
                }
                link.last_token = Some(now);
                metrics::counter!("recyclegpt_generated_tokens_total").increment(update.tokens.len() as u64);
                let event = Event::Tokens {
                    tokens: update.tokens,
                    sources: update.sources,
                    logprobs: update.logprobs,
                    prompt_logprobs: update.prompt_logprobs,
                    cached_prompt_tokens: update.cached_prompt_tokens,
                };
                let _ = link.job.events.send((link.job.index, event));
            }
            if let Some(finished) = update.finished {
                if let Some(link) = self.links.remove(&update.id) {
                    record_finish(&link, &finished);
                    let _ = link.job.events.send((link.job.index, Event::Finished(finished)));
                }
            }
        }
    }

    fn fail(&mut self, ids: Vec<SeqId>, failure: Failure) {
        for id in ids {
            if let Some(link) = self.links.remove(&id) {
                let _ = link.job.events.send((link.job.index, Event::Failed(failure.clone())));
            }
        }
    }

    fn update_gauges(&self) {
        let queued = self.shared.queue_capacity.saturating_sub(self.shared.queue.available_permits());
        metrics::gauge!("recyclegpt_queue_depth").set(queued as f64);
        metrics::gauge!("recyclegpt_running_sequences").set(self.scheduler.running_len() as f64);
        metrics::gauge!("recyclegpt_kv_tokens_in_use").set(self.scheduler.kv_tokens_in_use() as f64);
        metrics::gauge!("recyclegpt_prefix_cache_tokens").set(self.scheduler.prefix_cache_tokens() as f64);
    }
}

fn record_finish(link: &Link, finished: &Finished) {
    let stats = finished.stats;
    metrics::counter!("recyclegpt_recycle_accepted_total").increment(stats.accepted as u64);
    metrics::counter!("recyclegpt_recycle_rejected_total").increment(stats.rejected as u64);
    let drafts = stats.drafts as u64;
    metrics::counter!("vllm:spec_decode_num_drafts_total").increment(drafts);
    metrics::counter!("vllm:spec_decode_num_draft_tokens_total").increment(stats.draft_tokens() as u64);
    metrics::counter!("vllm:spec_decode_num_accepted_tokens_total").increment(stats.accepted as u64);
    for (position, &accepted) in stats.accepted_at.iter().enumerate() {
        if accepted > 0 || position == 0 {
            metrics::counter!("vllm:spec_decode_num_accepted_tokens_per_pos_total", "position" => position.to_string())
                .increment(accepted as u64);
        }
    }
    // Prompt lookup's share of the drafts above (vLLM counts every drafter's tokens together).
    metrics::counter!("recyclegpt_prompt_lookup_draft_tokens_total").increment(stats.text_drafted as u64);
    metrics::counter!("recyclegpt_prompt_lookup_accepted_tokens_total").increment(stats.text_accepted as u64);
    if link.job.mode == DecodeMode::Auto {
        metrics::counter!("recyclegpt_auto_decisions_total", "decision" => "draft").increment(drafts);
        metrics::counter!("recyclegpt_auto_decisions_total", "decision" => "skip")
            .increment(stats.skipped_drafts as u64);
    }
    metrics::counter!("recyclegpt_prompt_tokens_total").increment(finished.prompt_tokens as u64);
    // vLLM's prefix-cache counters, in tokens: looked up, and found.
    metrics::counter!("vllm:prefix_cache_queries_total").increment(finished.prompt_tokens as u64);
    metrics::counter!("vllm:prefix_cache_hits_total").increment(stats.cached_prompt_tokens as u64);
    let now = Instant::now();
    let arrived = link.job.arrived;
    let seconds =
        |from: Instant, to: Option<Instant>| to.map_or(0.0, |t| t.saturating_duration_since(from).as_secs_f64());
    let started = link.started.unwrap_or(now);
    link.job.span.in_scope(|| {
        tracing::info!(
            index = link.job.index,
            mode = link.job.mode.as_str(),
            queue_s = seconds(arrived, Some(started)),
            prefill_s = seconds(started, link.first_token),
            ttft_s = seconds(arrived, link.first_token),
            decode_s = link.first_token.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
            total_s = now.saturating_duration_since(arrived).as_secs_f64(),
            prompt_tokens = finished.prompt_tokens,
            cached_prompt_tokens = stats.cached_prompt_tokens,
            completion_tokens = finished.completion_tokens,
            full_forwards = stats.full_forwards,
            accepted = stats.accepted,
            rejected = stats.rejected,
            accepted_from_text = stats.text_accepted,
            finish_reason = ?finished.reason,
            "sequence finished"
        )
    });
}
