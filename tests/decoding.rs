//! The schedules on real weights: `verify` and `auto` never change greedy output, `auto` stops
//! drafting where drafts are rejected, `alternate` emits two tokens per full forward, seeds make
//! sampling repeatable, and a batched step gives each sequence what it gets alone. All on the in-repo model (`models/shakespeare`).
mod common;

use common::{load, random_module, run};
use recyclegpt_engine::{step, CostModel, DecodeMode, SamplingParams, Sequence, StopCriteria};
use std::path::PathBuf;

/// The embedded model: always present, so these tests run on a fresh clone.
fn embedded() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare")
}

/// From 6 to 20 tokens with BOS, so that 100 more fit the context.
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
                // Every full forward after the first checks drafts (the module's, or the
                // text's where it repeats itself), and rejects at most one.
                assert_eq!(stats.drafts + 1, stats.full_forwards, "{stats:?}");
                assert!(stats.rejected <= stats.drafts, "{stats:?}");
                if max_tokens >= 40 {
                    assert!(stats.rejected > 0, "a random module is rejected, exercising rollback");
                }
            }
        }
    }
}

/// `auto` on a module that never agrees: greedy output stays the standard one, and after a few
/// rejected drafts it drafts only as rare probes.
#[test]
fn auto_equals_standard_and_stops_drafting_on_a_random_module() {
    let loaded = load(&embedded(), random_module(1));
    for prompt in PROMPTS {
        for max_tokens in [1, 7, 100] {
            let standard = run(&loaded, prompt, DecodeMode::Off, SamplingParams::greedy(), max_tokens);
            // Where drafts are cheap, so that `auto` gives up on the module as late as it
            // ever does (measured costs would make the count depend on the machine's load).
            let auto = run_auto_where_drafts_are_cheap(&loaded, prompt, SamplingParams::greedy(), max_tokens);
            assert_eq!(auto.generated(), standard.ids.as_slice(), "{prompt:?}, max_tokens {max_tokens}");
            let stats = auto.stats();
            // A few rejected drafts until the acceptance estimate falls below break-even, then
            // rare probes.
            if max_tokens == 100 {
                assert!(stats.recycle_steps <= 20 && stats.skipped_drafts >= 80, "{prompt:?}: {stats:?}");
            }
        }
    }
}

/// A server learns what its module is worth across requests: once a few `auto` requests found
/// a random module's drafts rejected, the next one starts from that (probes only) instead of
/// trying the module afresh, and its output is still the standard one.
#[test]
fn later_requests_start_from_what_earlier_ones_learned_of_the_module() {
    use recyclegpt_engine::scheduler::Budget;
    use recyclegpt_engine::{Scheduler, SchedulerConfig, SequenceRequest};
    let loaded = load(&embedded(), random_module(1));
    let cheap = CostModel::from_points(vec![(1, 0.010), (2, 0.0105), (4, 0.0115)], vec![(1, 0.001), (2, 0.0011)]);
    let config = SchedulerConfig {
        budget: Budget { max_running: 1, kv_tokens: 4096 },
        prefill_chunk: 64,
        prefix_caching: false,
        prompt_lookup: true,
    };
    let mut scheduler = Scheduler::new(config, 1024, Some(cheap));
    let prompt = loaded.tokenizer.encode(PROMPTS[0]).unwrap();
    let standard = run(&loaded, PROMPTS[0], DecodeMode::Off, SamplingParams::greedy(), 64);
    let mut module_steps = Vec::new();
    for id in 0..6 {
        scheduler.enqueue(SequenceRequest {
            id,
            prompt: prompt.clone(),
            mode: DecodeMode::Auto,
            params: SamplingParams::greedy(),
            stop: StopCriteria { max_tokens: 64, eos_ids: loaded.tokenizer.eos_ids().to_vec() },
            constraint: None,
        });
        let (mut tokens, mut finished) = (Vec::new(), None);
        while finished.is_none() {
            for update in scheduler.step(&loaded.model).unwrap().updates {
                tokens.extend(update.tokens);
                finished = update.finished;
            }
        }
        assert_eq!(tokens, standard.ids, "request {id}");
        module_steps.push(finished.unwrap().stats.recycle_steps);
    }
    // The first request drafts until its estimate falls below break-even; the last only probes.
    let (first, last) = (module_steps[0], module_steps[5]);
    assert!(first >= 5 && last * 2 <= first, "module steps per request: {module_steps:?}");
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
    for mode in [DecodeMode::Off, DecodeMode::Alternate, DecodeMode::Verify, DecodeMode::Auto] {
        let sample = |seed| {
            let params =
                SamplingParams { temperature: 1.0, top_p: 0.95, seed: Some(seed), ..SamplingParams::default() };
            run(&loaded, "Once upon a time", mode, params, 48).ids
        };
        assert_eq!(sample(11), sample(11), "{mode:?}");
        assert_ne!(sample(11), sample(12), "{mode:?}");
    }
}

/// Seeded sampling gives the same text whatever the device's costs: drafting for it never
/// follows the measured costs (chains whose length did would spend the seed's draws differently).
#[test]
fn seeded_sampling_does_not_depend_on_draft_costs() {
    let loaded = load(&embedded(), recyclegpt_model::RecycleInit::FromFiles);
    let cheap = CostModel::from_points(vec![(1, 0.010), (2, 0.0101), (4, 0.0102)], vec![(1, 0.0001), (2, 0.0001)]);
    let dear = CostModel::from_points(vec![(1, 0.010), (2, 0.018), (4, 0.034)], vec![(1, 0.008), (2, 0.009)]);
    let sample = |mut costs: CostModel| {
        let params = SamplingParams { temperature: 0.8, seed: Some(3), ..SamplingParams::default() };
        let ids = loaded.tokenizer.encode("ROMEO. ").unwrap();
        let stop = StopCriteria { max_tokens: 48, eos_ids: Vec::new() };
        let mut seq = Sequence::new(0, &loaded.model, ids, DecodeMode::Verify, params, stop).unwrap();
        while !seq.is_finished() {
            step(&loaded.model, &mut [&mut seq], 64, Some(&mut costs)).unwrap();
        }
        seq.generated().to_vec()
    };
    assert_eq!(sample(cheap), sample(dear));
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
        (PROMPTS[0], DecodeMode::Auto, 50),
        (PROMPTS[2], DecodeMode::Auto, 3),
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
    // Small prefill chunks so that prefill and decode share steps; `auto` decides with the
    // costs measured here.
    let mut costs = CostModel::measure(model, cases.len()).unwrap();
    let measured = costs.clone().expect("a model with a module gets a cost model");
    while seqs.iter().any(|s| !s.is_finished()) {
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
        step(model, &mut refs, 5, costs.as_mut()).unwrap();
    }
    // The steps timed themselves into the figures (no timing lands exactly on the estimate).
    let learned = costs.expect("still there");
    assert!((1..=4).any(|n| learned.full_seconds(n) != measured.full_seconds(n)), "decoding forwards were observed");
    assert!(learned.module_seconds(1) != measured.module_seconds(1), "module steps were observed");
    for (seq, (prompt, mode, max)) in seqs.iter().zip(cases) {
        let alone = run(&loaded, prompt, mode, SamplingParams::greedy(), max);
        assert_eq!(seq.generated(), alone.ids.as_slice(), "{prompt:?} in {mode:?}");
    }
}

#[test]
fn verify_equals_standard_when_drafts_are_often_accepted() {
    // The trained module agrees with the model on about two tokens in three, so both the
    // accept and the reject paths run in every generation; greedy and with a logit bias.
    let loaded = load(&embedded(), recyclegpt_model::RecycleInit::FromFiles);
    let common_ids: Vec<u32> =
        [",", " the", " and"].iter().map(|t| *loaded.tokenizer.encode(t).unwrap().last().unwrap()).collect();
    let (mut accepted, mut rejected, mut auto_accepted) = (0, 0, 0);
    for bias in [0.0, 2.0] {
        let logit_bias = common_ids.iter().map(|&id| (id, bias)).collect();
        let params = SamplingParams { logit_bias, ..SamplingParams::greedy() };
        for prompt in PROMPTS {
            let standard = run(&loaded, prompt, DecodeMode::Off, params.clone(), 60);
            let verify = run(&loaded, prompt, DecodeMode::Verify, params.clone(), 60);
            assert_eq!(verify.ids, standard.ids, "{prompt:?}, bias {bias}");
            accepted += verify.stats.accepted;
            rejected += verify.stats.rejected;
            let auto = run_auto_where_drafts_are_cheap(&loaded, prompt, params.clone(), 60);
            assert_eq!(auto.generated(), standard.ids.as_slice(), "auto: {prompt:?}, bias {bias}");
            auto_accepted += auto.stats().accepted;
        }
    }
    assert!(accepted > 20 && rejected > 20, "accepted {accepted}, rejected {rejected}");
    // Where drafts are often accepted and cheap, `auto` goes on drafting.
    assert!(auto_accepted > accepted / 2, "auto accepted {auto_accepted} of verify's {accepted}");
}

/// Chains of up to three drafts (on a device where drafts would cost nothing, so every chain
/// runs to its end) never change greedy output, alone or batched beside other modes, and drafts
/// beyond the first are accepted too.
#[test]
fn chained_drafts_never_change_greedy_output_alone_or_batched() {
    let loaded = load(&embedded(), random_module(8));
    let mut free = CostModel::from_points(vec![(1, 0.010), (256, 0.010)], vec![(1, 0.0), (256, 0.0)]);
    let common_ids: Vec<u32> =
        [",", " the", " and"].iter().map(|t| *loaded.tokenizer.encode(t).unwrap().last().unwrap()).collect();
    let (mut beyond_first, mut draft_tokens, mut forwards) = (0, 0, 0);
    // Three common tokens favoured (drafts often rejected, at any place in the chain), then one
    // token favoured so strongly that whole chains are accepted.
    for (favoured, bias) in [(3, 8.0), (1, 30.0)] {
        let logit_bias = common_ids[..favoured].iter().map(|&id| (id, bias)).collect();
        let params = SamplingParams { logit_bias, ..SamplingParams::greedy() };
        let modes = [DecodeMode::Verify, DecodeMode::Auto, DecodeMode::Off, DecodeMode::Auto];
        // The module's chains alone (the favoured tokens make the text repeat itself, where
        // drafts read from the text would stand in for them).
        let chains = |seq: Sequence| seq.with_max_drafts(3).with_prompt_lookup(false);
        let seqs = run_batch(&loaded, modes, &params, 60, chains, &mut free);
        for (seq, (prompt, mode)) in seqs.iter().zip(PROMPTS.iter().zip(modes)) {
            let alone = run(&loaded, prompt, DecodeMode::Off, params.clone(), 60);
            assert_eq!(seq.generated(), alone.ids.as_slice(), "{prompt:?} in {mode:?}, bias {bias}");
            let stats = seq.stats();
            beyond_first += stats.accepted_at[1] + stats.accepted_at[2];
            draft_tokens += stats.draft_tokens();
            forwards += stats.full_forwards;
        }
    }
    assert!(
        beyond_first > 5,
        "chained drafts accepted beyond the first: {beyond_first} ({draft_tokens} draft tokens, {forwards} forwards)"
    );
    assert!(draft_tokens > forwards, "{draft_tokens} draft tokens over {forwards} forwards: chains ran");
}

/// What drafting costs a sequence, as `auto` learns it: the rows its chains put into forwards
/// and the module steps they ran, trimmed links included, counted afresh for every verification
/// (a count carried across steps would grow without bound).
#[test]
fn a_sequence_learns_what_its_chains_cost() {
    let loaded = load(&embedded(), recyclegpt_model::RecycleInit::FromFiles);
    // Chains run while the chance that all drafts are accepted stays above a tenth, so some are
    // trimmed after their module step.
    let mut costs = CostModel::from_points(vec![(1, 0.010), (8, 0.0107)], vec![(1, 0.0005), (8, 0.0006)]);
    let stop = StopCriteria { max_tokens: 120, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    let (mut rows_above_one, mut trimmed) = (0, 0);
    for prompt in PROMPTS {
        let ids = loaded.tokenizer.encode(prompt).unwrap();
        let mut seq = Sequence::new(0, &loaded.model, ids, DecodeMode::Verify, SamplingParams::greedy(), stop.clone())
            .unwrap()
            .with_max_drafts(3)
            .with_prompt_lookup(false);
        while !seq.is_finished() {
            step(&loaded.model, &mut [&mut seq], 64, Some(&mut costs)).unwrap();
        }
        let (value, stats) = (seq.draft_value(), seq.stats());
        assert!(value.rows >= 1.0 && value.rows <= 3.0, "{prompt:?}: {value:?}");
        assert!(value.steps >= value.rows && value.steps <= 4.0, "{prompt:?}: {value:?} {stats:?}");
        // Every module step beyond the drafts verified (and the last, unverified chain) is a
        // trimmed link, and shows in the steps.
        if stats.recycle_steps > stats.draft_tokens() + 3 {
            trimmed += 1;
            assert!(value.steps > value.rows, "{prompt:?}: {value:?} {stats:?}");
        }
        rows_above_one += usize::from(value.rows > 1.0);
    }
    assert!(rows_above_one > 0 && trimmed > 0, "chains ran ({rows_above_one}) and were trimmed ({trimmed})");
}

/// Where the text repeats itself (the embedded model's greedy answers fall into loops), `verify`
/// and `auto` draft from the text: whole chains of those drafts are accepted even beside a
/// module that never agrees, and greedy output is still the standard one, alone or batched.
#[test]
fn drafts_read_from_the_text_never_change_greedy_output() {
    let loaded = load(&embedded(), random_module(1));
    let mut cheap = CostModel::from_points(vec![(1, 0.010), (2, 0.0105), (8, 0.012)], vec![(1, 0.001), (2, 0.0011)]);
    let modes = [DecodeMode::Verify, DecodeMode::Auto, DecodeMode::Off, DecodeMode::Verify];
    let seqs = run_batch(&loaded, modes, &SamplingParams::greedy(), 100, |seq| seq, &mut cheap);
    let (mut from_text, mut chained) = (0, 0);
    for (seq, (prompt, mode)) in seqs.iter().zip(PROMPTS.iter().zip(modes)) {
        let alone = run(&loaded, prompt, DecodeMode::Off, SamplingParams::greedy(), 100);
        assert_eq!(seq.generated(), alone.ids.as_slice(), "{prompt:?} in {mode:?}");
        let stats = seq.stats();
        assert!(stats.text_accepted <= stats.text_drafted && stats.text_drafted <= stats.draft_tokens(), "{stats:?}");
        from_text += stats.text_accepted;
        chained += stats.accepted_at[1..].iter().sum::<usize>();
    }
    // A random module's drafts are rejected: what was accepted beyond a first draft came from
    // the text, and it saved forwards.
    assert!(from_text > 20 && chained > 10, "{from_text} text tokens accepted, {chained} beyond a first draft");
    for prompt in PROMPTS {
        let verify = run(&loaded, prompt, DecodeMode::Verify, SamplingParams::greedy(), 100);
        let standard = run(&loaded, prompt, DecodeMode::Off, SamplingParams::greedy(), 100);
        assert_eq!(verify.ids, standard.ids, "{prompt:?} alone");
        if verify.stats.text_accepted > 10 {
            assert!(verify.stats.full_forwards < standard.stats.full_forwards, "{:?}", verify.stats);
        }
    }
}

/// The four prompts decoded together, one in each of `modes`, until all finish (prompts fed 5
/// tokens a step, so prefill chunks share steps with decoding), each sequence shaped by
/// `configure`.
fn run_batch(
    loaded: &recyclegpt_model::LoadedModel,
    modes: [DecodeMode; 4],
    params: &SamplingParams,
    max_tokens: usize,
    configure: impl Fn(Sequence) -> Sequence,
    costs: &mut CostModel,
) -> Vec<Sequence> {
    let model = &loaded.model;
    let stop = StopCriteria { max_tokens, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    let mut seqs: Vec<Sequence> = PROMPTS
        .iter()
        .zip(modes)
        .enumerate()
        .map(|(i, (prompt, mode))| {
            let ids = loaded.tokenizer.encode(prompt).unwrap();
            configure(Sequence::new(i as u64, model, ids, mode, params.clone(), stop.clone()).unwrap())
        })
        .collect();
    while seqs.iter().any(|s| !s.is_finished()) {
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
        step(model, &mut refs, 5, Some(&mut *costs)).unwrap();
    }
    seqs
}

/// `auto` on a device where a draft costs a tenth of a forward, held fixed (measured costs would
/// make what `auto` does depend on the machine's load).
fn run_auto_where_drafts_are_cheap(
    loaded: &recyclegpt_model::LoadedModel,
    prompt: &str,
    params: SamplingParams,
    max_tokens: usize,
) -> Sequence {
    let mut costs = CostModel::from_points(vec![(1, 0.010), (2, 0.0105), (4, 0.0115)], vec![(1, 0.001), (2, 0.0011)]);
    let ids = loaded.tokenizer.encode(prompt).unwrap();
    let stop = StopCriteria { max_tokens, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    // The module alone: drafts read from the text would stand in for it where the text repeats.
    let mut seq =
        Sequence::new(0, &loaded.model, ids, DecodeMode::Auto, params, stop).unwrap().with_prompt_lookup(false);
    while !seq.is_finished() {
        step(&loaded.model, &mut [&mut seq], 64, Some(&mut costs)).unwrap();
    }
    seq
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
