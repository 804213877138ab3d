//! What a JSON schema may ask of the compiler, checked on the schema's own shape before it is
//! compiled: the compiler's cost grows with these parts faster than with the schema's size, and
//! a compile cannot be stopped once started.
use crate::GrammarError;
use regex_syntax::hir::{Hir, HirKind};
use serde_json::Value;

/// Limits on a schema's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaBudget {
    /// The schema's size as compact JSON.
    pub max_bytes: usize,
}

/// The compiler checks every pair of an object's `patternProperties` for overlap, each pair a
/// regex intersection (about 0.1 ms): 420 patterns took 11 s. 2,000 pairs (63 patterns in one
/// object) stay near a fifth of a second.
const MAX_PATTERN_PAIRS: usize = 2_000;

/// A grammar row holds at most 2,000 items in llguidance, and a choice among more alternatives
/// than that fails once generation reaches it; a quarter leaves room for what else the row holds.
const MAX_ALTERNATIVES: usize = 500;

/// A pattern's counted repetitions, multiplied along their nesting: the lexer's work on every
/// token grows with it (measured: `a{1000}` adds about 0.6 ms to a token's mask, `a{100000}`
/// 70 ms, on the worker that serves every sequence). Longer strings are `maxLength`'s job.
const MAX_PATTERN_REPEAT: u64 = 1_000;

impl SchemaBudget {
    /// Refuses a Lark grammar beyond the size limit (a forced tool call's grammar holds its
    /// tools' schemas).
    pub fn check_lark(&self, lark: &str) -> Result<(), GrammarError> {
        if lark.len() > self.max_bytes {
            return Err(GrammarError::TooLarge(format!(
                "the grammar has {} bytes; at most {} are allowed",
                lark.len(),
                self.max_bytes
            )));
        }
        Ok(())
    }

    /// Refuses a schema whose shape would cost the compiler (or the grammar at run time) beyond
    /// the limits above, with a message that says which part.
    pub fn check(&self, schema: &Value) -> Result<(), GrammarError> {
        let bytes = serde_json::to_vec(schema).map_or(usize::MAX, |b| b.len());
        if bytes > self.max_bytes {
            return Err(GrammarError::TooLarge(format!(
                "the schema has {bytes} bytes of JSON; at most {} are allowed",
                self.max_bytes
            )));
        }
        let mut pairs = 0usize;
        // An explicit stack: the schema is the client's, and its nesting is not ours to recurse on.
        let mut stack = vec![schema];
        while let Some(value) = stack.pop() {
            match value {
                Value::Object(object) => {
                    if let Some(Value::Object(patterns)) = object.get("patternProperties") {
                        let n = patterns.len();
                        pairs = pairs.saturating_add(n * n.saturating_sub(1) / 2);
                        patterns.keys().try_for_each(|p| check_pattern(p))?;
                    }
                    if let Some(Value::String(pattern)) = object.get("pattern") {
                        check_pattern(pattern)?;
                    }
                    for key in ["anyOf", "oneOf"] {
                        if let Some(Value::Array(choices)) = object.get(key) {
                            if choices.len() > MAX_ALTERNATIVES {
                                return Err(GrammarError::TooLarge(format!(
                                    "`{key}` has {} alternatives; at most {MAX_ALTERNATIVES} are supported",
                                    choices.len()
                                )));
                            }
                        }
                    }
                    stack.extend(object.values());
                }
                Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
        if pairs > MAX_PATTERN_PAIRS {
            return Err(GrammarError::TooLarge(format!(
                "the schema's `patternProperties` make {pairs} pairs of patterns to check for overlap; at most \
                 {MAX_PATTERN_PAIRS} are allowed (about 63 patterns in one object)"
            )));
        }
        Ok(())
    }
}

/// Refuses a pattern whose counted repetitions weigh more than [`MAX_PATTERN_REPEAT`]; one that
/// does not parse is left to the compiler, which says why.
fn check_pattern(pattern: &str) -> Result<(), GrammarError> {
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else { return Ok(()) };
    let weight = repeat_weight(&hir);
    if weight > MAX_PATTERN_REPEAT {
        return Err(GrammarError::TooLarge(format!(
            "the pattern /{pattern}/ repeats up to {weight} times; at most {MAX_PATTERN_REPEAT} are supported \
             (use `maxLength` for long strings)"
        )));
    }
    Ok(())
}

/// Counted repetitions multiplied along their nesting, the larger of alternatives, summed along
/// a sequence. The parser bounds the nesting depth (250), so this recursion is bounded too.
fn repeat_weight(hir: &Hir) -> u64 {
    match hir.kind() {
        HirKind::Repetition(rep) => {
            let count = u64::from(rep.max.unwrap_or(rep.min).max(rep.min)).max(1);
            count.saturating_mul(repeat_weight(&rep.sub))
        }
        HirKind::Capture(capture) => repeat_weight(&capture.sub),
        HirKind::Concat(parts) => parts.iter().map(repeat_weight).fold(0, u64::saturating_add),
        HirKind::Alternation(parts) => parts.iter().map(repeat_weight).max().unwrap_or(1),
        HirKind::Empty | HirKind::Look(_) => 0,
        HirKind::Literal(_) | HirKind::Class(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn budget() -> SchemaBudget {
        SchemaBudget { max_bytes: 64 * 1024 }
    }

    fn pattern_properties(n: usize) -> Value {
        let patterns: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("^p{i}_[a-z]+$"), json!({"type": "integer"}))).collect();
        json!({"type": "object", "patternProperties": patterns})
    }

    #[test]
    fn pattern_pairs_are_counted_across_the_schema() {
        assert!(budget().check(&pattern_properties(63)).is_ok());
        let error = budget().check(&pattern_properties(64)).unwrap_err().to_string();
        assert!(error.contains("2016 pairs"), "{error}");
        // Two objects of 50 each: 2 x 1,225 pairs.
        let two = json!({"anyOf": [pattern_properties(50), {"items": pattern_properties(50)}]});
        assert!(budget().check(&two).unwrap_err().to_string().contains("2450 pairs"));
    }

    #[test]
    fn patterns_that_repeat_too_often_are_refused() {
        let pattern = |p: &str| json!({"type": "string", "pattern": p});
        for ok in ["^a{1000}$", "^[a-z]{1,100}-[0-9]{1,100}$", "^(ab|cd){1,500}$", "^x+$", "(unclosed"] {
            assert!(budget().check(&pattern(ok)).is_ok(), "{ok}");
        }
        for (bad, weight) in
            [("^a{100000}$", "100000"), ("^((x{1,100}){1,100}){1,100}$", "1000000"), ("^a{600}b{600}$", "1200")]
        {
            let error = budget().check(&pattern(bad)).unwrap_err().to_string();
            assert!(error.contains(&format!("up to {weight} times")), "{bad}: {error}");
        }
        let keys = json!({"patternProperties": {"^k{5000}$": {}}});
        assert!(budget().check(&keys).is_err());
    }

    #[test]
    fn wide_choices_and_large_schemas_are_refused() {
        let choices = |n: usize| json!({"anyOf": (0..n).map(|i| json!({"const": i})).collect::<Vec<_>>()});
        assert!(budget().check(&choices(MAX_ALTERNATIVES)).is_ok());
        let nested = json!({"properties": {"a": choices(MAX_ALTERNATIVES + 1)}});
        assert!(budget().check(&nested).unwrap_err().to_string().contains("`anyOf` has 501 alternatives"));
        let large = json!({"description": "x".repeat(70_000)});
        assert!(budget().check(&large).unwrap_err().to_string().contains("bytes of JSON"));
    }
}
