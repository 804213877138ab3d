//! The chunks of a streamed chat completion. Reasoning the model marks goes out as
//! `delta.reasoning_content`, apart from `delta.content`. With tools, text that may be a tool call is held
//! back until the choice ends, then sent as tool-call deltas in OpenAI's shape (the call's
//! index, id and name first, then its arguments in fragments), so no argument text is lost and
//! no half-written call leaks into `content`; text that cannot be a call streams as it comes.
use crate::answer::{AnswerSplitter, Answers, Parts};
use crate::generation::ChunkShape;
use crate::openai::{ToolCall, Usage};
use crate::responses::{
    ChatChunkChoice, ChatCompletionChunk, ChatDelta, ChatLogprobs, ChatTokenLogprob, FinishReason, FunctionDelta,
    RecycleStats, ToolCallDelta, TopLogprob,
};
use crate::tools::argument_pieces;
use recyclegpt_engine::{TokenLogprob, TokenSource};
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

/// A choice's answer being split, with the log-probabilities of text not yet sent.
struct Held {
    splitter: AnswerSplitter,
    logprobs: Vec<TokenLogprob>,
}

pub(super) struct ChatChunks {
    tokenizer: Arc<TextTokenizer>,
    logprobs: bool,
    id: String,
    model: String,
    created: u64,
    answers: Answers,
    held: Vec<Held>,
}

impl ChatChunks {
    pub fn new(
        tokenizer: Arc<TextTokenizer>,
        logprobs: bool,
        (id, model, created): (String, String, u64),
        answers: Answers,
    ) -> Self {
        Self { tokenizer, logprobs, id, model, created, answers, held: Vec::new() }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            recycle: None,
        }
    }

    fn one(
        &self,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<FinishReason>,
    ) -> ChatCompletionChunk {
        self.chunk(vec![ChatChunkChoice { index, delta, logprobs, finish_reason: finish, draft: None }], None)
    }

    fn held(&mut self, index: usize) -> &mut Held {
        while self.held.len() <= index {
            self.held.push(Held { splitter: self.answers.splitter(), logprobs: Vec::new() });
        }
        &mut self.held[index]
    }

    /// The reasoning and text of `parts` as deltas, marked with where their tokens came from;
    /// the log-probabilities held go with the first of them.
    fn part_chunks(&mut self, index: usize, parts: &Parts, source: TokenSource) -> Vec<ChatCompletionChunk> {
        let pieces = [
            ChatDelta { reasoning_content: Some(parts.reasoning.clone()), ..ChatDelta::default() },
            ChatDelta { content: Some(parts.text.clone()), ..ChatDelta::default() },
        ];
        let mut chunks = Vec::new();
        for delta in pieces {
            if delta.reasoning_content.as_ref().or(delta.content.as_ref()).is_some_and(|t| t.is_empty()) {
                continue;
            }
            let logprobs = std::mem::take(&mut self.held(index).logprobs);
            let logprobs = self.logprobs.then(|| logprobs_of(&self.tokenizer, &logprobs));
            let mut chunk = self.one(index, delta, logprobs, None);
            chunk.choices[0].draft = match source {
                TokenSource::Model => None,
                TokenSource::Module => Some("module"),
                TokenSource::Lookup => Some("lookup"),
            };
            chunks.push(chunk);
        }
        chunks
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

    fn text(
        &mut self,
        index: usize,
        text: &str,
        logprobs: &[TokenLogprob],
        source: TokenSource,
    ) -> Vec<ChatCompletionChunk> {
        let held = self.held(index);
        held.logprobs.extend_from_slice(logprobs);
        let parts = held.splitter.push(text);
        self.part_chunks(index, &parts, source)
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<ChatCompletionChunk> {
        let parts = self.held(index).splitter.finish("");
        let mut chunks = self.part_chunks(index, &parts, TokenSource::Model);
        // Log-probabilities of tokens with no text of their own (the end-of-sequence token)
        // still go out, with an empty delta, so the stream has as many as the whole answer.
        let left = std::mem::take(&mut self.held(index).logprobs);
        if self.logprobs && !left.is_empty() {
            let delta = ChatDelta { content: Some(String::new()), ..ChatDelta::default() };
            chunks.push(self.one(index, delta, Some(logprobs_of(&self.tokenizer, &left)), None));
        }
        chunks.extend(self.call_chunks(index, &parts.calls));
        let reason = if parts.calls.is_empty() { reason } else { FinishReason::ToolCalls };
        chunks.push(self.one(index, ChatDelta::default(), None, Some(reason)));
        chunks
    }

    fn usage(&self, usage: Usage, recycle: RecycleStats) -> ChatCompletionChunk {
        ChatCompletionChunk { recycle: Some(recycle), ..self.chunk(Vec::new(), Some(usage)) }
    }
}
