//! Structured outputs: `response_format` becomes a compiled grammar that every choice of the
//! request decodes under (the engine masks each sampled token with it, drafts included).
use crate::config::{seconds, ServerConfig};
use crate::error::ApiError;
use crate::openai::ResponseFormat;
use crate::tools::ToolPlan;
use crate::AppState;
use recyclegpt_grammar::{Grammar, GrammarSpec, Grammars, SchemaBudget};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The grammar `format` asks for, if any; an invalid schema is a 400 that names it.
pub async fn grammar(state: &AppState, format: Option<&ResponseFormat>) -> Result<Option<Arc<Grammar>>, ApiError> {
    let (spec, what) = match format {
        None | Some(ResponseFormat::Text) => return Ok(None),
        Some(ResponseFormat::JsonObject) => (GrammarSpec::JsonObject, "`json_object`".to_string()),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let name = &json_schema.name;
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ApiError::invalid(
                    "response_format",
                    "`json_schema.name` must be 1 to 64 letters, digits, underscores or dashes",
                ));
            }
            let schema = json_schema.schema.clone().unwrap_or_else(|| json!({}));
            (GrammarSpec::JsonSchema(schema), format!("the JSON schema `{name}`"))
        }
    };
    compile(state, spec, "response_format", &what).await.map(Some)
}

/// The grammar of a request with tools and a response format: a forced tool call's, else the
/// format's. Both at once is a 400 on `format_param` (the name of the format's field).
pub async fn request_grammar(
    state: &AppState,
    tools: Option<&ToolPlan>,
    format: Option<&ResponseFormat>,
    format_param: &str,
) -> Result<Option<Arc<Grammar>>, ApiError> {
    match tools.and_then(ToolPlan::grammar) {
        Some(_) if format.is_some() => Err(ApiError::invalid(
            format_param,
            format!("`{format_param}` cannot be combined with a `tool_choice` that forces a call"),
        )),
        Some(spec) => compile(state, spec, "tools", "the tools' parameters").await.map(Some),
        None => {
            if let Some(tools) = tools {
                // Checked though not used: a tool whose parameters are no schema is a 400
                // whatever `tool_choice` says.
                compile(state, tools.any_call_grammar(), "tools", "the tools' parameters").await?;
            }
            grammar(state, format).await
        }
    }
}

/// How compiles run: on threads of their own, a bounded number at once, within a deadline.
pub struct GrammarCompiler {
    grammars: Result<Arc<Grammars>, String>,
    budget: SchemaBudget,
    slots: Arc<Semaphore>,
    deadline: Duration,
}

/// A compile's stack. The compiler recurses along a schema's `$ref` chains (about 8 KiB a
/// link): a 2 MiB pool thread overflowed at 250 links, which aborts the process. With the schema
/// size capped, 256 MiB (reserved, touched only as deep as a compile goes) holds every chain a
/// schema within the cap can make, many times over.
const COMPILE_STACK_BYTES: usize = 256 << 20;

impl GrammarCompiler {
    pub fn new(grammars: Result<Arc<Grammars>, String>, config: &ServerConfig) -> Self {
        Self {
            grammars,
            budget: SchemaBudget { max_bytes: config.max_schema_bytes },
            slots: Arc::new(Semaphore::new(config.grammar_concurrency)),
            deadline: seconds(config.grammar_compile_timeout_seconds),
        }
    }

    /// Compiles `spec`; `Err(None)` when no slot came free in time, else the 400's message.
    ///
    /// A compile cannot be stopped once it runs (llguidance has no cancellation for it), so
    /// its slot is held until it ends, even after its client has been answered: at most
    /// `grammar_concurrency` cores ever compile, however many clients send such schemas.
    async fn compile(&self, spec: GrammarSpec) -> Result<Arc<Grammar>, Option<String>> {
        let grammars = self.grammars.clone().map_err(Some)?;
        let started = Instant::now();
        let slot = match tokio::time::timeout(self.deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(None),
        };
        let (send, receive) = tokio::sync::oneshot::channel();
        let budget = self.budget;
        let spawned = std::thread::Builder::new().name("grammar-compile".into()).stack_size(COMPILE_STACK_BYTES).spawn(
            move || {
                let compiled = grammars.compile(&spec, &budget).map(Arc::new).map_err(|e| e.to_string());
                drop(slot);
                // The client may have gone, or been answered that it took too long.
                let _ = send.send(compiled);
            },
        );
        if spawned.is_err() {
            return Err(Some("the grammar compiler could not start".into()));
        }
        let left = self.deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, receive).await {
            Ok(Ok(compiled)) => compiled.map_err(Some),
            Ok(Err(_)) => Err(Some("the grammar compiler failed".into())),
            Err(_) => Err(Some(format!(
                "it did not compile within {:.1} s; simplify it (fewer patterns, alternatives or references)",
                self.deadline.as_secs_f64()
            ))),
        }
    }
}

/// Compiles off the async runtime, within the compiler's limits; `param` and `what` name the
/// field in a 400.
pub async fn compile(state: &AppState, spec: GrammarSpec, param: &str, what: &str) -> Result<Arc<Grammar>, ApiError> {
    state.grammars.compile(spec).await.map_err(|error| match error {
        Some(message) => ApiError::invalid(param, format!("{what}: {message}")),
        None => ApiError::CompilerBusy,
    })
}
