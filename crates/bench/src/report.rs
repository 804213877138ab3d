//! `recyclegpt bench report`: the decode benchmark on random-weight shapes and a real model, and
//! the serving benchmark against a server started here on 127.0.0.1, written as `report.json`
//! plus SVG charts.
use crate::decode::{self, Bandwidth, DecodeOptions, DecodeReport};
use crate::serve::{self, ServeOptions, ServeReport};
use crate::shapes::Shape;
use recyclegpt_model::{LoadedModel, RecycleGpt};
use recyclegpt_server::{AppState, LoopbackServer, ServerConfig};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub out: PathBuf,
    /// The model (with a trained module) that is decode-benchmarked and served, as the caller
    /// loaded it: its path names it in the report.
    pub model: PathBuf,
    pub shapes: Vec<Shape>,
    /// For the model; the random shapes always continue random text.
    pub decode: DecodeOptions,
    pub clients: Vec<usize>,
    pub requests_per_client: usize,
    pub max_tokens: usize,
    pub prompt: String,
    /// Serve the prompt as a chat message (the model's template applies).
    pub chat: bool,
    pub device: candle_core::Device,
    pub dtype: candle_core::DType,
    /// Other servers of the same model, already running: (name, base URL). Each gets the same
    /// serving runs as ours (in plain decoding), drawn beside ours.
    pub peers: Vec<(String, String)>,
    /// Peers' batch-1 decode tokens/s of the same model, measured by the caller the same hour
    /// (llama-bench's tg128): (name, tokens/s), drawn beside the model's bars.
    pub peer_decode: Vec<(String, f64)>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub threads: usize,
    pub os: String,
    pub read_bandwidth_gb_per_s: f64,
    pub copy_bandwidth_gb_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub created_unix: u64,
    pub machine: Machine,
    pub served_model: String,
    pub max_tokens: usize,
    pub decode: Vec<DecodeReport>,
    pub peer_decode: Vec<(String, f64)>,
    pub serve: Vec<ServeReport>,
    pub charts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("loading {0}: {1}")]
    Model(PathBuf, recyclegpt_model::ModelError),
    #[error("decode benchmark: {0}")]
    Decode(#[from] recyclegpt_engine::EngineError),
    #[error("starting the server: {0}")]
    Server(String),
    #[error("drawing {0}: {1}")]
    Chart(String, String),
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Runs every benchmark: the random shapes, then `loaded` (the model `options.model` names).
pub fn run(options: &ReportOptions, loaded: LoadedModel) -> Result<Report, ReportError> {
    std::fs::create_dir_all(&options.out).map_err(|e| ReportError::Io(options.out.clone(), e))?;
    let bandwidth = Bandwidth::measure();
    let machine = Machine {
        cpu: cpu_name(),
        threads: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        os: std::env::consts::OS.to_string(),
        read_bandwidth_gb_per_s: bandwidth.read,
        copy_bandwidth_gb_per_s: bandwidth.copy,
    };
    let served_model = options
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| options.model.display().to_string());

    let mut decode_reports = Vec::new();
    let random_text = DecodeOptions { prompts: Vec::new(), ..options.decode.clone() };
    for &shape in &options.shapes {
        let (config, recycle) = shape.config();
        tracing::info!(shape = shape.name(), "decode benchmark (random weights and module)");
        let model = RecycleGpt::random(config, Some(recycle), 42, &options.device, options.dtype, None)
            .map_err(|e| ReportError::Model(PathBuf::from(shape.name()), e))?;
        decode_reports.push(decode::run(shape.name(), &model, &random_text, bandwidth)?);
    }
    tracing::info!(model = %options.model.display(), "decode benchmark (trained module)");
    decode_reports.push(decode::run(&served_model, &loaded.model, &options.decode, bandwidth)?);

    let serve_reports = serve_all(options, loaded)?;
    let report = Report {
        created_unix: recyclegpt_server::now_seconds(),
        machine,
        served_model,
        max_tokens: options.max_tokens,
        charts: crate::charts::draw_all(&options.out, &decode_reports, &options.peer_decode, &serve_reports)?,
        decode: decode_reports,
        peer_decode: options.peer_decode.clone(),
        serve: serve_reports,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| ReportError::Io(options.out.clone(), e.into()))?;
    let path = options.out.join("report.json");
    std::fs::write(&path, json).map_err(|e| ReportError::Io(path, e))?;
    Ok(report)
}

/// Serves `loaded` on 127.0.0.1 (a free port) and runs every client count in every mode, then
/// the same client counts against each peer.
fn serve_all(options: &ReportOptions, loaded: LoadedModel) -> Result<Vec<ServeReport>, ReportError> {
    let modes: &[&str] = if loaded.model.has_recycle() { &["off", "auto", "verify", "alternate"] } else { &["off"] };
    let config = ServerConfig {
        model: options.model.clone(),
        port: 0,
        max_running_sequences: options.clients.iter().copied().max().unwrap_or(1).max(16),
        ..ServerConfig::default()
    };
    let config = config.validated().map_err(ReportError::Server)?;
    let state = AppState::start(config, loaded).map_err(ReportError::Server)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ReportError::Server(e.to_string()))?;
    runtime.block_on(async {
        let server = LoopbackServer::start(state).await.map_err(|e| ReportError::Server(e.to_string()))?;
        let mut reports = Vec::new();
        for &clients in &options.clients {
            for mode in modes {
                tracing::info!(clients, mode, "serving benchmark");
                let url = format!("http://{}", server.address);
                reports.push(serve::run(&serve_options(options, url, clients), mode).await);
            }
        }
        server.stop().await.map_err(|e| ReportError::Server(e.to_string()))?;
        for (name, url) in &options.peers {
            for &clients in &options.clients {
                tracing::info!(clients, peer = %name, "serving benchmark");
                let mut report = serve::run(&serve_options(options, url.clone(), clients), "off").await;
                report.server = name.clone();
                reports.push(report);
            }
        }
        Ok(reports)
    })
}

fn serve_options(options: &ReportOptions, url: String, clients: usize) -> ServeOptions {
    ServeOptions {
        url,
        clients,
        requests: clients * options.requests_per_client,
        max_tokens: options.max_tokens,
        prompt: options.prompt.clone(),
        chat: options.chat,
        api_key: None,
        response_format: None,
        multi_turn: false,
    }
}
