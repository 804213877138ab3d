//! The prompt of a chat request: the model's `chat_template` rendered with minijinja (with
//! Python string methods, as HuggingFace templates expect), or a plain fallback.
use crate::error::ApiError;
use minijinja::{context, Environment};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Option<Environment<'static>>,
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
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// Without a template: one `role: content` line per message, then `assistant:`.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ApiError> {
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
            })
            .map_err(|e| ApiError::invalid("messages", format!("the chat template rejected the messages: {e}")))
    }

    /// Whether the rendered prompt already starts with BOS (then the tokenizer must not add one).
    pub fn starts_with_bos(&self, prompt: &str) -> bool {
        !self.bos_token.is_empty() && prompt.starts_with(&self.bos_token)
    }
}
