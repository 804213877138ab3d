//! Structured outputs: `response_format` becomes a compiled grammar that every choice of the
//! request decodes under (the engine masks each sampled token with it, drafts included).
use crate::error::ApiError;
use crate::openai::ResponseFormat;
use crate::tools::ToolPlan;
use crate::AppState;
use recyclegpt_grammar::{Grammar, GrammarSpec};
use serde_json::json;
use std::sync::Arc;

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
    compile(state, spec).await.map(Some).map_err(|e| ApiError::invalid("response_format", format!("{what}: {e}")))
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
        Some(spec) => compile(state, spec)
            .await
            .map(Some)
            .map_err(|e| ApiError::invalid("tools", format!("the tools' parameters: {e}"))),
        None => grammar(state, format).await,
    }
}

/// Compiles off the async runtime: a large schema can take milliseconds to compile, and the
/// runtime's threads serve every connection.
pub async fn compile(state: &AppState, spec: GrammarSpec) -> Result<Arc<Grammar>, String> {
    let grammars = state.grammars.clone()?;
    match tokio::task::spawn_blocking(move || grammars.compile(&spec)).await {
        Ok(compiled) => compiled.map(Arc::new).map_err(|e| e.to_string()),
        Err(_) => Err("the grammar compiler failed".into()),
    }
}
