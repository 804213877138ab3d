//! The OpenAI-compatible front end: axum routes → one validation pass → a bounded queue →
//! the model worker (one thread, continuous batching) → per-request SSE streams.
mod answer;
mod anthropic;
pub mod backend;
mod chat_template;
pub mod config;
mod connections;
pub mod error;
mod generation;
pub mod openai;
mod openai_responses;
mod prompt;
mod response_store;
mod responses;
mod routes;
mod structured;
mod text;
mod tools;
pub mod validation;
pub mod worker;

pub use backend::{Backend, Event, Failure, Job, SubmitError};
pub use chat_template::{ChatMessage, ChatTemplate, TemplateArgs};
pub use config::{LogFormat, ServerConfig, ValidConfig};

use config::seconds;
use connections::{ConnectionLimits, Phase};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use prompt::PromptBuilder;
use recyclegpt_engine::scheduler::Budget;
use recyclegpt_engine::{DecodeMode, SchedulerConfig};
use recyclegpt_grammar::Grammars;
use recyclegpt_model::{LoadedModel, RecycleSource, TextTokenizer};
use response_store::{ResponseStore, StoreLimits};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use validation::Limits;
use worker::WorkerConfig;

/// What the routes need to know of the model.
#[derive(Debug, Clone, Copy)]
pub struct ModelInfo {
    pub context_len: usize,
    pub vocab_size: usize,
    pub has_recycle: bool,
    pub recycle_source: RecycleSource,
}

pub struct AppState {
    pub config: ValidConfig,
    pub limits: Limits,
    pub tokenizer: Arc<TextTokenizer>,
    /// Structured outputs' compiler for this tokenizer (or why there is none), with its limits.
    pub(crate) grammars: structured::GrammarCompiler,
    pub(crate) prompts: PromptBuilder,
    /// Responses kept for `previous_response_id` and `GET /v1/responses/{id}`.
    pub(crate) responses: ResponseStore,
    pub backend: Arc<dyn Backend>,
    pub recycle_source: RecycleSource,
    pub draining: AtomicBool,
    pub created: u64,
    pub metrics: PrometheusHandle,
    next_id: AtomicU64,
}

/// The process-wide Prometheus recorder (installed once, shared by every server in a process).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let builder = PrometheusBuilder::new().set_buckets(&buckets).unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            register_metrics();
            handle
        })
        .clone()
}

/// Describes the metrics and creates the gauges at zero, so that every series exists from the
/// first scrape (an autoscaler reading `recyclegpt_queue_depth` must not see "no data" on a
/// replica that has not had a request yet).
fn register_metrics() {
    let gauges = [
        ("recyclegpt_queue_depth", "Sequences waiting for a slot in the running batch"),
        ("recyclegpt_running_sequences", "Sequences in the running batch"),
        ("recyclegpt_kv_tokens_in_use", "KV-cache tokens reserved by running sequences"),
        ("recyclegpt_prefix_cache_tokens", "KV positions the prefix cache holds (within the KV budget's free part)"),
    ];
    for (name, help) in gauges {
        metrics::describe_gauge!(name, help);
        metrics::gauge!(name).set(0.0);
    }
    let counters = [
        ("recyclegpt_requests_total", "Requests answered, by HTTP status"),
        ("recyclegpt_cancelled_total", "Sequences cancelled because their client went away"),
        ("recyclegpt_prompt_tokens_total", "Prompt tokens processed"),
        ("recyclegpt_generated_tokens_total", "Tokens generated"),
        ("recyclegpt_full_forwards_total", "Full-model forward passes"),
        ("recyclegpt_full_forward_tokens_total", "Tokens run through full-model forwards"),
        ("recyclegpt_recycle_accepted_total", "Drafted tokens accepted by verification (the module's and the text's)"),
        (
            "recyclegpt_recycle_rejected_total",
            "Verifications that rejected a draft (the drafts chained after it are dropped unchecked)",
        ),
        (
            "recyclegpt_prompt_lookup_draft_tokens_total",
            "Draft tokens read from the text where it repeats itself (prompt lookup), of all draft tokens",
        ),
        ("recyclegpt_prompt_lookup_accepted_tokens_total", "Prompt-lookup draft tokens accepted"),
        (
            "recyclegpt_auto_decisions_total",
            "Decode steps on which `auto` drafted (from the module or the text) or skipped drafting, by decision",
        ),
        (
            "recyclegpt_connections_timed_out_total",
            "Connections cut off for stalling, by phase (header, body, idle, write)",
        ),
        ("recyclegpt_connections_evicted_total", "Idle connections closed to make room at max_connections"),
        ("recyclegpt_connections_refused_total", "Connections refused because every slot was busy"),
        ("recyclegpt_worker_panics_total", "Engine steps that panicked (their sequences failed; the worker went on)"),
        ("recyclegpt_step_failures_total", "Engine steps that returned an error (their sequences failed)"),
        // The same drafts under the names vLLM exports for speculative decoding, so dashboards
        // built for it work unchanged. A recycled draft is one token, at position 0.
        ("vllm:spec_decode_num_drafts_total", "Drafts verified (vLLM's name)"),
        ("vllm:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache (vLLM's name)"),
        ("vllm:prefix_cache_hits_total", "Prompt tokens found in the prefix cache (vLLM's name)"),
        ("vllm:spec_decode_num_draft_tokens_total", "Draft tokens verified (vLLM's name)"),
        ("vllm:spec_decode_num_accepted_tokens_total", "Draft tokens accepted (vLLM's name)"),
        ("vllm:spec_decode_num_accepted_tokens_per_pos_total", "Draft tokens accepted, by position (vLLM's name)"),
    ];
    for (name, help) in counters {
        metrics::describe_counter!(name, help);
    }
    metrics::describe_histogram!("recyclegpt_time_to_first_token_seconds", "Time from arrival to the first token");
    metrics::describe_histogram!("recyclegpt_inter_token_seconds", "Time between streamed tokens");
}

pub fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl AppState {
    /// Starts the worker on `loaded` and builds everything the routes share.
    pub fn start(config: ValidConfig, loaded: LoadedModel) -> Result<Arc<Self>, String> {
        let model = ModelInfo {
            context_len: loaded.model.context_len(),
            vocab_size: loaded.model.config().vocab_size,
            has_recycle: loaded.model.has_recycle(),
            recycle_source: loaded.model.recycle_source(),
        };
        let worker = worker::spawn(
            loaded.model,
            WorkerConfig {
                scheduler: SchedulerConfig {
                    budget: Budget { max_running: config.max_running_sequences, kv_tokens: config.kv_budget_tokens },
                    prefill_chunk: config.prefill_chunk,
                    prefix_caching: config.prefix_caching,
                    prompt_lookup: config.prompt_lookup,
                },
                context_len: model.context_len,
                queue_capacity: config.queue_capacity,
            },
        );
        Self::with_backend(config, loaded.tokenizer, model, Arc::new(worker))
    }

    /// Everything the routes share, over any backend (the worker, or one a test supplies to
    /// exercise the routes without a model).
    pub fn with_backend(
        config: ValidConfig,
        tokenizer: TextTokenizer,
        model: ModelInfo,
        backend: Arc<dyn Backend>,
    ) -> Result<Arc<Self>, String> {
        let limits = Limits {
            served_model_name: config.served_name(),
            context_len: model.context_len,
            vocab_size: model.vocab_size,
            default_max_tokens: config.default_max_tokens,
            default_mode: if model.has_recycle { config.default_recycle } else { DecodeMode::Off },
            has_recycle: model.has_recycle,
            max_n: config.max_n,
            max_top_logprobs: config.max_top_logprobs,
            max_sequences: config.max_sequences_per_request.min(config.queue_capacity),
            max_stop_bytes: config.max_stop_bytes,
        };
        let tokenizer = Arc::new(tokenizer);
        let grammars = Grammars::new(&tokenizer).map(Arc::new).map_err(|e| {
            tracing::warn!(error = %e, "structured outputs are off for this model");
            format!("structured outputs are not available for this model: {e}")
        });
        let grammars = structured::GrammarCompiler::new(grammars, &config);
        let source = match &config.chat_template_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the chat template {}: {e}", path.display()))?,
            ),
            None => tokenizer.chat_template().map(String::from),
        };
        let template = ChatTemplate::new(source.as_deref(), tokenizer.bos_token(), tokenizer.eos_token())?;
        let reasoning = config.split_reasoning
            && (template.marks_reasoning() || tokenizer.inner().token_to_id(answer::OPEN).is_some());
        let prompts = PromptBuilder::new(
            tokenizer.clone(),
            (template, reasoning),
            model.context_len,
            config.tokenize_concurrency,
        );
        let responses = ResponseStore::new(StoreLimits {
            max_responses: config.response_store_max_responses,
            max_bytes: config.response_store_max_bytes,
            ttl: config::seconds(config.response_store_ttl_seconds),
        });
        Ok(Arc::new(Self {
            config,
            limits,
            tokenizer,
            grammars,
            prompts,
            responses,
            backend,
            recycle_source: model.recycle_source,
            draining: AtomicBool::new(false),
            created: now_seconds(),
            metrics: prometheus(),
            next_id: AtomicU64::new(1),
        }))
    }

    /// A request id: unpredictable, and unique within the process.
    pub fn next_request_id(&self) -> String {
        format!("{:016x}", self.next_id.fetch_add(1, Ordering::Relaxed) ^ rand::random::<u64>())
    }

    /// A tool call's id (`call_…`), made the same way.
    pub fn next_call_id(&self) -> String {
        format!("call_{}", self.next_request_id())
    }

    /// Fresh call ids, for the answers' splitters.
    pub(crate) fn call_ids(self: &Arc<Self>) -> answer::CallIds {
        let state = self.clone();
        Arc::new(move || state.next_call_id())
    }

    fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: seconds(self.config.header_read_timeout_seconds),
            idle_timeout: seconds(self.config.idle_timeout_seconds),
            write_timeout: seconds(self.config.write_timeout_seconds),
            max_connections: descriptors::connection_cap(self.config.max_connections),
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then shuts down in phases:
/// 1. at once, `/health` and new generation requests answer 503 and queued requests that never
///    started fail with 503, while the listener keeps accepting for `shutdown_delay_seconds`
///    (load balancers see the drain instead of refused connections);
/// 2. the listener closes and running requests may finish until `shutdown_grace_seconds` after
///    the signal;
/// 3. then running streams end with an error event, and any connection still open is dropped
///    within a second, whatever its client does.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (phase, phase_rx) = tokio::sync::watch::channel(Phase::Serving);
    let mut connections =
        connections::spawn(listener, routes::router(state.clone()), state.connection_limits(), phase_rx);
    shutdown.await;
    let signalled = Instant::now();
    tracing::info!("shutting down: draining");
    state.draining.store(true, Ordering::Relaxed);
    state.backend.begin_drain();
    tokio::time::sleep(seconds(state.config.shutdown_delay_seconds)).await;
    let _ = phase.send(Phase::Draining);
    let grace_end = signalled + seconds(state.config.shutdown_grace_seconds);
    if tokio::time::timeout_at(grace_end.into(), connections.closed()).await.is_err() {
        tracing::warn!("grace period over: ending the remaining requests");
        state.backend.abort_running();
        // A moment for the error events to reach their clients, then drop what is left.
        let _ = tokio::time::timeout(Duration::from_millis(500), connections.closed()).await;
        let _ = phase.send(Phase::Closing);
        let _ = tokio::time::timeout(Duration::from_millis(400), connections.closed()).await;
    }
    Ok(())
}

/// A server on 127.0.0.1 at a free port, running on the current tokio runtime until stopped:
/// what benchmarks and tests serve against.
pub struct LoopbackServer {
    pub address: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LoopbackServer {
    pub async fn start(state: Arc<AppState>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(state, listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self { address, stop, task })
    }

    /// Shuts down as on SIGTERM (drain, then end what remains) and waits for it.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// The process's open-file limit, which bounds how many connections can be open.
mod descriptors {
    /// Descriptors kept free for the model files, the listener and logging.
    const RESERVED: usize = 64;

    /// Raises the soft descriptor limit to the hard one (as most servers do) and returns the
    /// connection cap: the configured one, kept under that limit so that accept never fails
    /// for lack of descriptors while idle connections could be evicted instead.
    pub fn connection_cap(configured: usize) -> usize {
        match raise_limit() {
            Some(limit) => configured.min(limit.saturating_sub(RESERVED).max(1)),
            None => configured,
        }
    }

    #[cfg(unix)]
    fn raise_limit() -> Option<usize> {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            // SAFETY: setrlimit reads one valid `rlimit`; failure leaves the limit unchanged.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        usize::try_from(limit.rlim_cur).ok()
    }

    #[cfg(not(unix))]
    fn raise_limit() -> Option<usize> {
        None
    }
}
