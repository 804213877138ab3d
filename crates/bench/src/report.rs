//! `recyclegpt bench report`: the decode benchmark on random-weight shapes and a real model, and
//! the serving benchmark against a server started here on 127.0.0.1, written as `report.json`
//! plus SVG charts.
use crate::decode::{self, Bandwidth, DecodeOptions, DecodeReport};
use crate::serve::{self, ServeOptions, ServeReport};
use crate::shapes::Shape;
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleGpt};
use recyclegpt_server::{AppState, LoopbackServer, ServerConfig};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub out: PathBuf,
    /// A model directory with a trained module: decode-benchmarked and served.
    pub model: PathBuf,
    pub shapes: Vec<Shape>,
    pub decode: DecodeOptions,
    pub clients: Vec<usize>,
    pub requests_per_client: usize,
    pub max_tokens: usize,
    pub prompt: String,
    pub device: candle_core::Device,
    pub dtype: candle_core::DType,
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

fn load(dir: &Path, options: &ReportOptions) -> Result<LoadedModel, ReportError> {
    let load_options = LoadOptions { device: options.device.clone(), dtype: options.dtype, ..LoadOptions::default() };
    LoadedModel::load(dir, &load_options).map_err(|e| ReportError::Model(dir.to_path_buf(), e))
}

pub fn run(options: &ReportOptions) -> Result<Report, ReportError> {
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
    for &shape in &options.shapes {
        let (config, recycle) = shape.config();
        tracing::info!(shape = shape.name(), "decode benchmark (random weights and module)");
        let model = RecycleGpt::random(config, Some(recycle), 42, &options.device, options.dtype, None)
            .map_err(|e| ReportError::Model(PathBuf::from(shape.name()), e))?;
        decode_reports.push(decode::run(shape.name(), &model, &options.decode, bandwidth)?);
    }
    tracing::info!(model = %options.model.display(), "decode benchmark (trained module)");
    let loaded = load(&options.model, options)?;
    decode_reports.push(decode::run(&served_model, &loaded.model, &options.decode, bandwidth)?);

    let serve_reports = serve_all(options, loaded)?;
    let report = Report {
        created_unix: recyclegpt_server::now_seconds(),
        machine,
        served_model,
        max_tokens: options.max_tokens,
        charts: crate::charts::draw_all(&options.out, &decode_reports, &serve_reports)?,
        decode: decode_reports,
        serve: serve_reports,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| ReportError::Io(options.out.clone(), e.into()))?;
    let path = options.out.join("report.json");
    std::fs::write(&path, json).map_err(|e| ReportError::Io(path, e))?;
    Ok(report)
}

/// Serves `loaded` on 127.0.0.1 (a free port) and runs every client count in every mode.
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
                let serve_options = ServeOptions {
                    url: format!("http://{}", server.address),
                    clients,
                    requests: clients * options.requests_per_client,
                    max_tokens: options.max_tokens,
                    prompt: options.prompt.clone(),
                    chat: false,
                    api_key: None,
                    response_format: None,
                    multi_turn: false,
                };
                reports.push(serve::run(&serve_options, mode).await);
            }
        }
        server.stop().await.map_err(|e| ReportError::Server(e.to_string()))?;
        Ok(reports)
    })
}
