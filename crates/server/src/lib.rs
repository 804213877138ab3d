//! The OpenAI-compatible front end: axum routes → one validation pass → a bounded queue →
//! the model worker (one thread, continuous batching) → per-request SSE streams.
mod chat_template;
pub mod config;
pub mod error;
mod generation;
pub mod openai;
mod routes;
mod text;
pub mod validation;
pub mod worker;

pub use config::ServerConfig;

use chat_template::ChatTemplate;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use recyclegpt_engine::DecodeMode;
use recyclegpt_model::{LoadedModel, RecycleSource, TextTokenizer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use validation::Limits;
use worker::{WorkerConfig, WorkerHandle};

pub struct AppState {
    pub config: ServerConfig,
    pub limits: Limits,
    pub tokenizer: Arc<TextTokenizer>,
    template: ChatTemplate,
    pub worker: WorkerHandle,
    pub recycle_source: RecycleSource,
    pub draining: AtomicBool,
    pub created: u64,
    pub metrics: PrometheusHandle,
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
        ("recyclegpt_queue_depth", "Requests waiting for a slot in the running batch"),
        ("recyclegpt_running_sequences", "Sequences in the running batch"),
        ("recyclegpt_kv_tokens_in_use", "KV-cache tokens reserved by running sequences"),
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
        ("recyclegpt_recycle_accepted_total", "Recycled drafts accepted by verification"),
        ("recyclegpt_recycle_rejected_total", "Recycled drafts rejected by verification"),
    ];
    for (name, help) in counters {
        metrics::describe_counter!(name, help);
    }
    metrics::describe_histogram!("recyclegpt_time_to_first_token_seconds", "Time from arrival to the first token");
    metrics::describe_histogram!("recyclegpt_inter_token_seconds", "Time between streamed tokens");
}

pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    /// Starts the worker on `loaded` and builds everything the routes share.
    pub fn start(config: ServerConfig, loaded: LoadedModel) -> Result<Arc<Self>, String> {
        let metrics = prometheus();
        let default_mode: DecodeMode = config.default_recycle.parse().map_err(|e| format!("default_recycle: {e}"))?;
        let has_recycle = loaded.model.has_recycle();
        let limits = Limits {
            served_model_name: config.served_name(),
            context_len: loaded.model.context_len(),
            vocab_size: loaded.model.config().vocab_size,
            default_max_tokens: config.default_max_tokens,
            default_mode: if has_recycle { default_mode } else { DecodeMode::Standard },
            has_recycle,
            max_n: 16,
        };
        let tokenizer = Arc::new(loaded.tokenizer);
        let template = ChatTemplate::new(tokenizer.chat_template(), tokenizer.bos_token(), tokenizer.eos_token())?;
        let recycle_source = loaded.model.recycle_source();
        let worker = worker::spawn(
            loaded.model,
            tokenizer.clone(),
            WorkerConfig {
                max_running: config.max_running_sequences.max(1),
                kv_budget_tokens: config.kv_budget_tokens,
                prefill_chunk: config.prefill_chunk.max(1),
                queue_capacity: config.queue_capacity,
            },
        );
        Ok(Arc::new(Self {
            config,
            limits,
            tokenizer,
            template,
            worker,
            recycle_source,
            draining: AtomicBool::new(false),
            created: now_seconds(),
            metrics,
        }))
    }
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting, lets running streams
/// finish for up to the grace period, ends the rest with a final chunk, and returns.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = routes::router(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_state = state.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: draining running requests");
        drain_state.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    let _ = stop_rx.await;
    let grace = Duration::from_secs(state.config.shutdown_grace_seconds);
    let mut server = server;
    tokio::select! {
        result = &mut server => return result.map_err(std::io::Error::other)?,
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over: ending the remaining streams");
            state.worker.abort_running();
        }
    }
    server.await.map_err(std::io::Error::other)?
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
