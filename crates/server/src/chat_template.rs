//! The prompt of a chat request: the model's `chat_template` rendered with minijinja (with
//! Python string methods, as HuggingFace templates expect), or a plain fallback.
use crate::error::ApiError;
use minijinja::{context, Environment, Value};
use serde::Serialize;

/// A template's extra variables (`chat_template_kwargs`, a reasoning effort).
pub type TemplateArgs = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Brackets each message's content while the template renders (a private-use character that
/// no template writes; content containing it is refused).
const MARK: char = '\u{F8FF}';

/// A rendered chat prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Byte ranges of `text` that are message content.
    pub content: Vec<std::ops::Range<usize>>,
}

impl Rendered {
    /// Removes the marks, pairing them into content ranges (a template that drops or repeats
    /// content still yields well-formed ranges: an odd mark out is ignored).
    fn from_marked(marked: &str) -> Self {
        let mut text = String::with_capacity(marked.len());
        let mut content = Vec::new();
        let mut open: Option<usize> = None;
        for piece in marked.split_inclusive(MARK) {
            let (body, is_mark) = match piece.strip_suffix(MARK) {
                Some(body) => (body, true),
                None => (piece, false),
            };
            text.push_str(body);
            if is_mark {
                match open.take() {
                    None => open = Some(text.len()),
                    Some(start) => content.push(start..text.len()),
                }
            }
        }
        Self { text, content }
    }
}

pub struct ChatTemplate {
    env: Option<Environment<'static>>,
    source: Option<String>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: Option<&str>, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self, String> {
        let env = match source {
            Some(source) => {
                let mut env = Environment::new();
                env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
                env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
                    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
                });
                env.add_template_owned("chat", source.to_string())
                    .map_err(|e| format!("the model's chat_template does not parse: {e}"))?;
                Some(env)
            }
            None => None,
        };
        Ok(Self {
            env,
            source: source.map(String::from),
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// Whether the template writes reasoning tags (`<think>`), as reasoning models' do.
    pub fn marks_reasoning(&self) -> bool {
        self.source.as_deref().is_some_and(|s| s.contains(crate::answer::OPEN))
    }

    /// The prompt. Without a template: one `role: content` line per message, then `assistant:`.
    pub fn render(&self, messages: &[ChatMessage], args: &TemplateArgs) -> Result<String, ApiError> {
        let Some(env) = &self.env else {
            let mut prompt: String = messages.iter().map(|m| format!("{}: {}\n", m.role, m.content)).collect();
            prompt.push_str("assistant:");
            return Ok(prompt);
        };
        let template = env.get_template("chat").map_err(|e| ApiError::Internal(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
                ..Value::from_serialize(args)
            })
            .map_err(|e| ApiError::invalid("messages", format!("the chat template rejected the messages: {e}")))
    }

    /// The prompt, and where the messages' content lies in it: content goes into the template
    /// between two private-use marks, which are then removed and their positions kept, so the
    /// tokenizer can tell the template's markup from what users wrote. (A template that trims
    /// content sees the marks first, so surrounding whitespace stays: this path is for content
    /// that spells control tokens, where keeping them literal matters more.)
    pub fn render_marked(&self, messages: &[ChatMessage], args: &TemplateArgs) -> Result<Rendered, ApiError> {
        if messages.iter().any(|m| m.content.contains(MARK)) {
            return Err(ApiError::invalid("messages", "content may not contain the character U+F8FF"));
        }
        let marked: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage { role: m.role.clone(), content: format!("{MARK}{}{MARK}", m.content) })
            .collect();
        let rendered = Rendered::from_marked(&self.render(&marked, args)?);
        // A template that drops, splits or rewrites content would shift the pairing of the
        // marks, and markup could then be read as content or content as markup: refuse it.
        let intact = rendered.content.len() == messages.len()
            && rendered.content.iter().zip(messages).all(|(span, m)| rendered.text[span.clone()] == m.content);
        if !intact {
            return Err(ApiError::invalid(
                "messages",
                "the content spells control tokens and this model's chat template rewrites content, so it cannot be kept apart from the template's markup",
            ));
        }
        Ok(rendered)
    }

    /// Whether the rendered prompt already starts with BOS (then the tokenizer must not add one).
    pub fn starts_with_bos(&self, prompt: &str) -> bool {
        !self.bos_token.is_empty() && prompt.starts_with(&self.bos_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn content_spans_cover_exactly_the_content() {
        let template = ChatTemplate::new(
            Some("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"),
            None,
            None,
        )
        .unwrap();
        let rendered = template
            .render_marked(
                &[message("system", "Be brief."), message("user", "</s> hi <|im_start|>")],
                &TemplateArgs::new(),
            )
            .unwrap();
        assert_eq!(
            rendered.text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n</s> hi <|im_start|><|im_end|>\n<|im_start|>assistant"
        );
        let spans: Vec<&str> = rendered.content.iter().map(|r| &rendered.text[r.clone()]).collect();
        assert_eq!(spans, ["Be brief.", "</s> hi <|im_start|>"]);
    }

    #[test]
    fn the_plain_fallback_marks_content_too() {
        let template = ChatTemplate::new(None, None, None).unwrap();
        let rendered = template.render_marked(&[message("user", "hello")], &TemplateArgs::new()).unwrap();
        assert_eq!(rendered.text, "user: hello\nassistant:");
        assert_eq!(&rendered.text[rendered.content[0].clone()], "hello");
    }

    #[test]
    fn content_with_the_mark_is_refused() {
        let template = ChatTemplate::new(None, None, None).unwrap();
        assert!(template.render_marked(&[message("user", "a\u{F8FF}b")], &TemplateArgs::new()).is_err());
    }

    /// Qwen2.5's and Qwen3's own templates (`tests/data/templates`, from the models'
    /// `tokenizer_config.json`) render a conversation as the models were trained on it; Qwen3's
    /// takes `enable_thinking` (its reasoning switch) from the template arguments.
    #[test]
    fn qwen_templates_render() {
        let read = |name: &str| {
            let path = format!("{}/../../tests/data/templates/{name}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        let chat = [
            message("system", "Be brief."),
            message("user", "Hi"),
            message("assistant", "Hello!"),
            message("user", "What is 2+2?"),
        ];
        let qwen25 =
            ChatTemplate::new(Some(&read("Qwen-Qwen2.5-7B-Instruct.jinja")), None, Some("<|im_end|>")).unwrap();
        assert_eq!(
            qwen25.render(&chat, &TemplateArgs::new()).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\
             Hello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        let qwen3 = ChatTemplate::new(Some(&read("Qwen-Qwen3-0.6B.jinja")), None, Some("<|im_end|>")).unwrap();
        let thinking = qwen3.render(&chat, &TemplateArgs::new()).unwrap();
        assert!(thinking.ends_with("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"), "{thinking}");
        let mut off = TemplateArgs::new();
        off.insert("enable_thinking".into(), serde_json::Value::Bool(false));
        let plain = qwen3.render(&chat, &off).unwrap();
        assert!(plain.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"), "{plain}");
        assert!(qwen3.marks_reasoning());
    }
}
