//! Tool calling on chat completions. The tools are described to the model in its system
//! message, and calls are written in the Hermes form, `<tool_call>{"name": …, "arguments": …}
//! </tool_call>`, which chat-tuned models widely know; earlier calls and their results are
//! rendered into the conversation the same way (llama.cpp's generic approach, for templates
//! without tool syntax). `tool_choice: "required"` or a named function constrains generation
//! with a grammar, so the output is always a valid call; `auto` parses what the model wrote.
use crate::chat_template::ChatMessage;
use crate::error::ApiError;
use crate::openai::{FunctionCall, Tool, ToolCall, ToolChoice};
use recyclegpt_grammar::GrammarSpec;
use serde_json::{json, Value};

/// The request's tools and what it asks of them.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    tools: Vec<Tool>,
    choice: Choice,
    parallel: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Choice {
    Auto,
    Required,
    Named(String),
}

impl ToolPlan {
    /// Validates `tools` and `tool_choice`; `None` when no tool may be called.
    pub fn new(
        tools: Option<&[Tool]>,
        choice: Option<&ToolChoice>,
        parallel: Option<bool>,
    ) -> Result<Option<Self>, ApiError> {
        let tools = tools.unwrap_or_default();
        for (i, tool) in tools.iter().enumerate() {
            let name = &tool.function.name;
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if tool.kind != "function" || !valid {
                return Err(ApiError::invalid(
                    "tools",
                    format!(
                        "tools[{i}] must be a `function` named with 1 to 64 letters, digits, underscores or dashes"
                    ),
                ));
            }
            if tools[..i].iter().any(|t| t.function.name == *name) {
                return Err(ApiError::invalid("tools", format!("two tools are named `{name}`")));
            }
            if tool.function.parameters.as_ref().is_some_and(|p| !p.is_object()) {
                return Err(ApiError::invalid(
                    "tools",
                    format!("tools[{i}].function.parameters must be a JSON schema object"),
                ));
            }
        }
        let choice = match choice {
            None => Choice::Auto,
            Some(ToolChoice::Mode(mode)) => match mode.as_str() {
                "none" => return Ok(None),
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("`tool_choice` must be none, auto, required or a function, got `{other}`"),
                    ))
                }
            },
            Some(ToolChoice::Function { function, .. }) => {
                if !tools.iter().any(|t| t.function.name == function.name) {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("`tool_choice` names `{}`, which is not among the tools", function.name),
                    ));
                }
                Choice::Named(function.name.clone())
            }
        };
        if tools.is_empty() {
            return match choice {
                Choice::Auto => Ok(None),
                _ => Err(ApiError::invalid("tool_choice", "`tool_choice` needs `tools`")),
            };
        }
        Ok(Some(Self { tools: tools.to_vec(), choice, parallel: parallel.unwrap_or(true) }))
    }

    /// The system message text that describes the tools and how to call them.
    pub fn instructions(&self) -> String {
        let described: Vec<String> =
            self.tools.iter().map(|t| json!({"type": "function", "function": t.function}).to_string()).collect();
        format!(
            "You can call functions to help answer. The functions, with JSON schemas of their arguments:\n\
             <tools>\n{}\n</tools>\n\
             To call a function, answer with a <tool_call></tool_call> block holding a JSON object with the \
             function's name and arguments, one block per call:\n\
             <tool_call>\n{{\"name\": \"<function name>\", \"arguments\": {{<arguments>}}}}\n</tool_call>",
            described.join("\n")
        )
    }

    /// The grammar that makes every answer a valid call, for `required` or a named function.
    pub fn grammar(&self) -> Option<GrammarSpec> {
        match &self.choice {
            Choice::Auto => None,
            Choice::Required => Some(self.calls_grammar(self.tools.iter().collect())),
            Choice::Named(name) => {
                Some(self.calls_grammar(self.tools.iter().filter(|t| t.function.name == *name).collect()))
            }
        }
    }

    /// The grammar of a call to any of the tools: under `auto` it constrains nothing, but
    /// compiling it checks the tools' parameters as a forced call would.
    pub fn any_call_grammar(&self) -> GrammarSpec {
        self.calls_grammar(self.tools.iter().collect())
    }

    fn calls_grammar(&self, allowed: Vec<&Tool>) -> GrammarSpec {
        // Each tool's parameters become a definition of the combined schema, so that their own
        // `$ref`s (to `#/$defs/…`, or `#` itself) resolve within them there.
        let mut definitions = serde_json::Map::new();
        let calls: Vec<Value> = allowed
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut arguments = t.function.parameters.clone().unwrap_or_else(|| json!({"type": "object"}));
                rebase_refs(&mut arguments, &format!("#/$defs/tool{i}"));
                definitions.insert(format!("tool{i}"), arguments);
                json!({"type": "object",
                       "properties": {"name": {"const": t.function.name}, "arguments": {"$ref": format!("#/$defs/tool{i}")}},
                       "required": ["name", "arguments"], "additionalProperties": false})
            })
            .collect();
        let repeated = self.parallel && self.choice == Choice::Required;
        GrammarSpec::ToolCalls { schema: json!({"anyOf": calls, "$defs": definitions}), repeated }
    }

    /// The calls in `text`, and the text around them (`None` when there is none).
    pub fn parse(&self, text: &str, ids: &mut impl FnMut() -> String) -> (Option<String>, Vec<ToolCall>) {
        let mut calls = Vec::new();
        let mut rest = String::new();
        let mut at = 0;
        while let Some(open) = text[at..].find("<tool_call>").map(|i| at + i) {
            rest.push_str(&text[at..open]);
            let body_start = open + "<tool_call>".len();
            let Some(close) = text[body_start..].find("</tool_call>") else {
                // A call cut off by `max_tokens`: a complete one may still be in the JSON.
                match self.call(&text[body_start..], ids) {
                    Some(call) => calls.push(call),
                    None if calls.is_empty() => rest.push_str(&text[open..]),
                    None => {}
                }
                at = text.len();
                break;
            };
            let next = body_start + close + "</tool_call>".len();
            match self.call(&text[body_start..body_start + close], ids) {
                Some(call) => calls.push(call),
                None => rest.push_str(&text[open..next]),
            }
            at = next;
        }
        rest.push_str(&text[at..]);
        if calls.is_empty() {
            // Plain JSON: an object (or a list of them) naming a tool, perhaps in a code fence.
            let trimmed = rest.trim().trim_start_matches("```json").trim_start_matches("```").trim_end_matches("```");
            match serde_json::from_str::<Value>(trimmed.trim()) {
                Ok(Value::Array(items)) => {
                    let parsed: Vec<_> = items.iter().filter_map(|v| self.call_of(v, ids)).collect();
                    if !parsed.is_empty() && parsed.len() == items.len() {
                        return (None, parsed);
                    }
                }
                Ok(value) => {
                    if let Some(call) = self.call_of(&value, ids) {
                        return (None, vec![call]);
                    }
                }
                Err(_) => {}
            }
        }
        let rest = rest.trim();
        ((!rest.is_empty()).then(|| rest.to_string()), calls)
    }

    fn call(&self, body: &str, ids: &mut impl FnMut() -> String) -> Option<ToolCall> {
        self.call_of(&serde_json::from_str(body.trim()).ok()?, ids)
    }

    /// `{"name": …, "arguments": {…}}` (or `parameters`) naming one of the tools.
    fn call_of(&self, value: &Value, ids: &mut impl FnMut() -> String) -> Option<ToolCall> {
        let name = value.get("name")?.as_str()?;
        self.tools.iter().find(|t| t.function.name == name)?;
        let arguments = value.get("arguments").or_else(|| value.get("parameters")).cloned().unwrap_or(json!({}));
        let arguments = match arguments {
            Value::String(text) => text,
            other => other.to_string(),
        };
        Some(ToolCall {
            id: ids(),
            kind: "function".into(),
            function: FunctionCall { name: name.to_string(), arguments },
        })
    }
}

/// Moves a schema's local references (`#…`) under `base`, where the schema now lives.
fn rebase_refs(schema: &mut Value, base: &str) {
    // An explicit stack: the schema is the client's, and its nesting is not ours to recurse on.
    let mut stack = vec![schema];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(object) => {
                for (key, child) in object.iter_mut() {
                    match child {
                        Value::String(target) if key == "$ref" && target.starts_with('#') => {
                            *target = format!("{base}{}", &target[1..]);
                        }
                        _ => stack.push(child),
                    }
                }
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
}

/// An earlier assistant turn's calls, as the model wrote them.
pub fn render_calls(calls: &[ToolCall]) -> String {
    calls
        .iter()
        .map(|c| {
            let arguments: Value =
                serde_json::from_str(&c.function.arguments).unwrap_or(Value::String(c.function.arguments.clone()));
            format!("<tool_call>\n{}\n</tool_call>", json!({"name": c.function.name, "arguments": arguments}))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A tool's result, as a user turn the model reads.
pub fn render_result(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

/// Puts the tool instructions into the system message (a new first one if there is none).
pub fn add_instructions(messages: &mut Vec<ChatMessage>, instructions: String) {
    match messages.first_mut().filter(|m| m.role == "system") {
        Some(system) => system.content = format!("{}\n\n{instructions}", system.content),
        None => messages.insert(0, ChatMessage { role: "system".into(), content: instructions }),
    }
}

const CALL_TAG: &str = "<tool_call>";

/// A call's arguments in the pieces a stream sends them in (as OpenAI's arrive: a few dozen
/// characters each).
pub fn argument_pieces(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    chars.chunks(32).map(|piece| piece.iter().collect()).collect()
}

/// Whether text that starts so may still become a tool call.
pub fn may_be_call(text: &str) -> bool {
    let text = text.trim_start();
    text.is_empty()
        || CALL_TAG.starts_with(text)
        || text.starts_with(CALL_TAG)
        || text.starts_with('{')
        || text.starts_with('[')
        || text.starts_with("```")
}

/// A streamed answer's text, held back where it may be a tool call: from the start while it may
/// still become one (a `<tool_call>` or plain JSON), and later from a `<tool_call>`, or what may
/// begin one, on. The rest streams as it comes.
#[derive(Default)]
pub struct CallHolder {
    held: String,
    /// The answer has begun as text: only a later `<tool_call>` is held.
    prose: bool,
}

impl CallHolder {
    /// Takes new text; returns what may be sent now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if !self.prose {
            if may_be_call(&self.held) {
                return String::new();
            }
            self.prose = true;
        }
        let cut = match self.held.find(CALL_TAG) {
            Some(at) => at,
            // The tag is ASCII, so a suffix that begins it starts on a character boundary.
            None => {
                self.held.len() - (1..CALL_TAG.len()).rev().find(|&k| self.held.ends_with(&CALL_TAG[..k])).unwrap_or(0)
            }
        };
        self.held.drain(..cut).collect()
    }

    /// What is held at the end of the answer: calls to parse, and any text around them.
    pub fn take(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::FunctionDef;

    fn plan() -> ToolPlan {
        let tool = Tool {
            kind: "function".into(),
            function: FunctionDef { name: "get_time".into(), description: None, parameters: None, strict: None },
        };
        ToolPlan::new(Some(&[tool]), None, None).unwrap().unwrap()
    }

    #[test]
    fn calls_are_parsed_in_either_form_and_text_around_them_kept() {
        let mut n = 0;
        let mut ids = || {
            n += 1;
            format!("call_{n}")
        };
        let tools = plan();
        let (content, calls) = tools.parse(
            "Let me see.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
            &mut ids,
        );
        assert_eq!(content.as_deref(), Some("Let me see."));
        assert_eq!(
            (calls[0].function.name.as_str(), calls[0].function.arguments.as_str()),
            ("get_time", r#"{"city":"Oslo"}"#)
        );
        let (content, calls) = tools.parse("```json\n{\"name\": \"get_time\", \"parameters\": {}}\n```", &mut ids);
        assert!(content.is_none() && calls.len() == 1 && calls[0].id == "call_2");
        // Unknown functions and prose are text.
        let (content, calls) = tools.parse("{\"name\": \"launch\"}", &mut ids);
        assert!(calls.is_empty() && content.is_some());
    }

    #[test]
    fn streams_hold_back_only_what_may_be_a_call() {
        let mut holder = CallHolder::default();
        assert_eq!(holder.push("Sure, "), "Sure, ");
        assert_eq!(holder.push("one moment. <tool"), "one moment. ");
        assert_eq!(holder.push("_call>{\"name\""), "");
        assert_eq!(holder.push(": 1}"), "");
        assert_eq!(holder.take(), "<tool_call>{\"name\": 1}");
        let mut json = CallHolder::default();
        assert_eq!(json.push("  {\"na"), "");
        assert_eq!(json.take(), "  {\"na");
        let mut prose = CallHolder::default();
        assert_eq!(prose.push("<b>bold</b> <"), "<b>bold</b> ");
        assert_eq!(prose.push("3"), "<3");
    }
}
