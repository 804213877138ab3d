//! `--quantize q8_0` on the in-repo model: the quantized base stays close to f32 (teacher-forced
//! top-1 agreement), and verified recycling over it still equals plain decoding token for token.
mod common;

use common::run;
use recyclegpt_engine::{argmax, DecodeMode, SamplingParams};
use recyclegpt_model::{LoadOptions, LoadedModel, Quantization, SeqInput};
use std::path::PathBuf;

fn embedded(quantize: Option<Quantization>) -> LoadedModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare");
    LoadedModel::load(&dir, &LoadOptions { quantize, ..LoadOptions::default() }).expect("loads")
}

/// The argmax at every position of `text`, teacher-forced.
fn greedy_choices(loaded: &LoadedModel, text: &[u32]) -> Vec<u32> {
    let mut cache = loaded.model.new_cache(text.len()).unwrap();
    let rows = (0..text.len()).collect();
    let out = loaded.model.forward(&mut [SeqInput { tokens: text, cache: &mut cache, logits_rows: rows }]).unwrap();
    out.logits.iter().map(|row| argmax(row)).collect()
}

#[test]
fn q8_0_stays_close_to_f32() {
    let (f32_model, q8_model) = (embedded(None), embedded(Some(Quantization::Q8_0)));
    assert_eq!(q8_model.model.quantization(), Some(Quantization::Q8_0));
    let text = f32_model
        .tokenizer
        .encode("ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\nJULIET:\nO Romeo, Romeo, wherefore art thou Romeo?")
        .unwrap();
    let (a, b) = (greedy_choices(&f32_model, &text), greedy_choices(&q8_model, &text));
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let agreement = same as f64 / a.len() as f64;
    eprintln!("teacher-forced top-1 agreement, q8_0 vs f32: {same}/{} = {agreement:.3}", a.len());
    assert!(agreement >= 0.9, "{agreement}");
}

#[test]
fn verify_over_a_q8_0_base_equals_plain_decoding() {
    let q8 = embedded(Some(Quantization::Q8_0));
    for prompt in ["KING HENRY:\n", "First Citizen:\nBefore we proceed", "ROMEO:\nWhat light"] {
        let off = run(&q8, prompt, DecodeMode::Off, SamplingParams::greedy(), 60);
        let verify = run(&q8, prompt, DecodeMode::Verify, SamplingParams::greedy(), 60);
        assert_eq!(verify.ids, off.ids, "{prompt:?}");
        assert!(verify.stats.accepted > 0, "the trained module never agreed: {prompt:?}");
    }
}
