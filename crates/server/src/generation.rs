//! Turning a validated plan into worker jobs, and the jobs' events into OpenAI responses and
//! stream chunks.
use crate::error::ApiError;
use crate::openai::Usage;
use crate::validation::Plan;
use crate::worker::{Event, Job};
use recyclegpt_engine::TokenLogprob;
use recyclegpt_model::TextTokenizer;
use crate::AppState;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

pub type Events = mpsc::UnboundedReceiver<(usize, Event)>;

/// Queues one job per (prompt, sample); choice `index = prompt * n + sample`.
pub fn submit(state: &AppState, plan: &Plan, request_id: &str) -> Result<Events, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    let (events, receiver) = mpsc::unbounded_channel();
    for (p, prompt) in plan.prompts.iter().enumerate() {
        for sample in 0..plan.n {
            let mut params = plan.params.clone();
            // Samples of one request differ, yet a seeded request stays reproducible.
            params.seed = params.seed.map(|s| s.wrapping_add(sample as u64));
            state.worker.submit(Job {
                request_id: request_id.to_string(),
                index: p * plan.n + sample,
                prompt: prompt.clone(),
                params,
                max_tokens: plan.max_tokens,
                stop: plan.stop.clone(),
                mode: plan.mode,
                events: events.clone(),
            })?;
        }
    }
    Ok(receiver)
}

/// The outcome of one choice.
#[derive(Debug, Default, Clone)]
pub struct Choice {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<&'static str>,
    pub completion_tokens: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub full_forwards: usize,
}

/// Waits for every choice to finish.
pub async fn collect(mut events: Events, plan: &Plan) -> Result<(Vec<Choice>, Usage), ApiError> {
    let count = plan.prompts.len() * plan.n;
    let mut choices = vec![Choice::default(); count];
    let mut done = 0;
    while done < count {
        let Some((index, event)) = events.recv().await else {
            return Err(ApiError::Internal("the worker stopped before the request finished".into()));
        };
        let choice = &mut choices[index];
        match event {
            Event::Text { text, logprobs } => {
                choice.text.push_str(&text);
                choice.logprobs.extend(logprobs);
            }
            Event::Done {
                finish_reason,
                completion_tokens,
                stats,
                ..
            } => {
                choice.finish_reason = Some(finish_reason);
                choice.completion_tokens = completion_tokens;
                choice.accepted = stats.accepted;
                choice.rejected = stats.rejected;
                choice.full_forwards = stats.full_forwards;
                done += 1;
            }
            Event::Error(message) => return Err(ApiError::Internal(message)),
        }
    }
    let usage = usage(plan, choices.iter().map(|c| c.completion_tokens).sum());
    Ok((choices, usage))
}

pub fn usage(plan: &Plan, completion_tokens: usize) -> Usage {
    let prompt_tokens = plan.prompts.iter().map(Vec::len).sum();
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

/// Recycling statistics of a response (an extension field, `recycle`).
fn recycle_stats(plan: &Plan, choices: &[Choice]) -> serde_json::Value {
    let tokens: usize = choices.iter().map(|c| c.completion_tokens).sum();
    let forwards: usize = choices.iter().map(|c| c.full_forwards).sum();
    serde_json::json!({
        "mode": plan.mode.as_str(),
        "full_forwards": forwards,
        "tokens_per_full_forward": if forwards > 0 { tokens as f64 / forwards as f64 } else { 0.0 },
        "accepted": choices.iter().map(|c| c.accepted).sum::<usize>(),
        "rejected": choices.iter().map(|c| c.rejected).sum::<usize>(),
    })
}

/// How one endpoint shapes its stream chunks.
pub trait ChunkShape: Send + 'static {
    /// Chunks sent before any text for a choice (chat: the role).
    fn opening(&self, index: usize) -> Option<serde_json::Value>;
    fn text(&self, index: usize, text: &str, logprobs: &[TokenLogprob]) -> serde_json::Value;
    fn finish(&self, index: usize, reason: &str) -> serde_json::Value;
    fn usage(&self, usage: Usage) -> serde_json::Value;
}

/// An SSE response: chunks as events arrive, a usage chunk when asked, then `[DONE]`.
/// Dropping it (the client went away) drops `events`, which cancels the sequences.
pub fn sse(shape: impl ChunkShape, mut events: Events, plan: Plan) -> Response {
    let stream = async_stream::stream! {
        let count = plan.prompts.len() * plan.n;
        let mut opened = vec![false; count];
        let mut done = 0;
        let mut completion_tokens = 0;
        while done < count {
            let Some((index, event)) = events.recv().await else {
                let error = ApiError::Internal("the worker stopped before the request finished".into());
                yield json_event(&error.body());
                break;
            };
            if !opened[index] {
                opened[index] = true;
                if let Some(chunk) = shape.opening(index) {
                    yield json_event(&chunk);
                }
            }
            match event {
                Event::Text { text, logprobs } => yield json_event(&shape.text(index, &text, &logprobs)),
                Event::Done { finish_reason, completion_tokens: n, .. } => {
                    completion_tokens += n;
                    done += 1;
                    yield json_event(&shape.finish(index, finish_reason));
                }
                Event::Error(message) => {
                    yield json_event(&ApiError::Internal(message).body());
                    break;
                }
            }
        }
        if plan.include_usage {
            yield json_event(&shape.usage(usage(&plan, completion_tokens)));
        }
        yield Ok::<_, Infallible>(SseEvent::default().data("[DONE]"));
    };
    metrics::counter!("recyclegpt_requests_total", "status" => "200").increment(1);
    sse_response(stream)
}

fn json_event(value: &serde_json::Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(value.to_string()))
}

fn sse_response(stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

pub fn shared(state: &Arc<AppState>) -> (String, u64) {
    (state.limits.served_model_name.clone(), crate::now_seconds())
}

/// A whole (non-streamed) response: `object` is `text_completion` or `chat.completion`.
pub fn whole_response(object: &str, id: &str, state: &Arc<AppState>, plan: &Plan, choices: &[Choice], body: Vec<serde_json::Value>, usage: Usage) -> Response {
    let (model, created) = shared(state);
    metrics::counter!("recyclegpt_requests_total", "status" => "200").increment(1);
    axum::Json(serde_json::json!({
        "id": id, "object": object, "created": created, "model": model,
        "choices": body, "usage": usage, "recycle": recycle_stats(plan, choices),
    }))
    .into_response()
}

/// A token as clients see it in log-probabilities: its piece, with sentencepiece's `▁` as a space.
pub fn token_text(tokenizer: &TextTokenizer, token: u32) -> String {
    tokenizer
        .inner()
        .id_to_token(token)
        .map(|piece| piece.replace('\u{2581}', " "))
        .unwrap_or_default()
}
