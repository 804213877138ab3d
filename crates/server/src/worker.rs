//! The one worker that owns the model: a dedicated thread running continuous batching. It
//! admits queued jobs while the KV budget allows, runs one engine step over every running
//! sequence (prefill chunks, full and recycled decode steps side by side), and streams text back.
use crate::error::ApiError;
use crate::text::TextStream;
use recyclegpt_engine::{step, DecodeMode, FinishReason, SamplingParams, Sequence, SequenceStats, StopCriteria, TokenLogprob};
use recyclegpt_model::{RecycleGpt, TextTokenizer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    pub stop: Vec<String>,
    pub mode: DecodeMode,
    pub events: mpsc::UnboundedSender<(usize, Event)>,
}

#[derive(Debug)]
pub enum Event {
    /// New text, and the log-probabilities of the tokens it came from (when asked for).
    Text { text: String, logprobs: Vec<TokenLogprob> },
    Done {
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
        stats: SequenceStats,
    },
    Error(String),
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub max_running: usize,
    pub kv_budget_tokens: usize,
    pub prefill_chunk: usize,
    pub queue_capacity: usize,
}

/// The front end's side of the worker.
#[derive(Clone)]
pub struct WorkerHandle {
    sender: mpsc::Sender<Job>,
    alive: Arc<AtomicBool>,
    /// Set when the grace period is over: running sequences are ended at once.
    abort: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
}

impl WorkerHandle {
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.sender.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => ApiError::Draining,
        })?;
        metrics::gauge!("recyclegpt_queue_depth").increment(1.0);
        Ok(())
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    pub fn abort_running(&self) {
        self.abort.store(true, Ordering::Relaxed);
    }

    pub fn next_request_id(&self) -> String {
        format!("{:016x}", self.next_id.fetch_add(1, Ordering::Relaxed) ^ rand::random::<u64>())
    }
}

struct Running {
    job: Job,
    seq: Sequence,
    text: TextStream,
    started: Instant,
    last_token: Option<Instant>,
}

/// Starts the worker thread; it ends when every handle is dropped and its work is done.
pub fn spawn(model: RecycleGpt, tokenizer: Arc<TextTokenizer>, config: WorkerConfig) -> WorkerHandle {
    let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
    let alive = Arc::new(AtomicBool::new(true));
    let abort = Arc::new(AtomicBool::new(false));
    let handle = WorkerHandle {
        sender,
        alive: alive.clone(),
        abort: abort.clone(),
        next_id: Arc::new(AtomicU64::new(1)),
    };
    let spawned = std::thread::Builder::new().name("recyclegpt-worker".into()).spawn(move || {
        let mut worker = Worker {
            model,
            tokenizer,
            config,
            receiver,
            held: None,
            running: Vec::new(),
            abort,
        };
        worker.run();
        alive.store(false, Ordering::Relaxed);
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the worker thread: {e}");
        handle.alive.store(false, Ordering::Relaxed);
    }
    handle
}

struct Worker {
    model: RecycleGpt,
    tokenizer: Arc<TextTokenizer>,
    config: WorkerConfig,
    receiver: mpsc::Receiver<Job>,
    /// A job taken from the queue that the KV budget does not admit yet.
    held: Option<Job>,
    running: Vec<Running>,
    abort: Arc<AtomicBool>,
}

impl Worker {
    fn run(&mut self) {
        loop {
            if !self.wait_for_work() {
                return;
            }
            self.admit();
            self.drop_disconnected();
            self.update_gauges();
            if self.abort.load(Ordering::Relaxed) {
                self.end_all("length");
                continue;
            }
            if self.running.is_empty() {
                continue;
            }
            let mut seqs: Vec<&mut Sequence> = self.running.iter_mut().map(|r| &mut r.seq).collect();
            match step(&self.model, &mut seqs, self.config.prefill_chunk) {
                Ok(report) => {
                    metrics::counter!("recyclegpt_full_forwards_total").increment(1);
                    metrics::counter!("recyclegpt_full_forward_tokens_total").increment(report.full_tokens as u64);
                }
                Err(e) => {
                    tracing::error!("engine step failed: {e}");
                    for r in self.running.drain(..) {
                        let _ = r.job.events.send((r.job.index, Event::Error(format!("generation failed: {e}"))));
                    }
                }
            }
            self.emit();
            self.update_gauges();
        }
    }

    /// Waits for a job when there is nothing at all to do; returns false once every handle is
    /// gone and no work remains. Jobs otherwise stay in the bounded queue until admitted, so a
    /// full queue is visible to clients as 429.
    fn wait_for_work(&mut self) -> bool {
        if self.running.is_empty() && self.held.is_none() {
            match self.receiver.blocking_recv() {
                Some(job) => {
                    metrics::gauge!("recyclegpt_queue_depth").decrement(1.0);
                    self.held = Some(job);
                }
                None => return false,
            }
        }
        true
    }

    fn next_job(&mut self) -> Option<Job> {
        if let Some(job) = self.held.take() {
            return Some(job);
        }
        let job = self.receiver.try_recv().ok()?;
        metrics::gauge!("recyclegpt_queue_depth").decrement(1.0);
        Some(job)
    }

    fn kv_reserved(&self) -> usize {
        self.running.iter().map(|r| r.job.prompt.len() + r.job.max_tokens).sum()
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_running {
            let Some(job) = self.next_job() else { break };
            if job.events.is_closed() {
                continue;
            }
            // A job larger than the whole budget runs alone rather than never.
            let need = job.prompt.len() + job.max_tokens;
            if !self.running.is_empty() && self.kv_reserved() + need > self.config.kv_budget_tokens {
                self.held = Some(job);
                break;
            }
            let stop = StopCriteria {
                max_tokens: job.max_tokens,
                eos_ids: self.tokenizer.eos_ids().to_vec(),
            };
            match Sequence::new(0, &self.model, job.prompt.clone(), job.mode, job.params.clone(), stop) {
                Ok(seq) => {
                    let text = TextStream::new(self.tokenizer.clone(), &job.prompt, job.stop.clone());
                    self.running.push(Running {
                        job,
                        seq,
                        text,
                        started: Instant::now(),
                        last_token: None,
                    });
                }
                Err(e) => {
                    let _ = job.events.send((job.index, Event::Error(e.to_string())));
                }
            }
        }
    }

    /// A client that went away frees its sequence (and its KV cache) before the next step.
    fn drop_disconnected(&mut self) {
        let before = self.running.len();
        self.running.retain(|r| !r.job.events.is_closed());
        let dropped = before - self.running.len();
        if dropped > 0 {
            tracing::info!(dropped, "cancelled sequences of disconnected clients");
            metrics::counter!("recyclegpt_cancelled_total").increment(dropped as u64);
        }
    }

    fn end_all(&mut self, reason: &'static str) {
        for mut r in std::mem::take(&mut self.running) {
            let chunk = r.text.push(&[], true);
            let logprobs = r.seq.take_new_logprobs();
            finish(&mut r, chunk.text, logprobs, reason);
        }
    }

    fn emit(&mut self) {
        let mut still_running = Vec::with_capacity(self.running.len());
        for mut r in std::mem::take(&mut self.running) {
            let tokens = r.seq.take_new_tokens();
            if !tokens.is_empty() {
                let now = Instant::now();
                match r.last_token {
                    None => metrics::histogram!("recyclegpt_time_to_first_token_seconds").record((now - r.started).as_secs_f64()),
                    Some(t) => metrics::histogram!("recyclegpt_inter_token_seconds")
                        .record((now - t).as_secs_f64() / tokens.len() as f64),
                }
                r.last_token = Some(now);
                metrics::counter!("recyclegpt_generated_tokens_total").increment(tokens.len() as u64);
            }
            let logprobs = r.seq.take_new_logprobs();
            let finished = r.seq.finish_reason();
            let chunk = r.text.push(&tokens, finished.is_some());
            let reason = match (chunk.stopped, finished) {
                (true, _) | (false, Some(FinishReason::Stop)) => Some("stop"),
                (false, Some(FinishReason::Length)) => Some("length"),
                (false, None) => None,
            };
            match reason {
                Some(reason) => finish(&mut r, chunk.text, logprobs, reason),
                None => {
                    if !chunk.text.is_empty() || !logprobs.is_empty() {
                        let _ = r.job.events.send((r.job.index, Event::Text { text: chunk.text, logprobs }));
                    }
                    still_running.push(r);
                }
            }
        }
        self.running = still_running;
    }

    fn update_gauges(&self) {
        metrics::gauge!("recyclegpt_running_sequences").set(self.running.len() as f64);
        metrics::gauge!("recyclegpt_kv_tokens_in_use").set(self.running.iter().map(|r| r.seq.cached_tokens()).sum::<usize>() as f64);
    }
}

fn finish(r: &mut Running, text: String, logprobs: Vec<TokenLogprob>, reason: &'static str) {
    if !text.is_empty() || !logprobs.is_empty() {
        let _ = r.job.events.send((r.job.index, Event::Text { text, logprobs }));
    }
    let stats = r.seq.stats();
    let completion_tokens = r.seq.generated().len();
    metrics::counter!("recyclegpt_recycle_accepted_total").increment(stats.accepted as u64);
    metrics::counter!("recyclegpt_recycle_rejected_total").increment(stats.rejected as u64);
    metrics::counter!("recyclegpt_prompt_tokens_total").increment(r.job.prompt.len() as u64);
    tracing::info!(
        request = %r.job.request_id,
        index = r.job.index,
        mode = r.seq.mode().as_str(),
        prompt_tokens = r.job.prompt.len(),
        completion_tokens,
        full_forwards = stats.full_forwards,
        accepted = stats.accepted,
        rejected = stats.rejected,
        seconds = r.started.elapsed().as_secs_f64(),
        finish_reason = reason,
        "sequence finished"
    );
    let _ = r.job.events.send((
        r.job.index,
        Event::Done {
            finish_reason: reason,
            prompt_tokens: r.job.prompt.len(),
            completion_tokens,
            stats,
        },
    ));
}
