//! Prompts become token ids here, off the async threads and within bounds: a prompt whose text
//! is longer than the context could hold in any tokenization is refused before it is tokenized,
//! at most `tokenize_concurrency` prompts are tokenized at once (on tokio's blocking pool), and
//! chat content is tokenized so that it can never produce control tokens.
use crate::answer::{Thinking, OPEN};
use crate::chat_template::{ChatMessage, ChatTemplate, Rendered, TemplateArgs};
use crate::error::ApiError;
use recyclegpt_model::TextTokenizer;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// A chat's prompt, and how its answer begins.
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    pub thinking: Thinking,
}

pub struct PromptBuilder {
    tokenizer: Arc<TextTokenizer>,
    /// The same vocabulary with special-token parsing off: user text through it is only text.
    literal: Arc<tokenizers::Tokenizer>,
    /// The text of every special token, to spot content that tries to spell one.
    specials: Vec<String>,
    template: Arc<ChatTemplate>,
    /// Whether answers' reasoning is split out (the model marks it, and the server is to).
    reasoning: bool,
    /// The longest prompt text, in bytes, that could fit the context.
    max_prompt_bytes: usize,
    slots: Arc<Semaphore>,
}

impl PromptBuilder {
    pub fn new(
        tokenizer: Arc<TextTokenizer>,
        (template, reasoning): (ChatTemplate, bool),
        context_len: usize,
        concurrency: usize,
    ) -> Self {
        let mut literal = tokenizer.inner().clone();
        literal.set_encode_special_tokens(true);
        let specials = tokenizer
            .inner()
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special && !t.content.is_empty())
            .map(|t| t.content.clone())
            .collect();
        let max_prompt_bytes = context_len.saturating_mul(tokenizer.max_token_bytes().max(1));
        Self {
            tokenizer,
            literal: Arc::new(literal),
            specials,
            template: Arc::new(template),
            reasoning,
            max_prompt_bytes,
            slots: Arc::new(Semaphore::new(concurrency)),
        }
    }

    fn check_bytes(&self, param: &str, bytes: usize) -> Result<(), ApiError> {
        if bytes > self.max_prompt_bytes {
            return Err(ApiError::ContextLength {
                param: param.to_string(),
                message: format!(
                    "`{param}` has {bytes} bytes of text, more than this model's context could hold ({} bytes at most)",
                    self.max_prompt_bytes
                ),
            });
        }
        Ok(())
    }

    /// Checks a chat's messages alone (the request's `param`), before tool instructions are
    /// added to them: a chat that overflows only with its tools is then the tools' fault.
    pub fn check_chat(&self, param: &str, messages: &[ChatMessage]) -> Result<(), ApiError> {
        self.check_bytes(param, messages.iter().map(|m| m.content.len()).sum())
    }

    /// Completions prompts: special tokens written in them are parsed (documented), as in
    /// OpenAI's and vLLM's completions endpoints.
    pub async fn completion(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>, ApiError> {
        for text in &texts {
            self.check_bytes("prompt", text.len())?;
        }
        let tokenizer = self.tokenizer.clone();
        self.blocking(move || {
            texts.iter().map(|t| tokenizer.encode(t).map_err(|e| ApiError::invalid("prompt", e.to_string()))).collect()
        })
        .await
    }

    /// A chat prompt: the template rendered (with `args`), its own markup tokenized with
    /// control tokens and the messages' content as plain text; and how its answer begins.
    /// `param` names what an overflow is blamed on.
    pub async fn chat(
        &self,
        messages: Vec<ChatMessage>,
        args: TemplateArgs,
        param: &str,
    ) -> Result<ChatPrompt, ApiError> {
        self.check_chat(param, &messages)?;
        let (tokenizer, literal, template) = (self.tokenizer.clone(), self.literal.clone(), self.template.clone());
        let specials = self.specials.clone();
        let reasoning = self.reasoning;
        self.blocking(move || {
            let forged = messages.iter().any(|m| specials.iter().any(|s| m.content.contains(s.as_str())));
            let (text, mut ids) = if forged {
                let rendered = template.render_marked(&messages, &args)?;
                let ids = encode_segments(&tokenizer, &literal, &rendered)?;
                (rendered.text, ids)
            } else {
                let text = template.render(&messages, &args)?;
                let ids = tokenizer.encode(&text).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
                (text, ids)
            };
            // A template that writes BOS itself must not get a second one from the tokenizer.
            if template.starts_with_bos(&text) && ids.len() > 1 && ids[0] == ids[1] {
                ids.remove(0);
            }
            let thinking = match (reasoning, text.trim_end().ends_with(OPEN)) {
                (false, _) => Thinking::Off,
                (true, true) => Thinking::Open,
                (true, false) => Thinking::MayOpen,
            };
            Ok(ChatPrompt { ids, thinking })
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        // The permit moves into the blocking task: a client that goes away mid-tokenization
        // does not free a slot while its work still runs.
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("the tokenizer pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))?
    }
}

/// Tokenizes the template's markup and the content separately: only the markup may hold
/// control tokens. Used only when content spells a special token, since tokenizing in pieces can
/// split a merge at the boundaries.
fn encode_segments(
    tokenizer: &TextTokenizer,
    literal: &tokenizers::Tokenizer,
    rendered: &Rendered,
) -> Result<Vec<u32>, ApiError> {
    let fail = |e: tokenizers::Error| ApiError::invalid("messages", format!("cannot tokenize: {e}"));
    let mut ids = Vec::new();
    let mut at = 0;
    let text = rendered.text.as_str();
    for span in &rendered.content {
        if span.start > at {
            ids.extend_from_slice(tokenizer.inner().encode(&text[at..span.start], false).map_err(fail)?.get_ids());
        }
        ids.extend_from_slice(literal.encode(&text[span.clone()], false).map_err(fail)?.get_ids());
        at = span.end;
    }
    if at < text.len() {
        ids.extend_from_slice(tokenizer.inner().encode(&text[at..], false).map_err(fail)?.get_ids());
    }
    if let (true, Some(bos)) = (tokenizer.adds_bos(), tokenizer.bos_id()) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}
