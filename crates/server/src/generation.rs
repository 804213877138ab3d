//! Turning a validated plan into worker jobs, and the jobs' events into text, OpenAI responses
//! and stream chunks. Detokenization and stop strings run here, on the request's own task, so the
//! worker thread only ever handles token ids.
use crate::backend::{Event, Job};
use crate::error::ApiError;
use crate::openai::{PromptTokensDetails, Usage};
use crate::responses::{FinishReason as ApiFinish, RecycleStats};
use crate::text::TextStream;
use crate::validation::Plan;
use crate::AppState;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use recyclegpt_engine::{FinishReason, SequenceStats, TokenLogprob, TokenSource};
use serde::Serialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The running choices of one request: their events, text streams and cancel flags.
pub struct Generation {
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    choices: Vec<ChoiceState>,
    prompt_tokens: usize,
    /// Choices per prompt.
    n: usize,
    done: usize,
    /// The pieces of events not yet returned by `next` (an event gives one per run of tokens
    /// from one source, and its end when a stop string matched).
    pending: VecDeque<Progress>,
}

struct ChoiceState {
    text: TextStream,
    cached_prompt_tokens: usize,
    prompt_logprobs: Vec<TokenLogprob>,
    cancel: Arc<AtomicBool>,
    completion_tokens: usize,
    finished: bool,
}

/// What one event meant for its choice.
pub enum Progress {
    Text {
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
        /// Where its tokens came from.
        source: TokenSource,
    },
    /// The choice ended; `text` is what remained to send.
    Finished(ChoiceEnd),
}

#[derive(Debug, Clone)]
pub struct ChoiceEnd {
    pub index: usize,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub reason: ApiFinish,
    /// The stop string that ended the choice, if one did.
    pub stop_sequence: Option<String>,
    pub completion_tokens: usize,
    /// Recycling counters (zero for a choice a stop string ended: the worker drops it).
    pub stats: SequenceStats,
}

impl ChoiceEnd {
    /// The choice's counters alone: what [`recycle_stats`] reads of it.
    pub fn counters(&self) -> Choice {
        Choice { completion_tokens: self.completion_tokens, stats: self.stats, ..Choice::default() }
    }
}

/// Queues one job per (prompt, sample), all or none; choice `index = prompt * n + sample`.
/// `arrived`: when the request reached its route. The request's span (its id, route and
/// sequences) follows its jobs into the worker.
pub fn submit(
    state: &AppState,
    plan: &Plan,
    request_id: &str,
    arrived: std::time::Instant,
) -> Result<Generation, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    let span = tracing::info_span!("request", id = %request_id, sequences = plan.prompts().len() * plan.n());
    let (events, receiver) = mpsc::unbounded_channel();
    let mut jobs = Vec::new();
    let mut choices = Vec::new();
    for prompt in plan.prompts() {
        for sample in 0..plan.n() {
            let mut params = plan.params().clone();
            // Samples of one request differ, yet a seeded request stays reproducible.
            params.seed = params.seed.map(|s| s.wrapping_add(sample as u64));
            let cancel = Arc::new(AtomicBool::new(false));
            jobs.push(Job {
                request_id: request_id.to_string(),
                index: jobs.len(),
                prompt: prompt.clone(),
                params,
                max_tokens: plan.max_tokens(),
                eos_ids: state.tokenizer.eos_ids().to_vec(),
                mode: plan.mode(),
                constraint: plan.grammar().map(|g| g.constraint()),
                events: events.clone(),
                cancel: cancel.clone(),
                arrived,
                span: span.clone(),
            });
            choices.push(ChoiceState {
                text: TextStream::new(&state.tokenizer, plan.stop().to_vec()),
                cached_prompt_tokens: 0,
                prompt_logprobs: Vec::new(),
                cancel,
                completion_tokens: 0,
                finished: false,
            });
        }
    }
    state.backend.submit(jobs)?;
    Ok(Generation {
        events: receiver,
        choices,
        prompt_tokens: plan.prompts().iter().map(Vec::len).sum(),
        n: plan.n().max(1),
        done: 0,
        pending: VecDeque::new(),
    })
}

impl Generation {
    pub fn is_done(&self) -> bool {
        self.done == self.choices.len() && self.pending.is_empty()
    }

    pub fn choice_count(&self) -> usize {
        self.choices.len()
    }

    /// A choice's prompt log-probabilities (when asked for), known once its first tokens came.
    pub fn prompt_logprobs(&self, index: usize) -> &[TokenLogprob] {
        self.choices.get(index).map_or(&[], |c| c.prompt_logprobs.as_slice())
    }

    /// The next thing that happened to a choice; `Err` when the request failed as a whole.
    pub async fn next(&mut self) -> Result<Progress, ApiError> {
        loop {
            if let Some(progress) = self.pending.pop_front() {
                return Ok(progress);
            }
            let Some((index, event)) = self.events.recv().await else {
                return Err(ApiError::Internal("the model worker stopped before the request finished".into()));
            };
            let Some(choice) = self.choices.get_mut(index).filter(|c| !c.finished) else {
                continue;
            };
            match event {
                Event::Tokens { tokens, sources, logprobs, prompt_logprobs, cached_prompt_tokens } => {
                    choice.prompt_logprobs.extend(prompt_logprobs);
                    choice.cached_prompt_tokens = cached_prompt_tokens;
                    self.take_tokens(index, &tokens, &sources, logprobs);
                }
                Event::Finished(finished) => {
                    let chunk = choice.text.finish();
                    let reason = match (chunk.stopped_after, finished.reason) {
                        (Some(_), _) | (None, FinishReason::Stop) => ApiFinish::Stop,
                        (None, FinishReason::Length) => ApiFinish::Length,
                        (None, FinishReason::ConstraintFailed) => {
                            self.cancel_all();
                            return Err(ApiError::Internal(
                                "the output's grammar failed during generation (the schema or grammar is beyond \
                                 what the grammar engine can follow); no valid output was produced"
                                    .into(),
                            ));
                        }
                    };
                    return Ok(self.end(index, chunk.text, Vec::new(), (reason, chunk.matched), finished.stats));
                }
                Event::Failed(failure) => {
                    self.cancel_all();
                    return Err(failure.into());
                }
            }
        }
    }

    /// An event's tokens as text, a piece per run of tokens from one source (so that a stream
    /// can mark what accepted drafts wrote), into `pending`; a stop string ends the choice. The
    /// marks are close, not exact: text the stream holds back (a possible start of a stop
    /// string, part of a character) goes out with the next piece, under that piece's source.
    fn take_tokens(&mut self, index: usize, tokens: &[u32], sources: &[TokenSource], logprobs: Vec<TokenLogprob>) {
        for (run, source) in runs(sources, tokens.len()) {
            let choice = &mut self.choices[index];
            let chunk = choice.text.push(&tokens[run.clone()]);
            let mut logprobs = logprobs.get(run.clone()).map(<[_]>::to_vec).unwrap_or_default();
            let Some(used) = chunk.stopped_after else {
                choice.completion_tokens += run.len();
                self.pending.push_back(Progress::Text { index, text: chunk.text, logprobs, source });
                continue;
            };
            // A stop string matched: the worker may stop generating this choice.
            choice.cancel.store(true, Ordering::Relaxed);
            choice.completion_tokens += used;
            logprobs.truncate(used);
            let end = (ApiFinish::Stop, chunk.matched);
            let end = self.end(index, chunk.text, logprobs, end, SequenceStats::default());
            self.pending.push_back(end);
            return;
        }
    }

    fn end(
        &mut self,
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
        (reason, stop_sequence): (ApiFinish, Option<String>),
        stats: SequenceStats,
    ) -> Progress {
        let choice = &mut self.choices[index];
        choice.finished = true;
        self.done += 1;
        Progress::Finished(ChoiceEnd {
            index,
            text,
            logprobs,
            reason,
            stop_sequence,
            completion_tokens: choice.completion_tokens,
            stats,
        })
    }

    fn cancel_all(&self) {
        for choice in &self.choices {
            choice.cancel.store(true, Ordering::Relaxed);
        }
    }

    pub fn usage(&self) -> Usage {
        let completion_tokens = self.choices.iter().map(|c| c.completion_tokens).sum();
        // Each prompt is counted once, as in `prompt_tokens`: by its likeliest-cached choice.
        let cached_tokens =
            self.choices.chunks(self.n).map(|c| c.iter().map(|c| c.cached_prompt_tokens).max().unwrap_or(0)).sum();
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// The outcome of one choice of a whole (non-streamed) response.
#[derive(Debug, Default, Clone)]
pub struct Choice {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    /// The prompt's, when asked for (`echo` with `logprobs`).
    pub prompt_logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<ApiFinish>,
    /// The stop string that ended it, if one did.
    pub stop_sequence: Option<String>,
    pub completion_tokens: usize,
    /// Recycling counters (zero for a choice a stop string ended: the worker drops it).
    pub stats: SequenceStats,
}

/// Waits for every choice to finish.
pub async fn collect(mut generation: Generation) -> Result<(Vec<Choice>, Usage), ApiError> {
    let mut choices = vec![Choice::default(); generation.choice_count()];
    while !generation.is_done() {
        match generation.next().await? {
            Progress::Text { index, text, logprobs, .. } => {
                choices[index].text.push_str(&text);
                choices[index].logprobs.extend(logprobs);
            }
            Progress::Finished(end) => {
                let choice = &mut choices[end.index];
                choice.text.push_str(&end.text);
                choice.logprobs.extend(end.logprobs);
                choice.finish_reason = Some(end.reason);
                choice.stop_sequence = end.stop_sequence;
                choice.completion_tokens = end.completion_tokens;
                choice.stats = end.stats;
            }
        }
    }
    for (index, choice) in choices.iter_mut().enumerate() {
        choice.prompt_logprobs = generation.prompt_logprobs(index).to_vec();
    }
    let usage = generation.usage();
    Ok((choices, usage))
}

/// Recycling statistics of a response (an extension field, `recycle`).
pub fn recycle_stats(plan: &Plan, choices: &[Choice]) -> RecycleStats {
    let tokens: usize = choices.iter().map(|c| c.completion_tokens).sum();
    let forwards: usize = choices.iter().map(|c| c.stats.full_forwards).sum();
    RecycleStats {
        mode: plan.mode().as_str().to_string(),
        full_forwards: forwards,
        tokens_per_full_forward: if forwards > 0 { tokens as f64 / forwards as f64 } else { 0.0 },
        accepted: choices.iter().map(|c| c.stats.accepted).sum(),
        rejected: choices.iter().map(|c| c.stats.rejected).sum(),
        skipped_drafts: choices.iter().map(|c| c.stats.skipped_drafts).sum(),
        accepted_from_text: choices.iter().map(|c| c.stats.text_accepted).sum(),
    }
}

/// The runs of equal sources among `len` tokens (all the model's when the sources are missing).
fn runs(sources: &[TokenSource], len: usize) -> Vec<(Range<usize>, TokenSource)> {
    if sources.len() != len {
        return vec![(0..len, TokenSource::Model)];
    }
    let mut runs: Vec<(Range<usize>, TokenSource)> = Vec::new();
    for (i, &source) in sources.iter().enumerate() {
        match runs.last_mut() {
            Some((run, last)) if *last == source => run.end = i + 1,
            _ => runs.push((i..i + 1, source)),
        }
    }
    runs
}

/// How one endpoint shapes its stream chunks.
pub trait ChunkShape: Send + 'static {
    type Chunk: Serialize + Send;
    /// A chunk sent before any text for a choice (chat: the role; completions: the echoed
    /// prompt, with its log-probabilities when asked for).
    fn opening(&mut self, index: usize, prompt_logprobs: &[TokenLogprob]) -> Option<Self::Chunk>;
    /// The chunks for new text (none while a shape holds text back), and where its tokens came from.
    fn text(&mut self, index: usize, text: &str, logprobs: &[TokenLogprob], source: TokenSource) -> Vec<Self::Chunk>;
    /// The last chunks of a choice, ending with its finish reason.
    fn finish(&mut self, index: usize, reason: ApiFinish) -> Vec<Self::Chunk>;
    /// The usage chunk, with how recycling went (this server's extension).
    fn usage(&self, usage: Usage, recycle: RecycleStats) -> Self::Chunk;
}

/// An SSE response: chunks as events arrive, a usage chunk when asked, then `[DONE]`. A failure
/// (shutdown, engine error) ends the stream with an error event, never a normal finish.
/// Dropping it (the client went away) drops the event receiver, which cancels the sequences.
pub fn sse(mut shape: impl ChunkShape, mut generation: Generation, plan: Plan) -> Response {
    let stream = async_stream::stream! {
        let mut opened = vec![false; generation.choice_count()];
        // The finished choices' counters, for the usage chunk.
        let mut ended = Vec::new();
        let mut failed = false;
        while !generation.is_done() {
            let progress = match generation.next().await {
                Ok(progress) => progress,
                Err(error) => {
                    yield json_event(&error.body());
                    failed = true;
                    break;
                }
            };
            let index = match &progress {
                Progress::Text { index, .. } => *index,
                Progress::Finished(end) => end.index,
            };
            if !opened[index] {
                opened[index] = true;
                if let Some(chunk) = shape.opening(index, generation.prompt_logprobs(index)) {
                    yield json_event(&chunk);
                }
            }
            match progress {
                Progress::Text { index, text, logprobs, source } => {
                    if !text.is_empty() || !logprobs.is_empty() {
                        for chunk in shape.text(index, &text, &logprobs, source) {
                            yield json_event(&chunk);
                        }
                    }
                }
                Progress::Finished(end) => {
                    if !end.text.is_empty() || !end.logprobs.is_empty() {
                        for chunk in shape.text(end.index, &end.text, &end.logprobs, TokenSource::Model) {
                            yield json_event(&chunk);
                        }
                    }
                    for chunk in shape.finish(end.index, end.reason) {
                        yield json_event(&chunk);
                    }
                    ended.push(end.counters());
                }
            }
        }
        // Counted when the stream ends, not when it opens: a stream that fails is no success,
        // though its status line said 200. A failed stream ends at its error event, with no
        // `[DONE]` that a client could take for a complete answer.
        if failed {
            metrics::counter!("recyclegpt_requests_total", "status" => "stream_error").increment(1);
        } else {
            if plan.include_usage() {
                yield json_event(&shape.usage(generation.usage(), recycle_stats(&plan, &ended)));
            }
            yield Ok::<_, Infallible>(SseEvent::default().data("[DONE]"));
            metrics::counter!("recyclegpt_requests_total", "status" => "200").increment(1);
        }
    };
    sse_response(stream)
}

fn json_event(value: &impl Serialize) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(serde_json::to_string(value).unwrap_or_default()))
}

fn sse_response(stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

pub fn shared(state: &Arc<AppState>) -> (String, u64) {
    (state.limits.served_model_name.clone(), crate::now_seconds())
}

/// A whole (non-streamed) response.
pub fn ok_json(body: &impl Serialize) -> Response {
    metrics::counter!("recyclegpt_requests_total", "status" => "200").increment(1);
    axum::Json(body).into_response()
}
