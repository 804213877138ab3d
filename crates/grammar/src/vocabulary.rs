//! llguidance's view of a tokenizer: every token's bytes in a trie, and a way to tokenize text.
//!
//! llguidance ships an adapter for HF tokenizers (`toktrie_hf_tokenizers`), but it pins an older
//! `tokenizers` than the one this workspace uses, and our tokenizer already knows each token's
//! exact bytes (`TokenBytes`, which handles byte-level and sentencepiece vocabularies alike), so
//! the adapter is these few lines instead of a second copy of `tokenizers`.
use crate::GrammarError;
use recyclegpt_model::TextTokenizer;
use std::sync::Arc;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

struct Vocabulary {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        // Forced text of a grammar goes through the real tokenizer where that spells exactly
        // these bytes. It does not always: a sentencepiece tokenizer puts a space before the
        // text (`{` becomes `▁{`), and bytes that are not UTF-8 cannot be encoded at all. Then
        // the trie's longest-match tokenization, which always spells them exactly.
        let encoded = std::str::from_utf8(bytes).ok().and_then(|text| self.tokenizer.encode(text, false).ok());
        match encoded.map(|e| e.get_ids().to_vec()) {
            Some(ids) if ids.iter().flat_map(|&id| self.trie.token(id)).eq(bytes.iter()) => ids,
            _ => self.trie.greedy_tokenize(bytes),
        }
    }
}

pub(crate) fn token_env(tokenizer: &TextTokenizer) -> Result<TokEnv, GrammarError> {
    let size = tokenizer.vocab_size();
    let words: Vec<Vec<u8>> = (0..size as u32)
        .map(|id| match tokenizer.token_bytes(id) {
            // A special token adds no text: the trie knows it by its name behind the marker
            // byte, which no text contains, so a grammar never allows it in text.
            [] => {
                let mut name = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                name.extend_from_slice(tokenizer.token_text(id).as_bytes());
                name
            }
            bytes => bytes.to_vec(),
        })
        .collect();
    let eos = tokenizer.eos_ids().first().copied().ok_or_else(|| {
        GrammarError::Tokenizer("the tokenizer has no end-of-sequence token to end constrained text".into())
    })?;
    let size = u32::try_from(size).map_err(|_| GrammarError::Tokenizer("the vocabulary is too large".into()))?;
    let info = TokRxInfo::new(size, eos);
    let trie = TokTrie::from(&info, &words);
    Ok(Arc::new(Vocabulary { trie, tokenizer: tokenizer.inner().clone() }))
}
