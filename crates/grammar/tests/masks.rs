//! Grammar masks over the in-repo model's sentencepiece vocabulary (byte fallback, `▁` spaces):
//! what the mask allows is what the matcher accepts, text that fits is taken to the end, and a
//! rollback restores the state before the drafts.
use recyclegpt_grammar::{GrammarSpec, Grammars, SchemaBudget};
use recyclegpt_model::{LoadOptions, LoadedModel, TextTokenizer};
use serde_json::json;
use std::path::PathBuf;

const BUDGET: SchemaBudget = SchemaBudget { max_bytes: 64 * 1024 };

fn tokenizer() -> TextTokenizer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shakespeare");
    LoadedModel::load(&dir, &LoadOptions::default()).expect("the in-repo model loads").tokenizer
}

fn allowed(constraint: &mut recyclegpt_engine::Constraint, vocab: usize) -> Vec<u32> {
    let mut logits = vec![0.0f32; vocab];
    constraint.0.mask(&mut logits).expect("mask");
    (0..vocab as u32).filter(|&t| logits[t as usize].is_finite()).collect()
}

#[test]
fn a_schema_allows_exactly_the_text_that_fits_it() {
    let tokenizer = tokenizer();
    let vocab = tokenizer.vocab_size();
    let grammars = Grammars::new(&tokenizer).expect("the vocabulary becomes a trie");
    let schema = json!({"type": "object", "properties": {"act": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["act"], "additionalProperties": false});
    let grammar = grammars.compile(&GrammarSpec::JsonSchema(schema), &BUDGET).expect("compiles");
    let mut constraint = grammar.constraint();
    // The text starts with `{`: every allowed token spells something that starts so.
    let first = allowed(&mut constraint, vocab);
    assert!(!first.is_empty());
    assert!(first.iter().all(|&t| tokenizer.token_bytes(t).starts_with(b"{")), "{first:?}");
    // Text that fits is taken to its end: at each step some allowed token spells what comes
    // next (the longest is taken), and the matcher accepts it.
    let text: &[u8] = br#"{"act": 3}"#;
    let mut at = 0;
    let mut ids = Vec::new();
    while at < text.len() {
        assert!(!constraint.0.is_complete());
        let next = allowed(&mut constraint, vocab)
            .into_iter()
            .filter(|&t| !tokenizer.token_bytes(t).is_empty() && text[at..].starts_with(tokenizer.token_bytes(t)))
            .max_by_key(|&t| tokenizer.token_bytes(t).len())
            .unwrap_or_else(|| panic!("nothing allowed spells {:?}", String::from_utf8_lossy(&text[at..])));
        constraint.0.advance(next).expect("an allowed token is accepted");
        at += tokenizer.token_bytes(next).len();
        ids.push(next);
    }
    assert!(constraint.0.is_complete(), "the object is complete after its closing brace");
    // A draft that completed the text is taken back like any other (verification rejected it).
    constraint.0.rollback(1).expect("a completed text can be rolled back");
    assert!(!constraint.0.is_complete());
    let closing = *ids.last().unwrap();
    assert!(allowed(&mut constraint, vocab).contains(&closing));
    constraint.0.advance(closing).unwrap();
    assert!(constraint.0.is_complete());

    // Before the number: a digit outside the schema's bounds is never allowed, and a rollback
    // takes back a drafted digit.
    let mut constraint = grammar.constraint();
    let before_number = ids.len() - 2;
    for &id in &ids[..before_number] {
        constraint.0.advance(id).unwrap();
    }
    let digit = |d: u8| 3 + u32::from(d);
    let digits = allowed(&mut constraint, vocab);
    assert!(digits.contains(&digit(b'5')) && !digits.contains(&digit(b'7')), "{digits:?}");
    constraint.0.advance(digit(b'2')).unwrap();
    constraint.0.rollback(1).unwrap();
    assert_eq!(allowed(&mut constraint, vocab), digits);
    assert!(constraint.0.advance(digit(b'9')).is_err(), "9 is above the maximum");
}

#[test]
fn invalid_schemas_and_grammars_are_errors() {
    let tokenizer = tokenizer();
    let grammars = Grammars::new(&tokenizer).unwrap();
    for bad in [json!({"type": "objekt"}), json!([1, 2]), json!({"type": "integer", "minimum": 5, "maximum": 1})] {
        assert!(grammars.compile(&GrammarSpec::JsonSchema(bad.clone()), &BUDGET).is_err(), "{bad}");
    }
    assert!(grammars.compile(&GrammarSpec::Lark("start: missing_rule".into()), &BUDGET).is_err());
}
