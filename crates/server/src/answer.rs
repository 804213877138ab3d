//! One answer's text, split the way clients read it: the model's reasoning apart from the
//! answer (`<think>` … `</think>`, as Qwen3 and DeepSeek-R1 distills write it), and, with tools,
//! calls apart from text. The three dialects (chat, Responses, Anthropic) and both ways of
//! answering share this: a whole answer is one `finish`, a stream is `push`es then `finish`, so
//! a stream's parts always add up to the whole answer's.
use crate::error::ApiError;
use crate::openai::ToolCall;
use crate::tools::{CallHolder, ToolPlan};
use serde_json::{Map, Value};
use std::sync::Arc;

pub const OPEN: &str = "<think>";
pub const CLOSE: &str = "</think>";

/// How a request's answer begins, as its prompt leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    /// Reasoning is not split out (the model does not mark it, the server is told not to, or a
    /// grammar shapes the answer from its first token): all is answer.
    Off,
    /// The answer may open with `<think>`.
    MayOpen,
    /// The prompt ends with `<think>` (a template that opens the reasoning itself): the answer
    /// begins inside it.
    Open,
}

/// Fresh call ids (`call_…`), shared by every choice of a request.
pub type CallIds = Arc<dyn Fn() -> String + Send + Sync>;

/// How a request's answers are split: one splitter per answer (per choice).
#[derive(Clone)]
pub struct Answers {
    thinking: Thinking,
    tools: Option<ToolPlan>,
    call_ids: CallIds,
}

impl Answers {
    /// `prompt`: how the prompt leaves the answer; `constrained`: a grammar shapes the answer
    /// from its first token, which leaves no room for reasoning.
    pub fn new(prompt: Thinking, constrained: bool, tools: Option<ToolPlan>, call_ids: CallIds) -> Self {
        let thinking = if constrained { Thinking::Off } else { prompt };
        Self { thinking, tools, call_ids }
    }

    pub fn splitter(&self) -> AnswerSplitter {
        AnswerSplitter::new(self.thinking, self.tools.clone(), self.call_ids.clone())
    }
}

/// What a piece of the answer gives.
#[derive(Debug, Default)]
pub struct Parts {
    pub reasoning: String,
    pub text: String,
    /// Only at the end: tool calls parsed from the text held back.
    pub calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: it may still open with `<think>`.
    Start,
    /// Inside the reasoning; `fresh` until its first non-blank character (blanks after the tag
    /// are dropped).
    Reasoning {
        fresh: bool,
    },
    /// Just past `</think>`: blanks are dropped until the answer begins.
    Closed,
    Answer,
}

pub struct AnswerSplitter {
    state: State,
    /// Text not yet placed (it may be the start of a tag).
    pending: String,
    tools: Option<ToolPlan>,
    holder: CallHolder,
    call_ids: CallIds,
}

impl AnswerSplitter {
    pub fn new(thinking: Thinking, tools: Option<ToolPlan>, call_ids: CallIds) -> Self {
        let state = match thinking {
            Thinking::Off => State::Answer,
            Thinking::MayOpen => State::Start,
            Thinking::Open => State::Reasoning { fresh: true },
        };
        Self { state, pending: String::new(), tools, holder: CallHolder::default(), call_ids }
    }

    /// New text; what may be sent now (text that may be a tool call is held back).
    pub fn push(&mut self, text: &str) -> Parts {
        let (reasoning, text) = self.split_reasoning(text, false);
        let text = if self.tools.is_some() { self.holder.push(&text) } else { text };
        Parts { reasoning, text, calls: Vec::new() }
    }

    /// The last text of the answer: everything still held, with the tool calls parsed.
    pub fn finish(&mut self, text: &str) -> Parts {
        let (reasoning, mut text) = self.split_reasoning(text, true);
        let mut calls = Vec::new();
        if let Some(tools) = &self.tools {
            text = self.holder.push(&text);
            let held = self.holder.take();
            let ids = self.call_ids.clone();
            let (content, parsed) = tools.parse(&held, &mut || ids());
            if parsed.is_empty() {
                text.push_str(&held);
            } else {
                calls = parsed;
                text.push_str(&content.unwrap_or_default());
            }
        }
        Parts { reasoning, text, calls }
    }

    /// `text` as (reasoning, answer); at the `end`, nothing stays pending.
    fn split_reasoning(&mut self, text: &str, end: bool) -> (String, String) {
        if self.state == State::Answer {
            return (String::new(), text.to_string());
        }
        self.pending.push_str(text);
        let (mut reasoning, mut answer) = (String::new(), String::new());
        loop {
            match self.state {
                State::Start => {
                    let blank = self.pending.len() - self.pending.trim_start().len();
                    if self.pending[blank..].starts_with(OPEN) {
                        self.pending.drain(..blank + OPEN.len());
                        self.state = State::Reasoning { fresh: true };
                        continue;
                    }
                    if !end && OPEN.starts_with(&self.pending[blank..]) {
                        break;
                    }
                    self.state = State::Answer;
                }
                State::Reasoning { fresh: true } => {
                    let blank = self.pending.len() - self.pending.trim_start().len();
                    self.pending.drain(..blank);
                    if self.pending.is_empty() && !end {
                        break;
                    }
                    self.state = State::Reasoning { fresh: false };
                }
                State::Reasoning { fresh: false } => {
                    if let Some(at) = self.pending.find(CLOSE) {
                        reasoning.push_str(&self.pending[..at]);
                        self.pending.drain(..at + CLOSE.len());
                        self.state = State::Closed;
                        continue;
                    }
                    // The tag is ASCII, so a suffix that begins it starts on a character boundary.
                    let keep = match end {
                        true => 0,
                        false => (1..CLOSE.len()).rev().find(|&k| self.pending.ends_with(&CLOSE[..k])).unwrap_or(0),
                    };
                    reasoning.extend(self.pending.drain(..self.pending.len() - keep));
                    break;
                }
                State::Closed => {
                    let blank = self.pending.len() - self.pending.trim_start().len();
                    self.pending.drain(..blank);
                    if self.pending.is_empty() && !end {
                        break;
                    }
                    self.state = State::Answer;
                }
                State::Answer => {
                    answer.push_str(&std::mem::take(&mut self.pending));
                    break;
                }
            }
        }
        (reasoning, answer)
    }
}

/// OpenAI's `reasoning_effort` values.
const EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];

/// The chat template's extra variables: the request's `chat_template_kwargs` (vLLM's field),
/// and a reasoning effort as templates read it (`reasoning_effort`, and Qwen3's
/// `enable_thinking`, off for `none` and `minimal`) unless the kwargs set those themselves.
pub fn template_args(
    kwargs: Option<&Map<String, Value>>,
    effort: Option<(&str, &str)>,
) -> Result<Map<String, Value>, ApiError> {
    let mut args = kwargs.cloned().unwrap_or_default();
    for reserved in ["messages", "add_generation_prompt", "bos_token", "eos_token"] {
        if args.contains_key(reserved) {
            return Err(ApiError::invalid(
                "chat_template_kwargs",
                format!("`chat_template_kwargs` may not set `{reserved}`: the server sets it"),
            ));
        }
    }
    if let Some((param, effort)) = effort {
        if !EFFORTS.contains(&effort) {
            return Err(ApiError::invalid(param, format!("`{param}` must be one of {}", EFFORTS.join(", "))));
        }
        args.entry("reasoning_effort").or_insert_with(|| Value::from(effort));
        args.entry("enable_thinking").or_insert_with(|| Value::from(!matches!(effort, "none" | "minimal")));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splitter(thinking: Thinking) -> AnswerSplitter {
        AnswerSplitter::new(thinking, None, Arc::new(|| "call_1".to_string()))
    }

    /// The answer pushed in pieces of `size` bytes (on character boundaries), then ended.
    fn run(thinking: Thinking, answer: &str, size: usize) -> (String, String) {
        let mut splitter = splitter(thinking);
        let (mut reasoning, mut text) = (String::new(), String::new());
        let mut rest = answer;
        while !rest.is_empty() {
            let mut cut = size.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            let parts = splitter.push(&rest[..cut]);
            reasoning.push_str(&parts.reasoning);
            text.push_str(&parts.text);
            rest = &rest[cut..];
        }
        let parts = splitter.finish("");
        (reasoning + &parts.reasoning, text + &parts.text)
    }

    #[test]
    fn reasoning_and_answer_part_the_same_in_any_pieces() {
        let cases = [
            (Thinking::MayOpen, "<think>\nPlan: add.\n</think>\n\n2 + 2 = 4 é", "Plan: add.\n", "2 + 2 = 4 é"),
            (Thinking::MayOpen, "  <think>x</think>y", "x", "y"),
            (Thinking::MayOpen, "No thinking <think> here", "", "No thinking <think> here"),
            (Thinking::MayOpen, "<thin", "", "<thin"),
            (Thinking::Open, "\nPlan.</think>Answer</think>", "Plan.", "Answer</think>"),
            // Out of tokens mid-thought: all of it is reasoning, the answer empty.
            (Thinking::Open, "still thinking </thi", "still thinking </thi", ""),
            (Thinking::Off, "<think>kept</think>", "", "<think>kept</think>"),
        ];
        for (thinking, answer, reasoning, text) in cases {
            for size in [1, 2, 3, 5, 100] {
                assert_eq!(run(thinking, answer, size), (reasoning.into(), text.into()), "{answer:?} in {size}s");
            }
        }
    }

    #[test]
    fn efforts_reach_the_template_unless_the_kwargs_say_otherwise() {
        let args = template_args(None, Some(("reasoning_effort", "minimal"))).unwrap();
        assert_eq!(args["enable_thinking"], false);
        assert_eq!(args["reasoning_effort"], "minimal");
        let kwargs = serde_json::json!({"enable_thinking": true}).as_object().cloned();
        let args = template_args(kwargs.as_ref(), Some(("reasoning_effort", "none"))).unwrap();
        assert_eq!(args["enable_thinking"], true);
        assert!(template_args(None, Some(("reasoning_effort", "max"))).is_err());
        let reserved = serde_json::json!({"messages": []}).as_object().cloned();
        assert!(template_args(reserved.as_ref(), None).is_err());
    }
}
