//! Text ⇄ token ids through `tokenizer.json`, with the special tokens and end-of-sequence ids
//! gathered from `tokenizer_config.json`, `generation_config.json` and `config.json`.
use crate::config::{LlamaConfig, TokenIds};
use crate::detokenize::{IncrementalDecoder, TokenBytes};
use crate::error::{ModelError, Result};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Every token's bytes, for detokenizing generated text incrementally.
    bytes: Arc<TokenBytes>,
    bos_id: Option<u32>,
    add_bos: bool,
    eos_ids: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<String>,
}

/// A token in `tokenizer_config.json` is either a string or an `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Text(String),
    Added { content: String },
}

impl TokenSpec {
    fn into_text(self) -> String {
        match self {
            TokenSpec::Text(t) | TokenSpec::Added { content: t } => t,
        }
    }
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    bos_token: Option<TokenSpec>,
    eos_token: Option<TokenSpec>,
    add_bos_token: Option<bool>,
    chat_template: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct GenerationConfig {
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
}

fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T> {
    if !path.exists() {
        return Ok(T::default());
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::file(path, format!("invalid JSON: {e}")))
}

impl TextTokenizer {
    pub fn load(dir: &Path, config: &LlamaConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::file(&path, "file not found"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::file(&path, e))?;
        let tok_config: TokenizerConfig = read_json(&dir.join("tokenizer_config.json"))?;
        let generation: GenerationConfig = read_json(&dir.join("generation_config.json"))?;
        let bos_token = tok_config.bos_token.map(TokenSpec::into_text);
        let eos_token = tok_config.eos_token.map(TokenSpec::into_text);
        let bos_id = generation
            .bos_token_id
            .or(config.bos_token_id)
            .or_else(|| bos_token.as_deref().and_then(|t| inner.token_to_id(t)));
        let mut eos_ids: Vec<u32> = Vec::new();
        for ids in [generation.eos_token_id.as_ref(), config.eos_token_id.as_ref()].into_iter().flatten() {
            for id in ids.to_vec() {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        if eos_ids.is_empty() {
            eos_ids.extend(eos_token.as_deref().and_then(|t| inner.token_to_id(t)));
        }
        let chat_template = match tok_config.chat_template {
            Some(serde_json::Value::String(t)) => Some(t),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        Ok(Self {
            bytes: Arc::new(TokenBytes::new(&inner)),
            inner,
            bos_id,
            add_bos: tok_config.add_bos_token.unwrap_or(true),
            eos_ids,
            bos_token,
            eos_token,
            chat_template,
        })
    }

    /// A tokenizer assembled from its parts (a GGUF file's metadata, say); the ids given for BOS
    /// and EOS name their tokens.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        add_bos: bool,
        eos_ids: Vec<u32>,
        chat_template: Option<String>,
    ) -> Self {
        let bos_token = bos_id.and_then(|id| inner.id_to_token(id));
        let eos_token = eos_ids.first().and_then(|&id| inner.id_to_token(id));
        Self {
            bytes: Arc::new(TokenBytes::new(&inner)),
            inner,
            bos_id,
            add_bos,
            eos_ids,
            bos_token,
            eos_token,
            chat_template,
        }
    }

    /// Encodes `text`, starting with BOS when the model expects it (and the tokenizer's own
    /// post-processor did not already add it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, true).map_err(|e| ModelError::Input(format!("cannot tokenize: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| ModelError::Input(format!("cannot detokenize: {e}")))
    }

    /// The text of `ids` generated after a prompt, as the streamed text adds up to: the lossy
    /// UTF-8 decoding of the tokens' bytes. Unlike [`decode`](Self::decode) it keeps a leading
    /// space (the text follows the prompt's) and the U+FFFD of each invalid byte does not depend
    /// on the tokens after it.
    pub fn decode_continuation(&self, ids: &[u32]) -> String {
        self.bytes.decode_continuation(ids)
    }

    /// A decoder that turns generated tokens into text one at a time.
    pub fn incremental_decoder(&self) -> IncrementalDecoder {
        IncrementalDecoder::new(Arc::clone(&self.bytes))
    }

    /// The bytes token `id` adds to text it follows; empty for special and unknown ids.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id)
    }

    /// The most prompt bytes one token can stand for (at least the longest token's bytes): a
    /// prompt of `n` bytes needs at least `n / max_token_bytes()` tokens, which bounds its
    /// length before tokenizing it. See [`TokenBytes::max_token_bytes`] for the exceptions.
    pub fn max_token_bytes(&self) -> usize {
        self.bytes.max_token_bytes()
    }

    /// One token's text for log-probabilities (lossy; a special token's content).
    pub fn token_text(&self, id: u32) -> String {
        self.bytes.token_text(id)
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether `encode` puts BOS in front.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos_id.is_some()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
