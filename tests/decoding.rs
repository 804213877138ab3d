//! The three schedules on real weights: `verify` never changes greedy output, `alternate` emits
//! two tokens per full forward, seeds make sampling repeatable, and a batched step gives each
//! sequence what it gets alone. All on the in-repo model (`models/shakespeare`, context 128).
mod common;

use common::{load, random_module, run};
use recyclegpt_engine::{step, DecodeMode, SamplingParams, Sequence, StopCriteria};
use std::path::PathBuf;

/// The embedded model: always present, so these tests run on a fresh clone.
fn embedded() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare")
}

/// From 6 to 20 tokens with BOS, so that 100 more still fit the 128-token context.
const PROMPTS: [&str; 4] = [
    "Once upon a time",
    "ROMEO.",
    "To be, or not to be, that is the question",
    "Now is the winter of our discontent made glorious summer by this sun of York",
];

#[test]
fn verify_greedy_equals_standard_greedy_with_a_random_module() {
    for seed in [1, 2] {
        let loaded = load(&embedded(), random_module(seed));
        for prompt in PROMPTS {
            for max_tokens in [1, 2, 7, 40, 100] {
                let standard = run(&loaded, prompt, DecodeMode::Off, SamplingParams::greedy(), max_tokens);
                let verify = run(&loaded, prompt, DecodeMode::Verify, SamplingParams::greedy(), max_tokens);
                assert_eq!(verify.ids, standard.ids, "{prompt:?}, max_tokens {max_tokens}");
                assert_eq!(verify.finish_reason, standard.finish_reason);
                let stats = verify.stats;
                // Every full forward after the first checks one draft.
                assert_eq!(stats.accepted + stats.rejected + 1, stats.full_forwards, "{stats:?}");
                if max_tokens >= 40 {
                    assert!(stats.rejected > 0, "a random module is rejected, exercising rollback");
                }
            }
        }
    }
}

#[test]
fn alternate_emits_two_tokens_per_full_forward() {
    let loaded = load(&embedded(), random_module(3));
    for prompt in PROMPTS {
        let out = run(&loaded, prompt, DecodeMode::Alternate, SamplingParams::greedy(), 40);
        assert_eq!(out.ids.len(), 40);
        assert_eq!(out.stats.full_forwards, 20, "{:?}", out.stats);
        assert_eq!(out.stats.recycle_steps, 20);
        assert_eq!(out.tokens_per_full_forward(), 2.0);
        // Every other token is the module's: with a random module the text departs from standard.
        let standard = run(&loaded, prompt, DecodeMode::Off, SamplingParams::greedy(), 40);
        assert_eq!(out.ids[0], standard.ids[0], "the first token comes from the full model");
        assert_ne!(out.ids, standard.ids);
    }
}

#[test]
fn same_seed_same_text_different_seed_different_text() {
    let loaded = load(&embedded(), random_module(4));
    for mode in [DecodeMode::Off, DecodeMode::Alternate, DecodeMode::Verify] {
        let sample = |seed| {
            let params =
                SamplingParams { temperature: 1.0, top_p: 0.95, seed: Some(seed), ..SamplingParams::default() };
            run(&loaded, "Once upon a time", mode, params, 48).ids
        };
        assert_eq!(sample(11), sample(11), "{mode:?}");
        assert_ne!(sample(11), sample(12), "{mode:?}");
    }
}

#[test]
fn a_batched_step_gives_each_sequence_what_it_gets_alone() {
    let loaded = load(&embedded(), random_module(5));
    let model = &loaded.model;
    let cases = [
        (PROMPTS[0], DecodeMode::Off, 30),
        (PROMPTS[1], DecodeMode::Verify, 45),
        (PROMPTS[2], DecodeMode::Alternate, 20),
        (PROMPTS[3], DecodeMode::Verify, 64),
    ];
    let stop = |max_tokens| StopCriteria { max_tokens, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    let mut seqs: Vec<Sequence> = cases
        .iter()
        .enumerate()
        .map(|(i, (prompt, mode, max))| {
            let ids = loaded.tokenizer.encode(prompt).unwrap();
            Sequence::new(i as u64, model, ids, *mode, SamplingParams::greedy(), stop(*max)).unwrap()
        })
        .collect();
    // Small prefill chunks so that prefill and decode share steps.
    while seqs.iter().any(|s| !s.is_finished()) {
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
        step(model, &mut refs, 5).unwrap();
    }
    for (seq, (prompt, mode, max)) in seqs.iter().zip(cases) {
        let alone = run(&loaded, prompt, mode, SamplingParams::greedy(), max);
        assert_eq!(seq.generated(), alone.ids.as_slice(), "{prompt:?} in {mode:?}");
    }
}

#[test]
fn verify_equals_standard_when_drafts_are_often_accepted() {
    let loaded = load(&embedded(), random_module(8));
    // A bias on common tokens makes the random module's drafts agree with the model often,
    // so that both the accept and the reject paths run in one generation.
    let common_ids: Vec<u32> =
        [",", " the", " and"].iter().map(|t| *loaded.tokenizer.encode(t).unwrap().last().unwrap()).collect();
    let (mut accepted, mut rejected) = (0, 0);
    for bias in [3.0, 6.0, 8.0] {
        let logit_bias = common_ids.iter().map(|&id| (id, bias)).collect();
        let params = SamplingParams { logit_bias, ..SamplingParams::greedy() };
        for prompt in PROMPTS {
            let standard = run(&loaded, prompt, DecodeMode::Off, params.clone(), 60);
            let verify = run(&loaded, prompt, DecodeMode::Verify, params.clone(), 60);
            assert_eq!(verify.ids, standard.ids, "{prompt:?}, bias {bias}");
            accepted += verify.stats.accepted;
            rejected += verify.stats.rejected;
        }
    }
    assert!(accepted > 20 && rejected > 20, "accepted {accepted}, rejected {rejected}");
}

#[test]
fn a_distilled_module_agrees_with_the_model_and_verify_still_equals_standard() {
    let hf = embedded();
    let base = load(&hf, recyclegpt_model::RecycleInit::FromFiles);
    let corpus = recyclegpt_train::Corpus::self_distilled(&base.model, &base.tokenizer, 48, 64, 7).unwrap();
    let out = common::scratch("distilled");
    let options = recyclegpt_train::DistillOptions { steps: 60, batch: 8, progress: false, ..Default::default() };
    let report = recyclegpt_train::train_recycle(&base.model, &hf, &corpus, &out, &options).unwrap();
    assert!(report.last_loss < report.first_loss * 0.6, "{report:?}");

    // The written directory loads with its trained module, which beats a random one.
    let trained = load(&out, recyclegpt_model::RecycleInit::FromFiles);
    assert_eq!(trained.model.recycle_source(), recyclegpt_model::RecycleSource::Trained);
    let random = load(&hf, random_module(9));
    let verify = |loaded: &recyclegpt_model::LoadedModel| {
        run(loaded, PROMPTS[1], DecodeMode::Verify, SamplingParams::greedy(), 80)
    };
    let (with_trained, with_random) = (verify(&trained), verify(&random));
    assert!(report.agreement > 0.25, "{report:?}");
    assert!(
        with_trained.tokens_per_full_forward() > with_random.tokens_per_full_forward() + 0.1,
        "trained {:?} vs random {:?}",
        with_trained.stats,
        with_random.stats
    );
    let standard = run(&trained, PROMPTS[1], DecodeMode::Off, SamplingParams::greedy(), 80);
    assert_eq!(with_trained.ids, standard.ids);

    // `eval` sees the same: more agreement, and alternate text the model finds far likelier.
    // Its data: text the model itself writes from two prompts (greedy, as llama2.c's references).
    let eval_dir = common::scratch("distilled-eval");
    let data: Vec<PathBuf> = PROMPTS[..2]
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let ids = run(&base, prompt, DecodeMode::Off, SamplingParams::greedy(), 60).ids;
            let text = base.tokenizer.decode_continuation(&ids);
            let path = eval_dir.join(format!("{i}.txt"));
            std::fs::write(&path, format!("{prompt}{text}")).unwrap();
            path
        })
        .collect();
    let options = recyclegpt_train::EvalOptions { prompts: 2, generate_tokens: 32, ..Default::default() };
    let good = recyclegpt_train::evaluate(&trained.model, &trained.tokenizer, &data, &options).unwrap();
    let bad = recyclegpt_train::evaluate(&random.model, &random.tokenizer, &data, &options).unwrap();
    assert!(good.perplexity > 1.0 && good.perplexity < 20.0, "{good:?}");
    assert_eq!(good.perplexity, bad.perplexity, "the module does not change the full model");
    assert!(good.agreement > bad.agreement, "{good:?} vs {bad:?}");
    assert!(good.alternate_generation_perplexity < bad.alternate_generation_perplexity);
    assert!(good.verify_tokens_per_full_forward > bad.verify_tokens_per_full_forward);
}
