//! Greedy output equals llama2.c's own, token for token, for the HuggingFace checkpoint and for
//! the directory that `recyclegpt convert llama2c` makes from the llama2.c files.
mod common;

use common::{load, reference, run, scratch, stories260k};
use recyclegpt_engine::{DecodeMode, SamplingParams};
use recyclegpt_model::{llama2c, RecycleInit};
use std::path::Path;
use std::process::Command;

const REFERENCES: [&str; 2] = ["once_upon_a_time", "lily_tom_park"];

fn assert_matches_references(model_dir: &Path, shared: &Path) {
    let loaded = load(model_dir, RecycleInit::FromFiles);
    for name in REFERENCES {
        let (prompt, expected) = reference(shared, name);
        let prompt_ids = loaded.tokenizer.encode(&prompt).unwrap();
        assert_eq!(prompt_ids[0], 1, "BOS first");
        let prompt_len = prompt_ids.len() - 1;
        assert_eq!(&prompt_ids[1..], &expected[..prompt_len], "{name}: prompt tokens");
        let want = &expected[prompt_len..];
        let got = run(&loaded, &prompt, DecodeMode::Off, SamplingParams::greedy(), want.len());
        assert_eq!(got.ids, want, "{name}: greedy ids from {}", model_dir.display());
    }
}

#[test]
fn hf_checkpoint_matches_llama2c() {
    let Some(shared) = stories260k() else { return };
    assert_matches_references(&shared.join("hf"), &shared);
}

#[test]
fn converted_llama2c_checkpoint_matches_llama2c_with_either_tokenizer() {
    let Some(shared) = stories260k() else { return };
    for tokenizer in ["tok512.bin", "tok512.model"] {
        let out = scratch(&format!("converted-{tokenizer}"));
        llama2c::convert(&shared.join("llama2c/stories260K.bin"), &shared.join(format!("llama2c/{tokenizer}")), &out)
            .expect("converts");
        assert_matches_references(&out, &shared);
        // The converted tokenizer splits text exactly as the HuggingFace one does.
        let ours = load(&out, RecycleInit::FromFiles).tokenizer;
        let theirs = load(&shared.join("hf"), RecycleInit::FromFiles).tokenizer;
        for text in ["Hello world!", "  two  spaces", "über naïve café ☃ 12345", "The dog's ball\nnew line"] {
            assert_eq!(ours.encode(text).unwrap(), theirs.encode(text).unwrap(), "{tokenizer}: {text:?}");
            let ids = ours.encode(text).unwrap();
            assert_eq!(ours.decode(&ids).unwrap(), theirs.decode(&ids).unwrap());
        }
        // llama2.c stops on BOS as well as EOS.
        assert_eq!(ours.eos_ids(), &[2, 1]);
    }
}

#[test]
fn generate_command_prints_prompt_and_completion_or_json() {
    let Some(shared) = stories260k() else { return };
    let (prompt, expected) = reference(&shared, "once_upon_a_time");
    let bin = env!("CARGO_BIN_EXE_recyclegpt");
    let hf = shared.join("hf");
    let json = Command::new(bin)
        .args(["generate", "--model"])
        .arg(&hf)
        .args(["--prompt", &prompt, "--max-tokens", "20", "--json"])
        .output()
        .expect("runs");
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("stdout is one JSON object");
    let ids: Vec<u32> = serde_json::from_value(report["ids"].clone()).unwrap();
    assert_eq!(ids, &expected[4..24]);
    assert_eq!(report["mode"], "off");
    assert_eq!(report["full_forwards"], 20);
    assert!(report["tokens_per_second"].as_f64().unwrap() > 0.0);
    for key in ["prompt_ids", "text", "tokens_per_full_forward", "recycle_steps", "accepted", "rejected"] {
        assert!(report.get(key).is_some(), "missing {key}");
    }

    let text = Command::new(bin)
        .args(["generate", "--model"])
        .arg(&hf)
        .args(["--prompt", &prompt, "--max-tokens", "20"])
        .output()
        .expect("runs");
    assert!(text.status.success());
    let stdout = String::from_utf8(text.stdout).unwrap();
    assert_eq!(stdout.trim_end(), format!("{prompt}{}", report["text"].as_str().unwrap()).trim_end());
    assert!(stdout.starts_with("Once upon a time, there was a little girl named Lily."), "{stdout}");

    let no_module = Command::new(bin)
        .args(["generate", "--model"])
        .arg(&hf)
        .args(["--prompt", &prompt, "--mode", "verify"])
        .output()
        .expect("runs");
    assert!(!no_module.status.success());
    assert!(String::from_utf8_lossy(&no_module.stderr).contains("needs a recyclable module"));
}
