//! Stored responses (`store: true` on `POST /v1/responses`): each response's object, for `GET
//! /v1/responses/{id}`, and the conversation it ended, for a later request's
//! `previous_response_id`. Kept in memory, bounded by count and bytes, each expiring a set time
//! after it was stored; when full, the least recently used goes first.
//!
//! By hand rather than with an LRU crate: the bound is on bytes as well as count, and entries
//! expire, so the eviction loop is ours either way; with at most a few thousand entries a scan
//! for the least recently used one costs microseconds per store.
use crate::chat_template::ChatMessage;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much the store keeps, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub max_responses: usize,
    pub max_bytes: usize,
    pub ttl: Duration,
}

struct Entry {
    /// The response object as serialized: its length is what it holds (a `Value` tree would
    /// take several times its text in memory, uncounted).
    response: String,
    conversation: Vec<ChatMessage>,
    bytes: usize,
    stored: Instant,
    /// When it was last stored or read, on the store's own clock (for least recently used).
    used: u64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

pub struct ResponseStore {
    limits: StoreLimits,
    entries: Mutex<Entries>,
}

impl ResponseStore {
    pub fn new(limits: StoreLimits) -> Self {
        Self { limits, entries: Mutex::new(Entries::default()) }
    }

    /// Keeps `response` and the conversation it ended under `id`, making room by expiry and
    /// then least recent use. One larger than the whole byte budget is not kept (a warning);
    /// reading it back is then a 404, as after any eviction.
    pub fn insert(&self, id: &str, response: Value, conversation: Vec<ChatMessage>) {
        let response = response.to_string();
        let bytes =
            id.len() + response.len() + conversation.iter().map(|m| m.role.len() + m.content.len()).sum::<usize>();
        if bytes > self.limits.max_bytes {
            tracing::warn!(id, bytes, max_bytes = self.limits.max_bytes, "a response too large to store");
            return;
        }
        let mut entries = self.lock();
        entries.remove(id);
        entries.expire(self.limits.ttl);
        while entries.map.len() >= self.limits.max_responses || entries.bytes + bytes > self.limits.max_bytes {
            let Some(oldest) = entries.map.iter().min_by_key(|(_, e)| e.used).map(|(id, _)| id.clone()) else {
                break;
            };
            entries.remove(&oldest);
        }
        entries.clock += 1;
        let used = entries.clock;
        entries.bytes += bytes;
        entries.map.insert(id.to_string(), Entry { response, conversation, bytes, stored: Instant::now(), used });
    }

    /// The stored response object, if `id` is held and not expired.
    pub fn response(&self, id: &str) -> Option<Value> {
        self.read(id, |e| serde_json::from_str(&e.response).ok()).flatten()
    }

    /// The conversation response `id` ended (its input and its output, after the responses
    /// it continued), if held and not expired.
    pub fn conversation(&self, id: &str) -> Option<Vec<ChatMessage>> {
        self.read(id, |e| e.conversation.clone())
    }

    /// Forgets `id`; whether it was held.
    pub fn delete(&self, id: &str) -> bool {
        let mut entries = self.lock();
        entries.expire(self.limits.ttl);
        entries.remove(id)
    }

    fn read<T>(&self, id: &str, f: impl Fn(&Entry) -> T) -> Option<T> {
        let mut entries = self.lock();
        entries.expire(self.limits.ttl);
        entries.clock += 1;
        let clock = entries.clock;
        let entry = entries.map.get_mut(id)?;
        entry.used = clock;
        Some(f(entry))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves the map consistent (every change is one insert
        // or remove), so a poisoned lock is still safe to use.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Entries {
    fn remove(&mut self, id: &str) -> bool {
        match self.map.remove(id) {
            Some(entry) => {
                self.bytes -= entry.bytes;
                true
            }
            None => false,
        }
    }

    fn expire(&mut self, ttl: Duration) {
        let expired: Vec<String> =
            self.map.iter().filter(|(_, e)| e.stored.elapsed() >= ttl).map(|(id, _)| id.clone()).collect();
        for id in expired {
            self.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(max_responses: usize, max_bytes: usize, ttl: Duration) -> ResponseStore {
        ResponseStore::new(StoreLimits { max_responses, max_bytes, ttl })
    }

    fn turn(text: &str) -> Vec<ChatMessage> {
        vec![ChatMessage { role: "user".into(), content: text.into() }]
    }

    #[test]
    fn the_least_recently_used_goes_first_when_full() {
        let store = store(2, 1 << 20, Duration::from_secs(60));
        store.insert("a", json!({"id": "a"}), turn("one"));
        store.insert("b", json!({"id": "b"}), turn("two"));
        assert!(store.response("a").is_some(), "a read makes a the most recent");
        store.insert("c", json!({"id": "c"}), turn("three"));
        assert!(store.response("b").is_none(), "b was the least recently used");
        assert_eq!(store.conversation("a").unwrap()[0].content, "one");
        assert!(store.delete("c") && !store.delete("c"));
    }

    #[test]
    fn bytes_bound_the_store_and_entries_expire() {
        let store = store(100, 300, Duration::from_secs(60));
        let long = "x".repeat(120);
        store.insert("a", json!({}), turn(&long));
        store.insert("b", json!({}), turn(&long));
        store.insert("c", json!({}), turn(&long));
        assert!(store.response("a").is_none() && store.response("c").is_some(), "two of 130 bytes fit in 300");
        store.insert("huge", json!({}), turn(&"y".repeat(400)));
        assert!(store.response("huge").is_none() && store.response("b").is_some(), "too large for the whole budget");

        let brief = super::tests::store(10, 1 << 20, Duration::from_millis(30));
        brief.insert("a", json!({}), turn("soon gone"));
        assert!(brief.response("a").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(brief.response("a").is_none() && !brief.delete("a"));
    }
}
