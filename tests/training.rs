//! Joint training from scratch on a tiny corpus: the loss falls, an interrupted and resumed run
//! (across a context curriculum's change of window) ends with exactly the parameters of an
//! uninterrupted one, the result serves in every mode, a module of either form trains on it and
//! serves, and bad input is a clear error.
mod common;

use common::scratch;
use recyclegpt_engine::agreement::module_agreement;
use recyclegpt_engine::{generate, DecodeMode, SamplingParams, StopCriteria};
use recyclegpt_model::{LoadOptions, LoadedModel, SeqInput};
use recyclegpt_train::{train, ShortContext, TrainOptions, TrainSpec};
use std::path::PathBuf;

/// A small deterministic corpus of short sentences (about 60 KB).
fn corpus(dir: &std::path::Path) -> PathBuf {
    let subjects = ["The king", "A fool", "My lord", "The queen", "Sweet Juliet", "Good Romeo", "The ghost"];
    let verbs = ["doth speak", "shall go", "hath seen", "will love", "must fight", "cannot sleep"];
    let objects = ["of the night.", "to the castle.", "with a heavy heart.", "in fair Verona.", "upon the stage."];
    let mut state = 12345u64;
    let mut next = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    let lines: Vec<String> = (0..1500)
        .map(|_| {
            format!("{} {} {}", subjects[next(subjects.len())], verbs[next(verbs.len())], objects[next(objects.len())])
        })
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn tiny(steps: usize) -> TrainSpec {
    TrainSpec {
        vocab_size: 320,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        seq_len: 32,
        batch: 8,
        steps,
        warmup: 5,
        eval_every: 10,
        ..TrainSpec::default()
    }
}

fn quiet() -> TrainOptions {
    TrainOptions::default()
}

#[test]
fn training_lowers_the_loss_and_the_model_serves_in_every_mode() {
    let dir = scratch("train-loss");
    let data = corpus(&dir);
    let out = dir.join("model");
    let report = train(&[data], &out, &tiny(40), &quiet()).unwrap();
    assert_eq!(report.step, 40);
    let (first, last) = (&report.evals[0], report.evals.last().unwrap());
    assert!(last.loss < first.loss * 0.9, "{:?}", report.evals);
    assert!(last.agreement > 0.0 && last.agreement <= 1.0);

    let loaded = LoadedModel::load(&out, &LoadOptions::default()).unwrap();
    assert!(loaded.model.has_recycle());
    let prompt = loaded.tokenizer.encode("The king doth").unwrap();
    let run = |mode| {
        let stop = StopCriteria { max_tokens: 20, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
        generate(&loaded.model, prompt.clone(), mode, SamplingParams::greedy(), stop).unwrap()
    };
    let standard = run(DecodeMode::Off);
    assert_eq!(run(DecodeMode::Verify).ids, standard.ids);
    assert_eq!(run(DecodeMode::Alternate).stats.full_forwards * 2, run(DecodeMode::Alternate).ids.len());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let dir = scratch("train-resume");
    let data = corpus(&dir);
    let (whole, halves) = (dir.join("whole"), dir.join("halves"));
    // Windows of 8 tokens for 10 steps, then of 32: the run is split inside the long stage.
    let spec = TrainSpec { short_context: Some(ShortContext { seq_len: 8, batch: 32, steps: 10 }), ..tiny(30) };
    let report = train(std::slice::from_ref(&data), &whole, &spec, &quiet()).unwrap();
    assert_eq!(report.tokens_seen, 10 * 32 * 8 + 20 * 8 * 32);
    let first = TrainOptions { stop_after: Some(13), ..quiet() };
    assert_eq!(train(std::slice::from_ref(&data), &halves, &spec, &first).unwrap().step, 13);
    let rest = TrainOptions { resume: true, ..quiet() };
    assert_eq!(train(std::slice::from_ref(&data), &halves, &spec, &rest).unwrap().step, 30);
    let config = std::fs::read_to_string(halves.join("config.json")).unwrap();
    assert!(config.contains("\"max_position_embeddings\": 32"), "{config}");
    for file in ["model.safetensors", "recycle.safetensors", "optimizer.safetensors"] {
        let (a, b) = (std::fs::read(whole.join(file)).unwrap(), std::fs::read(halves.join(file)).unwrap());
        assert!(a == b, "{file} differs after resuming");
    }
}

/// `train-recycle` on text files whose lengths are not a multiple of the window: the files'
/// shorter tails never reach a batch.
#[test]
fn a_module_trains_from_files_of_any_length() {
    let dir = scratch("train-recycle-files");
    let data = corpus(&dir);
    let out = dir.join("model");
    train(std::slice::from_ref(&data), &out, &tiny(10), &quiet()).unwrap();
    let loaded = LoadedModel::load(&out, &LoadOptions::default()).unwrap();
    let text = std::fs::read_to_string(&data).unwrap();
    let files: Vec<PathBuf> = [7, 3, 1]
        .iter()
        .enumerate()
        .map(|(i, share)| {
            let path = dir.join(format!("part{i}.txt"));
            std::fs::write(&path, &text[..text.len() * share / 100]).unwrap();
            path
        })
        .collect();
    let corpus = recyclegpt_train::Corpus::from_files(&files, &loaded.tokenizer, 32).unwrap();
    let options = recyclegpt_train::DistillOptions { steps: 12, batch: 16, progress: false, ..Default::default() };
    let report = recyclegpt_train::train_recycle(&loaded.model, &out, &corpus, &dir.join("module"), &options).unwrap();
    assert!(report.last_loss.is_finite() && report.agreement > 0.0, "{report:?}");

    // Read back by --init with no step to take: the module written is the one read, tensor for
    // tensor, now with a chain whose agreement is reported and which it may draft.
    let further = recyclegpt_train::DistillOptions {
        init: Some(dir.join("module")),
        chain_steps: 2,
        steps: 0,
        ..options.clone()
    };
    let chained = dir.join("chained");
    let again = recyclegpt_train::train_recycle(&loaded.model, &out, &corpus, &chained, &further).unwrap();
    let tensors = |dir: &std::path::Path| {
        candle_core::safetensors::load(dir.join("recycle.safetensors"), &candle_core::Device::Cpu).unwrap()
    };
    let (before, after) = (tensors(&dir.join("module")), tensors(&chained));
    assert_eq!(before.len(), after.len());
    for (name, tensor) in &before {
        let same = (tensor - &after[name]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(same, 0.0, "{name} changed");
    }
    assert_eq!(again.agreement, report.agreement, "{again:?} after {report:?}");
    assert_eq!(again.chain_agreement.len(), 1, "{again:?}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chained.join("config.json")).unwrap()).unwrap();
    assert!(config["recycle"]["max_draft_tokens"].as_u64() >= Some(2), "{config}");
    let bigger = recyclegpt_train::DistillOptions { layers: 2, ..further.clone() };
    let e = recyclegpt_train::train_recycle(&loaded.model, &out, &corpus, &dir.join("x"), &bigger).unwrap_err();
    assert!(e.to_string().contains("--layers 1"), "{e}");
    let too_long = recyclegpt_train::DistillOptions { chain_steps: 32, ..further };
    let e = recyclegpt_train::train_recycle(&loaded.model, &out, &corpus, &dir.join("y"), &too_long).unwrap_err();
    assert!(e.to_string().contains("chain steps"), "{e}");
}

/// EAGLE-3's form: a module reading two base layers starts from a module of the paper's form
/// (agreeing as it did, to a near-tie), trains, round-trips through the files into serving (where it
/// agrees with the base as training measured) and keeps greedy `verify` equal to `off`.
#[test]
fn a_module_of_fused_layers_starts_from_the_papers_trains_and_serves() {
    let dir = scratch("train-recycle-fused");
    let data = corpus(&dir);
    let out = dir.join("model");
    train(std::slice::from_ref(&data), &out, &tiny(10), &quiet()).unwrap();
    let loaded = LoadedModel::load(&out, &LoadOptions::default()).unwrap();
    let corpus = recyclegpt_train::Corpus::from_files(&[data], &loaded.tokenizer, 32).unwrap();
    let paper = recyclegpt_train::DistillOptions { steps: 12, batch: 16, progress: false, ..Default::default() };
    let before = recyclegpt_train::train_recycle(&loaded.model, &out, &corpus, &dir.join("paper"), &paper).unwrap();
    let fused = recyclegpt_train::DistillOptions {
        init: Some(dir.join("paper")),
        feature_layers: Some(vec![1, 2]),
        steps: 0,
        ..paper.clone()
    };
    // fc starts passing the last feature layer through: only the model's last continues the module.
    let lower = recyclegpt_train::DistillOptions { feature_layers: Some(vec![1]), ..fused.clone() };
    let e = recyclegpt_train::train_recycle(&loaded.model, &out, &corpus, &dir.join("lower"), &lower).unwrap_err();
    assert!(e.to_string().contains("last feature layer"), "{e}");
    let start = recyclegpt_train::train_recycle(&loaded.model, &out, &corpus, &dir.join("start"), &fused).unwrap();
    // Equal in exact arithmetic; in floats the wider `fc` product sums in another order and the
    // norm runs twice, which may flip a near-tie at one position of thousands (it did on one
    // CPU of CI's), so the agreements stay within a few positions rather than bit for bit.
    assert!((start.agreement - before.agreement).abs() < 2e-3, "{start:?} from {before:?}");
    let trained = dir.join("fused");
    let report = recyclegpt_train::train_recycle(
        &loaded.model,
        &out,
        &corpus,
        &trained,
        &recyclegpt_train::DistillOptions { steps: 12, learning_rate: 1e-3, ..fused },
    )
    .unwrap();
    assert!(report.last_loss.is_finite(), "{report:?}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trained.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["recycle"]["feature_layers"], serde_json::json!([1, 2]), "{config}");

    let served = LoadedModel::load(&trained, &LoadOptions::default()).unwrap();
    let model = &served.model;
    let (mut same, mut compared) = (0, 0);
    for window in corpus.split(0.1).1 {
        let mut cache = model.new_cache(window.len()).unwrap();
        let rows = (1..window.len() - 1).collect();
        let out = model.forward(&mut [SeqInput { tokens: window, cache: &mut cache, logits_rows: rows }]).unwrap();
        let counts = module_agreement(model, window, &out.features, &out.logits, 1).unwrap().unwrap();
        (same, compared) = (same + counts.0, compared + counts.1);
    }
    let agreement = same as f64 / compared as f64;
    assert!((agreement - report.agreement).abs() < 0.05, "serving {agreement}, training {report:?}");
    let prompt = served.tokenizer.encode("The king doth").unwrap();
    let run = |mode| {
        let stop = StopCriteria { max_tokens: 24, eos_ids: served.tokenizer.eos_ids().to_vec() };
        generate(model, prompt.clone(), mode, SamplingParams::greedy(), stop).unwrap()
    };
    let verified = run(DecodeMode::Verify);
    assert_eq!(verified.ids, run(DecodeMode::Off).ids);
    assert!(verified.stats.accepted > 0, "{:?}", verified.stats);
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = scratch("train-errors");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let e = train(&[empty], &dir.join("a"), &tiny(5), &quiet()).unwrap_err().to_string();
    assert!(e.contains("tokenizer") || e.contains("tokens"), "{e}");
    let e = train(&[dir.join("missing.txt")], &dir.join("b"), &tiny(5), &quiet()).unwrap_err().to_string();
    assert!(e.contains("missing.txt") && e.contains("no such file"), "{e}");
    let data = corpus(&dir);
    let bad = TrainSpec { hidden_size: 30, num_attention_heads: 4, ..tiny(5) };
    let e = train(std::slice::from_ref(&data), &dir.join("c"), &bad, &quiet()).unwrap_err().to_string();
    assert!(e.contains("does not divide"), "{e}");
    let longer = TrainSpec { short_context: Some(ShortContext { seq_len: 64, batch: 4, steps: 2 }), ..tiny(5) };
    let e = train(&[data], &dir.join("d"), &longer, &quiet()).unwrap_err().to_string();
    assert!(e.contains("short_context"), "{e}");
}
