//! `recyclegpt serve`: the OpenAI-compatible server.
use super::model_args::{resolve_placement, RecycleInitArg};
use anyhow::Context;
use clap::Args;
use recyclegpt_engine::DecodeMode;
use recyclegpt_model::{DTypeSpec, DeviceSpec, LoadOptions, LoadedModel, QuantizeSpec, RecycleInit};
use recyclegpt_server::{AppState, LogFormat, ServerConfig, ValidConfig};
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// A TOML file with any of the keys of config/default.toml.
    #[arg(long, env = "RECYCLEGPT_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "RECYCLEGPT_MODEL")]
    model: Option<PathBuf>,
    /// A trained recyclable module in its own directory (what `train-recycle --out` writes).
    #[arg(long, env = "RECYCLEGPT_RECYCLE", conflicts_with = "recycle_init")]
    recycle: Option<PathBuf>,
    #[arg(long, env = "RECYCLEGPT_HOST")]
    host: Option<String>,
    /// 0 binds a free port (the log says which).
    #[arg(long, env = "RECYCLEGPT_PORT")]
    port: Option<u16>,
    #[arg(long, env = "RECYCLEGPT_SERVED_MODEL_NAME")]
    served_model_name: Option<String>,
    #[arg(long, env = "RECYCLEGPT_API_KEY")]
    api_key: Option<String>,
    /// A Jinja chat template file in place of the model's own.
    #[arg(long, env = "RECYCLEGPT_CHAT_TEMPLATE_FILE")]
    chat_template_file: Option<PathBuf>,
    /// Carry `<think>` reasoning apart from the answer where the model marks it (true or false).
    #[arg(long, env = "RECYCLEGPT_SPLIT_REASONING")]
    split_reasoning: Option<bool>,
    /// Serve no chat page at `/`.
    #[arg(long, env = "RECYCLEGPT_NO_WEBUI")]
    no_webui: bool,
    #[arg(long, env = "RECYCLEGPT_MAX_RUNNING_SEQUENCES")]
    max_running_sequences: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_KV_BUDGET_TOKENS")]
    kv_budget_tokens: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_PREFILL_CHUNK")]
    prefill_chunk: Option<usize>,
    /// Reuse shared prompt prefixes' KV across requests (true or false).
    #[arg(long, env = "RECYCLEGPT_PREFIX_CACHING")]
    prefix_caching: Option<bool>,
    /// Let `verify` and `auto` draft from the text where it repeats itself (true or false).
    #[arg(long, env = "RECYCLEGPT_PROMPT_LOOKUP")]
    prompt_lookup: Option<bool>,
    #[arg(long, env = "RECYCLEGPT_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_MAX_SEQUENCES_PER_REQUEST")]
    max_sequences_per_request: Option<usize>,
    /// auto | off | alternate | verify
    #[arg(long, env = "RECYCLEGPT_DEFAULT_RECYCLE")]
    default_recycle: Option<DecodeMode>,
    #[arg(long, env = "RECYCLEGPT_DEFAULT_MAX_TOKENS")]
    default_max_tokens: Option<usize>,
    /// Comma-separated origins, or `*`.
    #[arg(long, env = "RECYCLEGPT_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Option<Vec<String>>,
    #[arg(long, env = "RECYCLEGPT_BODY_LIMIT_BYTES")]
    body_limit_bytes: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_MAX_STOP_BYTES")]
    max_stop_bytes: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_TOKENIZE_CONCURRENCY")]
    tokenize_concurrency: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_MAX_N")]
    max_n: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_MAX_TOP_LOGPROBS")]
    max_top_logprobs: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_GRAMMAR_CONCURRENCY")]
    grammar_concurrency: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_GRAMMAR_COMPILE_TIMEOUT_SECONDS")]
    grammar_compile_timeout_seconds: Option<f64>,
    #[arg(long, env = "RECYCLEGPT_MAX_SCHEMA_BYTES")]
    max_schema_bytes: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_RESPONSE_STORE_MAX_RESPONSES")]
    response_store_max_responses: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_RESPONSE_STORE_MAX_BYTES")]
    response_store_max_bytes: Option<usize>,
    #[arg(long, env = "RECYCLEGPT_RESPONSE_STORE_TTL_SECONDS")]
    response_store_ttl_seconds: Option<f64>,
    /// Require the API key on /metrics too (true or false).
    #[arg(long, env = "RECYCLEGPT_METRICS_REQUIRE_API_KEY")]
    metrics_require_api_key: Option<bool>,
    #[arg(long, env = "RECYCLEGPT_SHUTDOWN_DELAY_SECONDS")]
    shutdown_delay_seconds: Option<f64>,
    #[arg(long, env = "RECYCLEGPT_SHUTDOWN_GRACE_SECONDS")]
    shutdown_grace_seconds: Option<f64>,
    #[arg(long, env = "RECYCLEGPT_HEADER_READ_TIMEOUT_SECONDS")]
    header_read_timeout_seconds: Option<f64>,
    #[arg(long, env = "RECYCLEGPT_BODY_READ_TIMEOUT_SECONDS")]
    body_read_timeout_seconds: Option<f64>,
    #[arg(long, env = "RECYCLEGPT_IDLE_TIMEOUT_SECONDS")]
    idle_timeout_seconds: Option<f64>,
    #[arg(long, env = "RECYCLEGPT_WRITE_TIMEOUT_SECONDS")]
    write_timeout_seconds: Option<f64>,
    #[arg(long, env = "RECYCLEGPT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// text | json
    #[arg(long, env = "RECYCLEGPT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// cpu, cuda, cuda:N or auto (CUDA when compiled in and a GPU is present, else the CPU).
    #[arg(long, env = "RECYCLEGPT_DEVICE")]
    device: Option<DeviceSpec>,
    /// auto (f32 on the CPU, f16 on a GPU), f32, f16 or bf16.
    #[arg(long, env = "RECYCLEGPT_DTYPE")]
    dtype: Option<DTypeSpec>,
    /// auto (on the CPU, a GGUF file: each tensor in its own Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/K-quant/
    /// F16/BF16 blocks, F32 in q8_0; a model directory: its F16/BF16 tensors as stored, F32
    /// unquantized; on a GPU: none), none, q8_0, q4_0, q4_1, q5_0, q5_1,
    /// q4_k, q5_k, q6_k, f16 or bf16: keep the linear layers of the model and its module in that
    /// format (CPU; a K-quant where rows are not whole blocks of 256 falls back to q4_1, q5_1,
    /// q8_0).
    #[arg(long, env = "RECYCLEGPT_QUANTIZE", default_value = "auto")]
    quantize: QuantizeSpec,
    #[arg(long, value_enum, env = "RECYCLEGPT_RECYCLE_INIT", default_value = "file")]
    recycle_init: RecycleInitArg,
}

impl ServeArgs {
    /// Defaults, then the file, then environment variables and flags; validated before anything
    /// is loaded.
    fn config(&self) -> anyhow::Result<ValidConfig> {
        let mut c = match &self.config {
            Some(path) => ServerConfig::from_toml_file(path).map_err(anyhow::Error::msg)?,
            None => ServerConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = &self.$field { c.$field = v.clone(); })* };
        }
        if let Some(dir) = &self.recycle {
            c.recycle = Some(dir.clone());
        }
        set!(
            model,
            host,
            port,
            max_running_sequences,
            kv_budget_tokens,
            prefill_chunk,
            prefix_caching,
            prompt_lookup,
            split_reasoning,
            queue_capacity,
            max_sequences_per_request,
            default_recycle,
            default_max_tokens,
            cors_origins,
            body_limit_bytes,
            max_stop_bytes,
            tokenize_concurrency,
            max_n,
            max_top_logprobs,
            grammar_concurrency,
            grammar_compile_timeout_seconds,
            max_schema_bytes,
            response_store_max_responses,
            response_store_max_bytes,
            response_store_ttl_seconds,
            metrics_require_api_key,
            shutdown_delay_seconds,
            shutdown_grace_seconds,
            header_read_timeout_seconds,
            body_read_timeout_seconds,
            idle_timeout_seconds,
            write_timeout_seconds,
            max_connections,
            log_format,
            device,
            dtype
        );
        if self.served_model_name.is_some() {
            c.served_model_name = self.served_model_name.clone();
        }
        if self.api_key.is_some() {
            c.api_key = self.api_key.clone();
        }
        if self.chat_template_file.is_some() {
            c.chat_template_file = self.chat_template_file.clone();
        }
        if self.no_webui {
            c.webui = false;
        }
        c.validated().map_err(anyhow::Error::msg)
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    super::init_logging(config.log_format == LogFormat::Json);
    let recycle_init = match (args.recycle_init, &config.recycle) {
        (RecycleInitArg::Random, _) => {
            tracing::warn!("serving a RANDOMLY INITIALISED recyclable module: for benchmarks and tests only");
            RecycleInit::Random { seed: 0, layers: 1 }
        }
        (RecycleInitArg::File, Some(dir)) => RecycleInit::FromDir(dir.clone()),
        (RecycleInitArg::File, None) => RecycleInit::FromFiles,
    };
    let (device, dtype) = resolve_placement(config.device, config.dtype)?;
    let quantize = args.quantize.resolve(&config.model, &device);
    let options = LoadOptions { recycle_init, device, dtype, quantize };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    // Bind before loading, so that a busy port or a bad host fails at once, not after the load.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((config.host.as_str(), config.port)))
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    let loaded = LoadedModel::load(&config.model, &options)
        .with_context(|| format!("loading the model from {}", config.model.display()))?;
    runtime.block_on(async move {
        let address = listener.local_addr()?;
        let state = AppState::start(config, loaded).map_err(anyhow::Error::msg)?;
        tracing::info!(model = %state.limits.served_model_name, "listening on http://{address}");
        eprintln!("recyclegpt listening on http://{address}");
        recyclegpt_server::serve(state, listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The first Ctrl-C or SIGTERM starts the drain; a second one ends the process at once (the
/// operator has decided not to wait).
async fn shutdown_signal() {
    first_signal().await;
    tokio::spawn(async {
        first_signal().await;
        tracing::warn!("second shutdown signal: exiting now");
        std::process::exit(130);
    });
}

async fn first_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
