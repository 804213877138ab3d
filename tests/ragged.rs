//! A ragged batch (sequences with different cached lengths and new-token counts in one forward)
//! gives the same logits and hidden states as each sequence run alone. On the in-repo model.
mod common;

use common::{load, random_module};
use recyclegpt_model::{KvCache, RecycleGpt, SeqInput};
use std::path::PathBuf;

/// The embedded model (`models/shakespeare`): always present, vocabulary 2048.
fn embedded() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A cache already holding `history`.
fn warmed_cache(model: &RecycleGpt, history: &[u32]) -> KvCache {
    let mut cache = model.new_cache(64).unwrap();
    if !history.is_empty() {
        model.forward(&mut [SeqInput { tokens: history, cache: &mut cache, logits_rows: vec![] }]).unwrap();
    }
    cache
}

#[test]
fn ragged_batch_of_three_equals_each_alone() {
    let loaded = load(&embedded(), random_module(6));
    let model = &loaded.model;
    // (history already cached, new tokens)
    let seqs: [(&[u32], &[u32]); 3] =
        [(&[], &[1, 403, 407, 261, 378]), (&[1, 317, 269, 274, 287, 263, 377], &[267]), (&[1, 13, 438], &[310, 426])];
    let mut alone_logits = Vec::new();
    let mut alone_hidden = Vec::new();
    for (history, new) in seqs {
        let mut cache = warmed_cache(model, history);
        let out = model
            .forward(&mut [SeqInput { tokens: new, cache: &mut cache, logits_rows: (0..new.len()).collect() }])
            .unwrap();
        alone_logits.extend(out.logits);
        alone_hidden.extend(out.hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    let mut caches: Vec<KvCache> = seqs.iter().map(|(h, _)| warmed_cache(model, h)).collect();
    let mut inputs: Vec<SeqInput> = seqs
        .iter()
        .zip(caches.iter_mut())
        .map(|((_, new), cache)| SeqInput { tokens: new, cache, logits_rows: (0..new.len()).collect() })
        .collect();
    let batched = model.forward(&mut inputs).unwrap();
    assert_eq!(batched.logits.len(), alone_logits.len());
    for (i, (b, a)) in batched.logits.iter().zip(&alone_logits).enumerate() {
        let diff = max_abs_diff(b, a);
        assert!(diff <= 1e-5, "row {i}: max abs diff {diff}");
    }
    let hidden = batched.hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(max_abs_diff(&hidden, &alone_hidden) <= 1e-5);
    for (cache, (history, new)) in caches.iter().zip(seqs) {
        assert_eq!(cache.len(), history.len() + new.len());
    }

    // The module's forward is ragged too, over its own caches.
    let d = model.config().hidden_size;
    let hidden_rows = candle_core::Tensor::randn(0f32, 1.0, (5 + 1 + 2, d), model.device()).unwrap();
    let mut module_caches: Vec<KvCache> = (0..3).map(|_| model.new_recycle_cache(64).unwrap().unwrap()).collect();
    let mut offset = 0;
    let mut alone = Vec::new();
    for ((_, new), cache) in seqs.iter().zip(module_caches.iter_mut()) {
        let rows = hidden_rows.narrow(0, offset, new.len()).unwrap();
        offset += new.len();
        let mut input = [SeqInput { tokens: new, cache, logits_rows: vec![new.len() - 1] }];
        alone.extend(model.recycle_forward(&rows, &mut input).unwrap());
    }
    let mut module_caches: Vec<KvCache> = (0..3).map(|_| model.new_recycle_cache(64).unwrap().unwrap()).collect();
    let mut inputs: Vec<SeqInput> = seqs
        .iter()
        .zip(module_caches.iter_mut())
        .map(|((_, new), cache)| SeqInput { tokens: new, cache, logits_rows: vec![new.len() - 1] })
        .collect();
    let batched = model.recycle_forward(&hidden_rows, &mut inputs).unwrap();
    for (b, a) in batched.iter().zip(&alone) {
        assert!(max_abs_diff(b, a) <= 1e-5);
    }
}

#[test]
fn rollback_is_a_length_reset() {
    let loaded = load(&embedded(), random_module(7));
    let model = &loaded.model;
    let mut cache = warmed_cache(model, &[1, 403, 407]);
    let step = |cache: &mut KvCache, tokens: &[u32]| {
        model.forward(&mut [SeqInput { tokens, cache, logits_rows: vec![tokens.len() - 1] }]).unwrap().logits.remove(0)
    };
    let direct = step(&mut cache, &[261]);
    cache.truncate(3);
    let _wrong = step(&mut cache, &[99, 100]);
    cache.truncate(3);
    let after_rollback = step(&mut cache, &[261]);
    assert_eq!(direct, after_rollback);
}
