//! The embedded default model (`models/shakespeare`, trained by this project): it loads with its
//! trained module, generates in every mode, `verify` never changes greedy output, and it keeps
//! writing words, with its module still agreeing, deep into its 1,024-token context.
mod common;

use common::run;
use recyclegpt_engine::{DecodeMode, SamplingParams};
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleSource};
use std::path::PathBuf;

fn default_model() -> LoadedModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare");
    LoadedModel::load(&dir, &LoadOptions::default()).expect("the embedded default model loads")
}

#[test]
fn the_default_model_serves_every_mode_and_verify_equals_standard() {
    let loaded = default_model();
    assert_eq!(loaded.model.recycle_source(), RecycleSource::Trained);
    for prompt in ["ROMEO. ", "To be, or not to be", "KING. My lords,"] {
        let standard = run(&loaded, prompt, DecodeMode::Off, SamplingParams::greedy(), 60);
        let verify = run(&loaded, prompt, DecodeMode::Verify, SamplingParams::greedy(), 60);
        let alternate = run(&loaded, prompt, DecodeMode::Alternate, SamplingParams::greedy(), 60);
        assert_eq!(verify.ids, standard.ids, "{prompt:?}");
        assert!(verify.stats.accepted > verify.stats.rejected, "{prompt:?}: {:?}", verify.stats);
        assert_eq!(alternate.stats.full_forwards * 2, alternate.ids.len());
        let text = loaded.tokenizer.decode(&standard.ids).unwrap();
        assert!(text.chars().filter(|c| c.is_alphabetic()).count() > 40, "{text:?}");
    }
}

#[test]
fn it_continues_a_long_prompt_near_the_end_of_its_context() {
    let loaded = default_model();
    assert!(loaded.model.context_len() >= 1024, "context {}", loaded.model.context_len());
    // About 925 tokens of one repeated line, then the model's own 64 tokens, to near position 1,000.
    let line = "CLAUDIO. O, what a world is this, when what is comely envenoms him that bears it!\n";
    let prompt = line.repeat(33);
    let tokens = loaded.tokenizer.encode(&prompt).unwrap().len();
    assert!((850..1000).contains(&tokens), "{tokens} prompt tokens");
    let standard = run(&loaded, &prompt, DecodeMode::Off, SamplingParams::greedy(), 64);
    let verify = run(&loaded, &prompt, DecodeMode::Verify, SamplingParams::greedy(), 64);
    assert_eq!(verify.ids, standard.ids);
    // There it still writes words (this one starts a new scene), not byte soup.
    let text = loaded.tokenizer.decode(&standard.ids).unwrap();
    assert!(text.chars().filter(|c| c.is_alphabetic()).count() > 60 && !text.contains('\u{FFFD}'), "{text:?}");
    assert!(verify.stats.accepted > verify.stats.rejected, "{:?}", verify.stats);
}

#[test]
fn the_generate_command_defaults_to_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recyclegpt"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["generate", "--prompt", "HAMLET.", "--max-tokens", "20", "--mode", "verify"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("HAMLET."));
}

/// `generate --prompt-lookup false` leaves drafting to the module; by default `verify` also
/// drafts from the text, which the embedded model's greedy answers repeat.
#[test]
fn the_generate_command_turns_prompt_lookup_off() {
    let text_drafts = |lookup: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recyclegpt"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["generate", "--prompt", "ROMEO.", "--max-tokens", "100", "--mode", "verify", "--json"])
            .args(["--prompt-lookup", lookup])
            .output()
            .expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        report["text_drafted"].as_u64().expect("text_drafted")
    };
    // How many text drafts pay depends on the costs the command measures at start-up, which a
    // loaded machine (the other tests' processes) can make look dear: some run of three drafts.
    assert!((0..3).any(|_| text_drafts("true") > 0), "prompt lookup never drafted from the text");
    assert_eq!(text_drafts("false"), 0);
}
