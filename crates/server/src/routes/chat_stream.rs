//! The chunks of a streamed chat completion. With tools, text that may be a tool call is held
//! back until the choice ends, then sent as tool-call deltas in OpenAI's shape (the call's
//! index, id and name first, then its arguments in fragments), so no argument text is lost and
//! no half-written call leaks into `content`; text that cannot be a call streams as it comes.
use crate::generation::ChunkShape;
use crate::openai::{ToolCall, Usage};
use crate::responses::{
    ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatLogprobs, ChatTokenLogprob, FinishReason, FunctionDelta,
    ToolCallDelta, TopLogprob,
};
use crate::tools::{argument_pieces, CallHolder, ToolPlan};
use recyclegpt_engine::TokenLogprob;
use recyclegpt_model::TextTokenizer;
use std::sync::Arc;

/// OpenAI's chat `logprobs` object.
pub(super) fn logprobs_of(tokenizer: &TextTokenizer, logprobs: &[TokenLogprob]) -> ChatLogprobs {
    let top = |token: u32, logprob: f32| {
        let token = tokenizer.token_text(token);
        TopLogprob { bytes: token.as_bytes().to_vec(), token, logprob }
    };
    let content = logprobs
        .iter()
        .map(|l| {
            let first = top(l.token, l.logprob);
            ChatTokenLogprob {
                token: first.token,
                logprob: first.logprob,
                bytes: first.bytes,
                top_logprobs: l.top.iter().map(|(t, lp)| top(*t, *lp)).collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}

/// A choice's text held back while it may be a tool call, with its log-probabilities.
#[derive(Default)]
struct Held {
    text: CallHolder,
    logprobs: Vec<TokenLogprob>,
}

pub(super) struct ChatChunks {
    pub tokenizer: Arc<TextTokenizer>,
    pub logprobs: bool,
    pub id: String,
    pub model: String,
    pub created: u64,
    pub tools: Option<ToolPlan>,
    pub next_call: Box<dyn FnMut() -> String + Send>,
    held: Vec<Held>,
}

impl ChatChunks {
    pub fn new(
        tokenizer: Arc<TextTokenizer>,
        logprobs: bool,
        (id, model, created): (String, String, u64),
        tools: Option<ToolPlan>,
        next_call: Box<dyn FnMut() -> String + Send>,
    ) -> Self {
        Self { tokenizer, logprobs, id, model, created, tools, next_call, held: Vec::new() }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn one(
        &self,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<FinishReason>,
    ) -> ChatCompletionChunk {
        self.chunk(vec![ChatChunkChoice { index, delta, logprobs, finish_reason: finish }], None)
    }

    fn content(&self, index: usize, text: String, logprobs: &[TokenLogprob]) -> ChatCompletionChunk {
        let delta = ChatDelta { content: Some(text), ..ChatDelta::default() };
        let logprobs = self.logprobs.then(|| logprobs_of(&self.tokenizer, logprobs));
        self.one(index, delta, logprobs, None)
    }

    fn held(&mut self, index: usize) -> &mut Held {
        if self.held.len() <= index {
            self.held.resize_with(index + 1, Held::default);
        }
        &mut self.held[index]
    }

    /// The deltas of `calls`: for each, its id and name, then its arguments in fragments.
    fn call_chunks(&self, index: usize, calls: &[ToolCall]) -> Vec<ChatCompletionChunk> {
        let mut chunks = Vec::new();
        for (k, call) in calls.iter().enumerate() {
            let opening = ToolCallDelta {
                index: k,
                id: Some(call.id.clone()),
                kind: Some("function"),
                function: FunctionDelta { name: Some(call.function.name.clone()), arguments: Some(String::new()) },
            };
            chunks.push(self.one(
                index,
                ChatDelta { tool_calls: Some(vec![opening]), ..ChatDelta::default() },
                None,
                None,
            ));
            for piece in argument_pieces(&call.function.arguments) {
                let delta = ToolCallDelta {
                    index: k,
                    id: None,
                    kind: None,
                    function: FunctionDelta { name: None, arguments: Some(piece) },
                };
                chunks.push(self.one(
                    index,
                    ChatDelta { tool_calls: Some(vec![delta]), ..ChatDelta::default() },
                    None,
                    None,
                ));
            }
        }
        chunks
    }
}

impl ChunkShape for ChatChunks {
    type Chunk = ChatCompletionChunk;

    fn opening(&mut self, index: usize, _prompt_logprobs: &[TokenLogprob]) -> Option<ChatCompletionChunk> {
        let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()), ..ChatDelta::default() };
        Some(self.one(index, delta, None, None))
    }

    fn text(&mut self, index: usize, text: &str, logprobs: &[TokenLogprob]) -> Vec<ChatCompletionChunk> {
        if self.tools.is_none() {
            return vec![self.content(index, text.to_string(), logprobs)];
        }
        let held = self.held(index);
        held.logprobs.extend_from_slice(logprobs);
        let send = held.text.push(text);
        if send.is_empty() {
            return Vec::new();
        }
        // The log-probabilities go with the first text sent after them.
        let logprobs = std::mem::take(&mut held.logprobs);
        vec![self.content(index, send, &logprobs)]
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<ChatCompletionChunk> {
        let mut chunks = Vec::new();
        let mut reason = reason;
        if self.tools.is_some() {
            let held = std::mem::take(self.held(index));
            let mut holder = held.text;
            let text = holder.take();
            let (content, calls) = match &self.tools {
                Some(tools) if !text.is_empty() => tools.parse(&text, &mut self.next_call),
                _ => (None, Vec::new()),
            };
            if calls.is_empty() {
                if !text.is_empty() {
                    chunks.push(self.content(index, text, &held.logprobs));
                }
            } else {
                if let Some(content) = content {
                    chunks.push(self.content(index, content, &held.logprobs));
                }
                chunks.extend(self.call_chunks(index, &calls));
                reason = FinishReason::ToolCalls;
            }
        }
        chunks.push(self.one(index, ChatDelta::default(), None, Some(reason)));
        chunks
    }

    fn usage(&self, usage: Usage) -> ChatCompletionChunk {
        self.chunk(Vec::new(), Some(usage))
    }
}
