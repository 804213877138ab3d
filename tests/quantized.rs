//! `--quantize` on the in-repo model: a quantized base stays close to f32 (teacher-forced top-1
//! agreement), and verified recycling over it still equals plain decoding token for token.
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

/// Teacher-forced top-1 agreement with f32 along a text, for each format, at least `floor`.
#[test]
fn quantized_bases_stay_close_to_f32() {
    let f32_model = embedded(None);
    let text = f32_model
        .tokenizer
        .encode("ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\nJULIET:\nO Romeo, Romeo, wherefore art thou Romeo?")
        .unwrap();
    let reference = greedy_choices(&f32_model, &text);
    for (format, floor) in [(Quantization::Q8_0, 0.9), (Quantization::Q4_1, 0.8), (Quantization::Q4_0, 0.7)] {
        let quantized = embedded(Some(format));
        assert_eq!(quantized.model.quantization(), Some(format));
        let choices = greedy_choices(&quantized, &text);
        let same = reference.iter().zip(&choices).filter(|(x, y)| x == y).count();
        let agreement = same as f64 / reference.len() as f64;
        eprintln!("teacher-forced top-1 agreement, {format:?} vs f32: {same}/{} = {agreement:.3}", reference.len());
        assert!(agreement >= floor, "{format:?}: {agreement}");
    }
}

#[test]
fn verify_over_a_quantized_base_equals_plain_decoding() {
    for format in [Quantization::Q8_0, Quantization::Q4_1] {
        let base = embedded(Some(format));
        for prompt in ["KING HENRY:\n", "First Citizen:\nBefore we proceed", "ROMEO:\nWhat light"] {
            let off = run(&base, prompt, DecodeMode::Off, SamplingParams::greedy(), 60);
            let verify = run(&base, prompt, DecodeMode::Verify, SamplingParams::greedy(), 60);
            assert_eq!(verify.ids, off.ids, "{format:?} {prompt:?}");
            assert!(verify.stats.accepted > 0, "{format:?}: the trained module never agreed: {prompt:?}");
        }
    }
}
