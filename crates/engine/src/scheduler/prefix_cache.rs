//! Prefix caching: the caches of finished sequences, kept for later ones that start with the
//! same tokens (a system prompt, the earlier turns of a chat) and evicted least recently used,
//! within what the KV budget leaves free.
//!
//! An entry is a finished sequence's own caches, moved here rather than copied. A hit copies the
//! shared prefix's rows into the new sequence's cache (a memory copy, far cheaper than the
//! forward that made them), for the full model and for the module. Entries are found by the
//! longest common prefix with the new prompt: a scan over at most a few hundred entries costs
//! microseconds beside a forward. (vLLM hashes fixed-size blocks because its paged KV lets
//! running sequences share blocks; here each sequence owns a contiguous cache, so whole entries
//! and a scan are simpler, and match to the token.)
use recyclegpt_model::KvCache;

/// Shorter shared prefixes are recomputed: copying them saves less than the lookup costs.
const MIN_REUSE: usize = 8;

pub(crate) struct PrefixCache {
    entries: Vec<Entry>,
    clock: u64,
}

struct Entry {
    /// The tokens whose keys and values `full` holds, in order.
    tokens: Vec<u32>,
    full: KvCache,
    /// The module's cache (its first `contiguous_len` entries are positions 1, 2, …).
    module: Option<KvCache>,
    last_used: u64,
}

/// What a new prompt can reuse: `len` positions of these caches.
pub(crate) struct Hit<'a> {
    pub full: &'a KvCache,
    pub module: Option<&'a KvCache>,
    pub len: usize,
}

impl PrefixCache {
    pub fn new() -> Self {
        Self { entries: Vec::new(), clock: 0 }
    }

    /// KV positions held (the entries' full-model cache capacities), counted in the KV budget.
    pub fn held(&self) -> usize {
        self.entries.iter().map(|e| e.full.capacity()).sum()
    }

    /// The entry sharing the longest prefix with `prompt`; at least one prompt token is left to
    /// compute, since the step that feeds the last one yields the first output token.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<Hit<'_>> {
        let limit = prompt.len().saturating_sub(1);
        let (at, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(limit)))
            .max_by_key(|&(i, len)| (len, self.entries[i].last_used))?;
        if len < MIN_REUSE {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[at];
        entry.last_used = self.clock;
        Some(Hit { full: &entry.full, module: entry.module.as_ref(), len })
    }

    /// Keeps a finished sequence's caches. An entry whose tokens start the new one's is dropped
    /// (the new one covers it); a new one that starts an entry's tokens is not kept.
    pub fn insert(&mut self, tokens: Vec<u32>, full: KvCache, module: Option<KvCache>) {
        if tokens.len() < MIN_REUSE {
            return;
        }
        self.clock += 1;
        if let Some(longer) = self.entries.iter_mut().find(|e| e.tokens.starts_with(&tokens)) {
            longer.last_used = self.clock;
            return;
        }
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        self.entries.push(Entry { tokens, full, module, last_used: self.clock });
    }

    /// Evicts least recently used entries until at most `limit` positions are held.
    pub fn shrink_to(&mut self, limit: usize) {
        let mut held = self.held();
        while held > limit {
            let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) else {
                break;
            };
            held -= self.entries.swap_remove(oldest).full.capacity();
        }
    }
}
