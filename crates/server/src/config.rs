//! Server configuration: `config/default.toml` keys, each overridable by a flag or a
//! `RECYCLEGPT_*` environment variable (the binary merges them). Values are typed: a bad mode,
//! device or format is refused when the file or flag is read, before the model loads.
use recyclegpt_engine::DecodeMode;
use recyclegpt_model::{DTypeSpec, DeviceSpec};
use serde::{Deserialize, Deserializer};
use std::path::PathBuf;
use std::str::FromStr;

/// The most responses the store may be configured to keep.
const MAX_STORED_RESPONSES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format `{other}` (expected text or json)")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub model: PathBuf,
    /// A trained recyclable module in its own directory (`train-recycle --out`), for a model
    /// without one beside it (a GGUF file).
    pub recycle: Option<PathBuf>,
    /// The `model` name clients send; defaults to the model directory's name.
    pub served_model_name: Option<String>,
    /// A Jinja chat template in place of the model's own (a model without one, or a fixed one).
    pub chat_template_file: Option<PathBuf>,
    /// Where the template or the vocabulary marks reasoning (`<think>`), answers carry it apart
    /// (`reasoning_content`, reasoning items, `thinking` blocks); false leaves it in the text.
    pub split_reasoning: bool,
    /// The chat page at `/`.
    pub webui: bool,
    /// Sequences decoded together; the KV budget admits fewer when their prompts and
    /// `max_tokens` need more. 64, not 16: batched decode keeps gaining past 16, and with 64
    /// streaming chat clients on SmolLM2 a cap of 16 left the rest waiting (time to first
    /// token p50 13.7 s, p99 15.7 s; with 64, 0.33 s and 5.3 s, 7% fewer tokens/s in all).
    pub max_running_sequences: usize,
    pub kv_budget_tokens: usize,
    pub prefill_chunk: usize,
    /// Reuse the keys and values of earlier requests' shared prefixes (a system prompt, the
    /// earlier turns of a chat), in the part of the KV budget running sequences leave free.
    pub prefix_caching: bool,
    /// `verify` and `auto` also draft from the text where it repeats itself (prompt lookup:
    /// the tokens that followed the text's last few tokens where they occurred before).
    pub prompt_lookup: bool,
    /// Sequences (prompts × n, all requests together) that may wait for a slot.
    pub queue_capacity: usize,
    /// Sequences one request may ask for (prompts × n; never more than `queue_capacity`); more
    /// is a 400, since such a request could never be queued.
    pub max_sequences_per_request: usize,
    pub default_recycle: DecodeMode,
    pub default_max_tokens: usize,
    pub api_key: Option<String>,
    /// Whether `/metrics` needs the API key too (`/health` never does).
    pub metrics_require_api_key: bool,
    pub cors_origins: Vec<String>,
    pub body_limit_bytes: usize,
    /// The longest stop string, in bytes: matching costs grow with it on every token.
    pub max_stop_bytes: usize,
    /// Prompts tokenized (and chat templates rendered) at once, off the async threads: more
    /// would only queue on the two cores this server is sized for, holding their memory.
    pub tokenize_concurrency: usize,
    /// The largest `n` (choices per prompt): OpenAI's own limit is 128, but every choice is a
    /// running sequence, and 16 keeps one request from taking a whole batch.
    pub max_n: usize,
    /// The most alternatives per token in chat's `top_logprobs`: OpenAI's limit, 20 (the
    /// completions endpoint's `logprobs` keeps OpenAI's 5). Each costs a sort of the row.
    pub max_top_logprobs: usize,
    /// Structured-output schemas and grammars compiled at once. A compile cannot be stopped
    /// once it runs, so this is how many cores hostile schemas can ever take from decoding: 1
    /// of the 2 this server is sized for.
    pub grammar_concurrency: usize,
    /// A schema that has not compiled by then gets a 400 (and one that waited this long for a
    /// compile slot, a 429). Real schemas, large ones included, compile in milliseconds; 5 s
    /// is far past them and short of a client's patience.
    pub grammar_compile_timeout_seconds: f64,
    /// The largest schema or grammar, as compact JSON: 64 KiB is many times the largest
    /// OpenAI accepts, and bounds the compiler's work on `$ref` chains and wide objects.
    pub max_schema_bytes: usize,
    /// Responses kept for `previous_response_id` and `GET /v1/responses/{id}` (`store`, true
    /// by default as in OpenAI's API), at most this many ...
    pub response_store_max_responses: usize,
    /// ... and this many bytes (their objects and conversations), the least recently used
    /// going first ...
    pub response_store_max_bytes: usize,
    /// ... each for this long after it was stored.
    pub response_store_ttl_seconds: f64,
    pub log_format: LogFormat,
    /// After SIGTERM, how long the listener still accepts (answering 503) so that load
    /// balancers see the drain before connections are refused.
    pub shutdown_delay_seconds: f64,
    /// From SIGTERM, how long running requests may take before they are ended with an error.
    pub shutdown_grace_seconds: f64,
    /// A client must send a request's headers within this.
    pub header_read_timeout_seconds: f64,
    /// ... and its body within this.
    pub body_read_timeout_seconds: f64,
    /// A connection with no request in flight and no traffic is closed after this.
    pub idle_timeout_seconds: f64,
    /// A write that makes no progress for this long (a client that stopped reading) ends the
    /// connection and frees its sequences.
    pub write_timeout_seconds: f64,
    /// Open connections at most (also kept under the process's descriptor limit).
    pub max_connections: usize,
    #[serde(deserialize_with = "parsed")]
    pub device: DeviceSpec,
    #[serde(deserialize_with = "parsed")]
    pub dtype: DTypeSpec,
}

fn parsed<'de, D: Deserializer<'de>, T: FromStr>(deserializer: D) -> Result<T, D::Error>
where
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            model: PathBuf::from("models/shakespeare"),
            recycle: None,
            served_model_name: None,
            chat_template_file: None,
            split_reasoning: true,
            webui: true,
            max_running_sequences: 64,
            kv_budget_tokens: 16 * 1024,
            prefill_chunk: 128,
            prefix_caching: true,
            prompt_lookup: true,
            queue_capacity: 64,
            max_sequences_per_request: 16,
            default_recycle: DecodeMode::Auto,
            default_max_tokens: 256,
            api_key: None,
            metrics_require_api_key: true,
            cors_origins: Vec::new(),
            body_limit_bytes: 2 * 1024 * 1024,
            max_stop_bytes: 256,
            tokenize_concurrency: 2,
            max_n: 16,
            max_top_logprobs: 20,
            grammar_concurrency: 1,
            grammar_compile_timeout_seconds: 5.0,
            max_schema_bytes: 64 * 1024,
            response_store_max_responses: 1024,
            response_store_max_bytes: 64 * 1024 * 1024,
            response_store_ttl_seconds: 3600.0,
            log_format: LogFormat::Text,
            shutdown_delay_seconds: 2.0,
            shutdown_grace_seconds: 30.0,
            header_read_timeout_seconds: 10.0,
            body_read_timeout_seconds: 30.0,
            idle_timeout_seconds: 60.0,
            write_timeout_seconds: 30.0,
            max_connections: 4096,
            device: DeviceSpec::Auto,
            dtype: DTypeSpec::Auto,
        }
    }
}

impl ServerConfig {
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The configuration as the server takes it, once [`ServerConfig::validate`] passed.
    pub fn validated(self) -> Result<ValidConfig, String> {
        self.validate()?;
        Ok(ValidConfig(self))
    }

    /// Checks what types cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_running_sequences", self.max_running_sequences),
            ("kv_budget_tokens", self.kv_budget_tokens),
            ("prefill_chunk", self.prefill_chunk),
            ("queue_capacity", self.queue_capacity),
            ("max_sequences_per_request", self.max_sequences_per_request),
            ("default_max_tokens", self.default_max_tokens),
            ("body_limit_bytes", self.body_limit_bytes),
            ("max_stop_bytes", self.max_stop_bytes),
            ("grammar_concurrency", self.grammar_concurrency),
            ("tokenize_concurrency", self.tokenize_concurrency),
            ("max_n", self.max_n),
            ("max_schema_bytes", self.max_schema_bytes),
            ("max_connections", self.max_connections),
            ("response_store_max_responses", self.response_store_max_responses),
            ("response_store_max_bytes", self.response_store_max_bytes),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
        }
        let seconds = [
            ("shutdown_delay_seconds", self.shutdown_delay_seconds),
            ("shutdown_grace_seconds", self.shutdown_grace_seconds),
            ("header_read_timeout_seconds", self.header_read_timeout_seconds),
            ("body_read_timeout_seconds", self.body_read_timeout_seconds),
            ("idle_timeout_seconds", self.idle_timeout_seconds),
            ("write_timeout_seconds", self.write_timeout_seconds),
            ("grammar_compile_timeout_seconds", self.grammar_compile_timeout_seconds),
            ("response_store_ttl_seconds", self.response_store_ttl_seconds),
        ];
        for (key, value) in seconds {
            if !(value.is_finite() && (0.0..=86_400.0).contains(&value)) {
                return Err(format!("`{key}` must be between 0 and 86400 seconds, got {value}"));
            }
        }
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err("`api_key` is set but blank: set a key, or leave it out to serve without one".into());
        }
        if let Some(bad) = self.cors_origins.iter().find(|o| *o != "*" && o.parse::<axum::http::HeaderValue>().is_err())
        {
            return Err(format!("`cors_origins`: `{bad}` is not a valid origin"));
        }
        // Every store and read scans the store (see response_store.rs): keep it to what a scan
        // does in well under a millisecond. A store that expires at once would answer `store:
        // true` and then 404.
        if self.response_store_max_responses > MAX_STORED_RESPONSES {
            return Err(format!("`response_store_max_responses` must be at most {MAX_STORED_RESPONSES}"));
        }
        if self.response_store_ttl_seconds <= 0.0 {
            return Err("`response_store_ttl_seconds` must be above 0".into());
        }
        if self.shutdown_delay_seconds > self.shutdown_grace_seconds {
            return Err("`shutdown_delay_seconds` must not exceed `shutdown_grace_seconds`".into());
        }
        Ok(())
    }

    pub fn served_name(&self) -> String {
        self.served_model_name.clone().unwrap_or_else(|| {
            // A GGUF file is named without its extension; a directory by its name.
            let name = if self.model.is_file() { self.model.file_stem() } else { self.model.file_name() };
            name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "recyclegpt".into())
        })
    }
}

/// Seconds from configuration as a `Duration` (validated finite and non-negative).
pub fn seconds(value: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(value.max(0.0))
}

/// A configuration that passed [`ServerConfig::validate`]: the only kind the server starts
/// from, so it is checked once, where it is made (`serve` checks it before the model loads).
#[derive(Debug, Clone)]
pub struct ValidConfig(ServerConfig);

impl std::ops::Deref for ValidConfig {
    type Target = ServerConfig;

    fn deref(&self) -> &ServerConfig {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::ServerConfig;

    #[test]
    fn validation_refuses_what_would_misbehave_later() {
        assert!(ServerConfig::default().validate().is_ok());
        let blank_key = ServerConfig { api_key: Some("  ".into()), ..ServerConfig::default() };
        assert!(blank_key.validate().unwrap_err().contains("api_key"));
        let bad_origin = ServerConfig {
            cors_origins: vec!["https://ok.example".into(), "bad\norigin".into()],
            ..ServerConfig::default()
        };
        assert!(bad_origin.validate().unwrap_err().contains("cors_origins"));
        let no_queue = ServerConfig { queue_capacity: 0, ..ServerConfig::default() };
        assert!(no_queue.validate().unwrap_err().contains("queue_capacity"));
        let late_delay = ServerConfig { shutdown_delay_seconds: 40.0, ..ServerConfig::default() };
        assert!(late_delay.validate().is_err());
        let no_time = ServerConfig { response_store_ttl_seconds: 0.0, ..ServerConfig::default() };
        assert!(no_time.validate().unwrap_err().contains("response_store_ttl_seconds"));
        let huge = ServerConfig { response_store_max_responses: 1_000_000, ..ServerConfig::default() };
        assert!(huge.validate().unwrap_err().contains("response_store_max_responses"));
    }

    #[test]
    fn a_typed_file_is_refused_before_anything_loads() {
        assert!(toml::from_str::<ServerConfig>("default_recycle = \"sometimes\"").is_err());
        assert!(toml::from_str::<ServerConfig>("device = \"tpu\"").is_err());
        assert!(toml::from_str::<ServerConfig>("log_format = \"xml\"").is_err());
        assert!(toml::from_str::<ServerConfig>("no_such_key = 1").is_err());
        let ok: ServerConfig = toml::from_str("default_recycle = \"off\"\ndevice = \"cuda:1\"").unwrap();
        assert_eq!(ok.default_recycle, recyclegpt_engine::DecodeMode::Off);
    }
}
