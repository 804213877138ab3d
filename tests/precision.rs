//! Half precision through candle's device-generic ops: the path a GPU runs (the CPU kernels are
//! f32-only), exercised here on the CPU. f16 and bf16 keep the reference's greedy tokens, verify
//! still equals standard, and a batched step equals each sequence alone.
mod common;

use candle_core::{DType, Device};
use common::{reference, run, stories260k};
use recyclegpt_engine::{argmax, DecodeMode, SamplingParams};
use recyclegpt_model::{LoadOptions, LoadedModel, RecycleInit, SeqInput};
use std::path::Path;

fn load(dir: &Path, dtype: DType, recycle_init: RecycleInit) -> LoadedModel {
    let options = LoadOptions { recycle_init, device: Device::Cpu, dtype, quantize: None };
    LoadedModel::load(dir, &options).expect("the model loads in half precision")
}

#[test]
fn half_precision_follows_the_reference_greedy_tokens() {
    let Some(shared) = stories260k() else { return };
    for (dtype, min_agreement) in [(DType::F16, 0.97), (DType::BF16, 0.9)] {
        let loaded = load(&shared.join("hf"), dtype, RecycleInit::FromFiles);
        let (prompt, reference_ids) = reference(&shared, "once_upon_a_time");
        // The reference lists the prompt's ids (after BOS), then the generated ones.
        let mut ids = loaded.tokenizer.encode(&prompt).expect("encodes");
        let prompt_len = ids.len();
        let expected = reference_ids[prompt_len - 1..].to_vec();
        // Teacher-forced: one forward over prompt + reference, each position predicts the next.
        ids.extend(&expected);
        let mut cache = loaded.model.new_cache(ids.len()).expect("cache");
        let rows: Vec<usize> = (prompt_len - 1..ids.len() - 1).collect();
        let out = loaded
            .model
            .forward(&mut [SeqInput { tokens: &ids, cache: &mut cache, logits_rows: rows }])
            .expect("forward");
        let agree = out.logits.iter().zip(&expected).filter(|(row, &id)| argmax(row) == id).count();
        let agreement = agree as f64 / expected.len() as f64;
        assert!(
            agreement >= min_agreement,
            "{dtype:?}: {agree} of {} positions pick the reference token",
            expected.len()
        );
        // Free-running greedy decoding starts on the reference's path.
        let generated = run(&loaded, &prompt, DecodeMode::Off, SamplingParams::greedy(), 16);
        assert_eq!(generated.ids[..16], expected[..16], "{dtype:?}");
    }
}

#[test]
fn half_precision_verify_equals_standard() {
    let Some(shared) = stories260k() else { return };
    let loaded = load(&shared.join("hf"), DType::F16, RecycleInit::Random { seed: 7, layers: 1 });
    for prompt in ["Once upon a time", "Lily and Tom went to the park", "The cat"] {
        let standard = run(&loaded, prompt, DecodeMode::Off, SamplingParams::greedy(), 60);
        let verify = run(&loaded, prompt, DecodeMode::Verify, SamplingParams::greedy(), 60);
        assert_eq!(verify.ids, standard.ids, "{prompt:?}");
        assert!(verify.stats.rejected > 0, "drafts are checked: {:?}", verify.stats);
    }
}

#[test]
fn half_precision_batched_step_equals_each_sequence_alone() {
    let Some(shared) = stories260k() else { return };
    let loaded = load(&shared.join("hf"), DType::F16, RecycleInit::FromFiles);
    let prompts: [&[u32]; 3] = [&[1, 403, 407, 261], &[1, 500, 72, 303, 98, 404, 407], &[1, 9]];
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .map(|tokens| {
            let mut cache = loaded.model.new_cache(16).expect("cache");
            let rows = vec![tokens.len() - 1];
            let out = loaded.model.forward(&mut [SeqInput { tokens, cache: &mut cache, logits_rows: rows }]);
            out.expect("forward").logits.remove(0)
        })
        .collect();
    let mut caches: Vec<_> = (0..3).map(|_| loaded.model.new_cache(16).expect("cache")).collect();
    let mut inputs: Vec<SeqInput> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(tokens, cache)| SeqInput { tokens, cache, logits_rows: vec![tokens.len() - 1] })
        .collect();
    let batched = loaded.model.forward(&mut inputs).expect("batched forward").logits;
    for (one, many) in alone.iter().zip(&batched) {
        let diff = one.iter().zip(many).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 2e-2, "batched and alone differ by {diff}");
        assert_eq!(argmax(one), argmax(many));
    }
}
