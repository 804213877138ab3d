//! Structured outputs: a JSON schema (or a Lark grammar) becomes a token mask the engine applies
//! to every token it samples, through llguidance.
//!
//! [`Grammars`] is built once per tokenizer (llguidance's token trie over every token's bytes)
//! and compiles a request's [`GrammarSpec`] into a [`Grammar`]; each sequence then gets its own
//! matcher from it ([`Grammar::constraint`]), which the engine advances token by token.
mod budget;
mod digits;
mod vocabulary;

pub use budget::SchemaBudget;
use digits::DigitRuns;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory, TokenParser};
use recyclegpt_engine::{Constraint, TokenConstraint};
use recyclegpt_model::TextTokenizer;
use serde_json::{json, Value};
use std::sync::Arc;
use toktrie::TokEnv;

#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    /// The tokenizer could not be turned into llguidance's token trie.
    #[error("the tokenizer cannot drive constrained decoding: {0}")]
    Tokenizer(String),
    /// The schema or grammar is invalid, or beyond what the compiler supports.
    #[error("{0}")]
    Invalid(String),
    /// The schema or grammar is beyond its [`SchemaBudget`].
    #[error("{0}")]
    TooLarge(String),
}

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON that validates against this schema.
    JsonSchema(Value),
    /// A Lark grammar (llguidance's dialect), for non-JSON formats.
    Lark(String),
    /// Hermes-style tool calls, `<tool_call>\n{json}\n</tool_call>\n`, whose JSON validates
    /// against `schema`; one call, or one or more when `repeated`.
    ToolCalls { schema: Value, repeated: bool },
}

/// The compiler for one tokenizer.
pub struct Grammars {
    factory: Arc<ParserFactory>,
    env: TokEnv,
    eos_ids: Arc<[u32]>,
}

impl Grammars {
    pub fn new(tokenizer: &TextTokenizer) -> Result<Self, GrammarError> {
        let env = vocabulary::token_env(tokenizer)?;
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| GrammarError::Tokenizer(e.to_string()))?;
        // Errors come back to the caller as values; llguidance's own log would print them twice,
        // and its verbose errors would hand the parser's internal state to the client.
        factory.quiet();
        factory.limits_mut().verbose_errors = false;
        Ok(Self { factory: Arc::new(factory), env, eos_ids: tokenizer.eos_ids().into() })
    }

    /// Checks `spec` against `budget`, then compiles it; an invalid schema or grammar is an
    /// error that says what is wrong.
    pub fn compile(&self, spec: &GrammarSpec, budget: &SchemaBudget) -> Result<Grammar, GrammarError> {
        let grammar = match spec {
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(with_layout(json!({"type": "object"}))),
            GrammarSpec::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(GrammarError::Invalid("a JSON schema must be an object".into()));
                }
                budget.check(schema)?;
                TopLevelGrammar::from_json_schema(with_layout(schema.clone()))
            }
            GrammarSpec::Lark(lark) => {
                budget.check_lark(lark)?;
                TopLevelGrammar::from_lark(lark.clone())
            }
            GrammarSpec::ToolCalls { schema, repeated } => {
                budget.check(schema)?;
                let schema = with_layout(schema.clone());
                let repeat = if *repeated { "+" } else { "" };
                TopLevelGrammar::from_lark(format!(
                    "start: call{repeat}\ncall: \"<tool_call>\\n\" %json {schema} \"\\n</tool_call>\\n\"\n"
                ))
            }
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| GrammarError::Invalid(e.to_string()))?;
        // Some errors only show once the parser starts: catch them here, not mid-generation.
        let mut probe = Matcher::new(Ok(parser.deep_clone()));
        probe.compute_mask().map_err(|e| GrammarError::Invalid(e.to_string()))?;
        let json = !matches!(spec, GrammarSpec::Lark(_) | GrammarSpec::ToolCalls { .. });
        Ok(Grammar { parser, env: self.env.clone(), json, eos_ids: self.eos_ids.clone() })
    }
}

/// JSON laid out as models write it, compact or pretty-printed, with at most one space, or one
/// newline and up to 8 spaces of indentation, between tokens (as llama.cpp's JSON grammar does): with free
/// whitespace, small models pad with blank lines until `max_tokens` runs out. A schema's own
/// `x-guidance` options win.
pub fn with_layout(mut schema: Value) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            json!({
                "whitespace_pattern": "\\x20|\\x0A\\x20{0,8}",
                "item_separator": ",",
                "key_separator": ":",
                "coerce_one_of": true,
            })
        });
    }
    schema
}

/// A compiled grammar, ready to constrain any number of sequences.
pub struct Grammar {
    parser: TokenParser,
    env: TokEnv,
    /// JSON output, whose numbers get at most [`digits::MAX_DIGITS`] digits in a row.
    json: bool,
    eos_ids: Arc<[u32]>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammar")
    }
}

impl Grammar {
    /// A fresh matcher for one sequence.
    pub fn constraint(&self) -> Constraint {
        Constraint(Box::new(Matching {
            matcher: Matcher::new(Ok(self.parser.deep_clone())),
            digits: self.json.then(|| DigitRuns::new(self.env.clone())),
            eos_ids: self.eos_ids.clone(),
        }))
    }
}

/// One sequence's place in the grammar.
struct Matching {
    matcher: Matcher,
    digits: Option<DigitRuns>,
    /// Every end-of-sequence id the model may use: llguidance knows one, and the mask allows
    /// them all where the grammar may end.
    eos_ids: Arc<[u32]>,
}

impl TokenConstraint for Matching {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self.matcher.compute_mask().map_err(|e| e.to_string())?;
        let can_end = self.eos_ids.iter().any(|&eos| allowed.is_allowed(eos));
        // The cap applies only where the grammar allows something else (a schema may need a
        // longer number; then it wins).
        let no_digit = self.digits.as_ref().is_some_and(|d| {
            d.at_limit()
                && (can_end || (0..allowed.len() as u32).any(|t| allowed.is_allowed(t) && !d.starts_with_digit(t)))
        });
        for (token, logit) in logits.iter_mut().enumerate() {
            let token = token as u32;
            let ok = (token as usize) < allowed.len()
                && allowed.is_allowed(token)
                && !(no_digit && self.digits.as_ref().is_some_and(|d| d.starts_with_digit(token)));
            if !(ok || can_end && self.eos_ids.contains(&token)) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    fn advance(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())?;
        if let Some(digits) = &mut self.digits {
            digits.advance(token);
        }
        Ok(())
    }

    fn rollback(&mut self, tokens: usize) -> Result<(), String> {
        self.matcher.rollback(tokens).map_err(|e| e.to_string())?;
        if let Some(digits) = &mut self.digits {
            digits.rollback(tokens);
        }
        Ok(())
    }

    fn is_complete(&self) -> bool {
        // A matcher in error is stopped too, but its text is not complete: the next mask or
        // advance reports the error, and the sequence fails.
        self.matcher.is_stopped() && !self.matcher.is_error()
    }
}
