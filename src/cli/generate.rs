//! `recyclegpt generate`: one prompt, printed as text or as one JSON object.
use super::model_args::{ModelArgs, RecycleInitArg};
use anyhow::Context;
use clap::Args;
use recyclegpt_engine::{generate_with_lookup, DecodeMode, SamplingParams, StopCriteria};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// off | alternate | verify | auto
    #[arg(long, default_value = "off")]
    mode: DecodeMode,
    /// Let `verify` and `auto` also draft from the text where it repeats itself (prompt
    /// lookup); `false` leaves the drafts to the module
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    prompt_lookup: bool,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object with ids and decoding statistics instead of the text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let prompt_ids = loaded.tokenizer.encode(&args.prompt)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    let stop = StopCriteria { max_tokens: args.max_tokens, eos_ids: loaded.tokenizer.eos_ids().to_vec() };
    let generation =
        generate_with_lookup(&loaded.model, prompt_ids.clone(), args.mode, params, stop, args.prompt_lookup)
            .with_context(|| format!("generating in {} mode", args.mode.as_str()))?;
    let text = completion_text(&loaded.tokenizer, &prompt_ids, &generation.ids)?;
    if args.json {
        let stats = generation.stats;
        let report = serde_json::json!({
            "mode": args.mode.as_str(),
            "recycle_init": if args.model.recycle_init == RecycleInitArg::Random { "random" } else { "file" },
            "prompt_ids": prompt_ids,
            "ids": generation.ids,
            "text": text,
            "finish_reason": generation.finish_reason,
            "tokens_per_second": generation.tokens_per_second(),
            "tokens_per_full_forward": generation.tokens_per_full_forward(),
            "full_forwards": stats.full_forwards,
            "recycle_steps": stats.recycle_steps,
            "accepted": stats.accepted,
            "rejected": stats.rejected,
            "skipped_drafts": stats.skipped_drafts,
            "drafted_at": stats.drafted_at,
            "accepted_at": stats.accepted_at,
            "text_drafted": stats.text_drafted,
            "text_accepted": stats.text_accepted,
        });
        println!("{report}");
    } else {
        println!("{}{text}", args.prompt);
    }
    Ok(())
}

/// The completion as it reads after the prompt: decoding it alone would lose the leading
/// space that sentencepiece folds into the first token.
fn completion_text(
    tokenizer: &recyclegpt_model::TextTokenizer,
    prompt: &[u32],
    generated: &[u32],
) -> anyhow::Result<String> {
    let prompt_text = tokenizer.decode(prompt)?;
    let all: Vec<u32> = prompt.iter().chain(generated).copied().collect();
    let full_text = tokenizer.decode(&all)?;
    Ok(match full_text.strip_prefix(&prompt_text) {
        Some(rest) => rest.to_string(),
        None => tokenizer.decode(generated)?,
    })
}
