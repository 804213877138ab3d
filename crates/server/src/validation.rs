//! One typed validation pass: a request becomes a `Plan` the worker can run, or an error that
//! names the parameter at fault. The cheap checks come first ([`check`]: model, n, sampling,
//! stop, mode); the route then compiles the grammar, renders and tokenizes the prompt, and
//! [`Checked::plan`] checks what only the tokens can tell (lengths, ids, context).
use crate::error::ApiError;
use crate::openai::{SamplingFields, Stop};
use recyclegpt_engine::{DecodeMode, SamplingParams};
use recyclegpt_grammar::Grammar;
use std::sync::Arc;

/// What the model and the server allow.
#[derive(Debug, Clone)]
pub struct Limits {
    pub served_model_name: String,
    pub context_len: usize,
    pub vocab_size: usize,
    pub default_max_tokens: usize,
    pub default_mode: DecodeMode,
    pub has_recycle: bool,
    pub max_n: usize,
    /// The most alternatives per token in chat's `top_logprobs`.
    pub max_top_logprobs: usize,
    /// Sequences (prompts × n) one request may ask for.
    pub max_sequences: usize,
    /// The longest stop string, in bytes.
    pub max_stop_bytes: usize,
}

/// A validated request: one or more prompts, each generated `n` times with these settings.
/// Only [`Checked::plan`] makes one, after every check has passed; nothing changes it after.
#[derive(Debug, Clone)]
pub struct Plan {
    fields: Checked,
    prompts: Vec<Vec<u32>>,
    /// The tokens to generate at most: as asked, or the default the prompts leave room for.
    max_tokens: usize,
    /// The grammar every choice's tokens must fit (structured outputs), if any.
    grammar: Option<Arc<Grammar>>,
}

impl Plan {
    pub fn prompts(&self) -> &[Vec<u32>] {
        &self.prompts
    }

    /// Choices per prompt.
    pub fn n(&self) -> usize {
        self.fields.n
    }

    pub fn params(&self) -> &SamplingParams {
        &self.fields.params
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn stop(&self) -> &[String] {
        &self.fields.stop
    }

    /// The decode mode, resolved once (the server's default, and `off` without a module).
    pub fn mode(&self) -> DecodeMode {
        self.fields.mode
    }

    pub fn stream(&self) -> bool {
        self.fields.stream
    }

    pub fn include_usage(&self) -> bool {
        self.fields.include_usage
    }

    pub fn grammar(&self) -> Option<&Arc<Grammar>> {
        self.grammar.as_ref()
    }

    pub fn wants_logprobs(&self) -> bool {
        self.fields.params.logprobs.is_some()
    }
}

/// A request's own fields checked, before anything costly (compiling its grammar, rendering
/// and tokenizing its prompt) is spent on it: the first half of a [`Plan`].
#[derive(Debug, Clone)]
pub struct Checked {
    n: usize,
    params: SamplingParams,
    /// As asked; without it, the default or what the context leaves is settled by the prompt.
    max_tokens: Option<usize>,
    stop: Vec<String>,
    mode: DecodeMode,
    stream: bool,
    include_usage: bool,
    names: FieldNames,
}

/// Checks a requested number of top alternatives.
pub fn top_logprobs(param: &str, value: i64, max: i64) -> Result<usize, ApiError> {
    if !(0..=max).contains(&value) {
        return Err(ApiError::invalid(param, format!("`{param}` must be between 0 and {max}, got {value}")));
    }
    Ok(value as usize)
}

fn in_range(param: &str, value: Option<f64>, lo: f64, hi: f64, default: f64) -> Result<f32, ApiError> {
    let v = value.unwrap_or(default);
    if !v.is_finite() || v < lo || v > hi {
        return Err(ApiError::invalid(param, format!("`{param}` must be between {lo} and {hi}, got {v}")));
    }
    Ok(v as f32)
}

/// The `model` a request names, if any, must be the served one.
pub fn check_model(model: Option<&String>, limits: &Limits) -> Result<(), ApiError> {
    match model {
        Some(name) if *name != limits.served_model_name => Err(ApiError::UnknownModel(name.clone())),
        _ => Ok(()),
    }
}

/// Every id in `ids` (the request's `param`) must be in the vocabulary.
pub fn check_token_ids(param: &str, ids: &[u32], limits: &Limits) -> Result<(), ApiError> {
    match ids.iter().find(|&&t| t as usize >= limits.vocab_size) {
        Some(bad) => {
            Err(ApiError::invalid(param, format!("token id {bad} is outside the vocabulary of {}", limits.vocab_size)))
        }
        None => Ok(()),
    }
}

/// What a dialect calls the prompt and the token limit, for the errors that name them.
#[derive(Debug, Clone, Copy)]
pub struct FieldNames {
    pub prompt: &'static str,
    pub max_tokens: &'static str,
}

/// Checks the fields every dialect shares (model, n, sampling, stop, mode), before the prompt.
/// `logprobs`: how many top alternatives to report per token, if log-probabilities are wanted.
pub fn check(
    fields: &SamplingFields,
    max_tokens: Option<i64>,
    logprobs: Option<usize>,
    limits: &Limits,
    names: FieldNames,
) -> Result<Checked, ApiError> {
    check_model(fields.model.as_ref(), limits)?;
    let n = fields.n.unwrap_or(1);
    if n < 1 || n as usize > limits.max_n {
        return Err(ApiError::invalid("n", format!("`n` must be between 1 and {}, got {n}", limits.max_n)));
    }
    let max_tokens = match max_tokens {
        Some(m) if m < 1 => {
            let param = names.max_tokens;
            return Err(ApiError::invalid(param, format!("`{param}` must be at least 1, got {m}")));
        }
        Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        None => None,
    };
    let mut logit_bias = Vec::new();
    for (token, bias) in fields.logit_bias.iter().flatten() {
        // Exactly the decimal form the OpenAPI document declares: no sign, space or leading zero.
        let canonical = token == "0" || (!token.starts_with('0') && token.bytes().all(|b| b.is_ascii_digit()));
        let id: u32 = canonical
            .then(|| token.parse().ok())
            .flatten()
            .filter(|&id: &u32| (id as usize) < limits.vocab_size)
            .ok_or_else(|| ApiError::invalid("logit_bias", format!("`{token}` is not a token id of this model")))?;
        if !(-100.0..=100.0).contains(bias) {
            return Err(ApiError::invalid("logit_bias", format!("bias {bias} for token {id} is outside [-100, 100]")));
        }
        logit_bias.push((id, *bias as f32));
    }
    let top_k = fields.top_k.unwrap_or(0);
    if top_k < 0 && top_k != -1 {
        return Err(ApiError::invalid("top_k", format!("`top_k` must be -1, 0 or positive, got {top_k}")));
    }
    if fields.top_p.is_some_and(|p| p <= 0.0) {
        return Err(ApiError::invalid("top_p", "`top_p` must be greater than 0"));
    }
    // A positive top_p too small for f32 keeps only the most likely token, as the smallest f32 does.
    let top_p = in_range("top_p", fields.top_p, 0.0, 1.0, 1.0)?.max(f32::MIN_POSITIVE);
    let params = SamplingParams {
        temperature: in_range("temperature", fields.temperature, 0.0, 2.0, 1.0)?,
        top_p,
        top_k: top_k.max(0) as usize,
        min_p: in_range("min_p", fields.min_p, 0.0, 1.0, 0.0)?,
        repetition_penalty: in_range("repetition_penalty", fields.repetition_penalty, 0.01, 10.0, 1.0)?,
        frequency_penalty: in_range("frequency_penalty", fields.frequency_penalty, -2.0, 2.0, 0.0)?,
        presence_penalty: in_range("presence_penalty", fields.presence_penalty, -2.0, 2.0, 0.0)?,
        logit_bias,
        seed: fields.seed.map(|s| s as u64),
        logprobs,
        prompt_logprobs: None,
    };
    let stop = match &fields.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(list)) => list.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "`stop` takes up to 4 non-empty strings"));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > limits.max_stop_bytes) {
        return Err(ApiError::invalid(
            "stop",
            format!("a stop string has {} bytes; at most {} are allowed", long.len(), limits.max_stop_bytes),
        ));
    }
    let mode = match fields.recycle.as_deref() {
        None => limits.default_mode,
        Some(name) => {
            name.parse().map_err(|e: recyclegpt_engine::EngineError| ApiError::invalid("recycle", e.to_string()))?
        }
    };
    // Without a module, the default and `auto` mean plain decoding; naming a mode that needs
    // the module is an error.
    let mode = if !limits.has_recycle && (fields.recycle.is_none() || mode == DecodeMode::Auto) {
        DecodeMode::Off
    } else {
        mode
    };
    if mode != DecodeMode::Off && !limits.has_recycle {
        return Err(ApiError::invalid(
            "recycle",
            "this model has no recyclable module: only `off` and `auto` are served",
        ));
    }
    Ok(Checked {
        n: n as usize,
        params,
        max_tokens,
        stop,
        mode,
        stream: fields.stream,
        include_usage: fields.stream_options.as_ref().is_some_and(|o| o.include_usage),
        names,
    })
}

impl Checked {
    /// Completions' `echo`: the prompt's tokens are reported with log-probabilities too.
    pub fn echo_prompt_logprobs(mut self) -> Self {
        self.params.prompt_logprobs = self.params.logprobs;
        self
    }

    /// The last checks, on the tokenized prompts (they exist, fit the vocabulary and, with the
    /// tokens to generate, the context), and the plan the worker runs.
    pub fn plan(
        self,
        prompts: Vec<Vec<u32>>,
        grammar: Option<Arc<Grammar>>,
        limits: &Limits,
    ) -> Result<Plan, ApiError> {
        let names = self.names;
        if prompts.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        let sequences = prompts.len().saturating_mul(self.n);
        if sequences > limits.max_sequences {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "the request asks for {sequences} sequences (prompts × n); at most {} are served per request",
                    limits.max_sequences
                ),
            ));
        }
        // Without max_tokens, generate up to the default or to the end of the context.
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let max_tokens = self
            .max_tokens
            .unwrap_or_else(|| limits.default_max_tokens.min(limits.context_len.saturating_sub(longest)).max(1));
        for prompt in &prompts {
            if prompt.is_empty() {
                return Err(ApiError::invalid("prompt", "a prompt has no tokens"));
            }
            check_token_ids("prompt", prompt, limits)?;
            if prompt.len().saturating_add(max_tokens) > limits.context_len {
                let param = if prompt.len() >= limits.context_len { names.prompt } else { names.max_tokens };
                return Err(ApiError::ContextLength {
                    param: param.to_string(),
                    message: format!(
                        "This model's maximum context length is {} tokens; the prompt has {} tokens and `{}` is \
                         {max_tokens} ({} in all)",
                        limits.context_len,
                        prompt.len(),
                        names.max_tokens,
                        prompt.len().saturating_add(max_tokens)
                    ),
                });
            }
        }
        Ok(Plan { fields: self, prompts, max_tokens, grammar })
    }
}
