//! `recyclegpt bench ...`: the shipped benchmarks.
use super::model_args::ModelArgs;
use clap::{Args, Subcommand};
use recyclegpt_bench::decode::{self, Bandwidth, DecodeOptions, DecodeReport};
use recyclegpt_bench::shapes::Shape;
use recyclegpt_model::RecycleGpt;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Decode-step costs, tokens/s per mode, batched throughput and memory bandwidth.
    Decode(DecodeArgs),
    /// The small-m linear kernel against candle's matmul on one weight matrix.
    Kernels(KernelArgs),
    /// Concurrent streaming clients against a running server.
    Serve(ServeArgs),
    /// Joint training throughput (forward + backward + AdamW) for a fixed shape.
    Train(TrainBenchArgs),
    /// Decode and serving benchmarks in one run, written as report.json and SVG charts.
    Report(ReportArgs),
}

#[derive(Args)]
pub struct ReportArgs {
    /// Directory for report.json and the charts (created if missing).
    #[arg(long)]
    out: std::path::PathBuf,
    /// A model with a trained module: decode-benchmarked and served on 127.0.0.1.
    #[arg(long, env = "RECYCLEGPT_MODEL", default_value = "models/shakespeare")]
    model: std::path::PathBuf,
    /// Random-weight shapes with random modules, decode-benchmarked beside the model.
    #[arg(long = "shape", value_delimiter = ',', default_value = "M1,M3")]
    shapes: Vec<Shape>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent streaming clients, one serving run per count and mode.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    #[arg(long, default_value_t = 8)]
    requests_per_client: usize,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[arg(long, default_value = "ROMEO:\nWhat light")]
    prompt: String,
    /// A trained module in its own directory, for a model without one beside it (a GGUF file).
    #[arg(long)]
    recycle: Option<std::path::PathBuf>,
    /// Decode-benchmark the model on the twelve default chat questions, and serve the prompt as
    /// a chat message.
    #[arg(long)]
    chat: bool,
    /// Tokens the model generates per mode per round (per question with --chat).
    #[arg(long, default_value_t = 32)]
    generate_tokens: usize,
    /// Another server of the same model, already running, benchmarked beside ours: NAME=URL
    /// (e.g. llama-server=http://127.0.0.1:8080). Repeat for several.
    #[arg(long = "peer", value_parser = name_and::<String>)]
    peers: Vec<(String, String)>,
    /// A peer's batch-1 decode tokens/s of the same model, measured the same hour (llama-bench's
    /// tg128): NAME=TOKENS_PER_S, drawn beside the model's modes. Repeat for several.
    #[arg(long = "peer-decode", value_parser = name_and::<f64>)]
    peer_decode: Vec<(String, f64)>,
    #[command(flatten)]
    placement: super::model_args::PlacementArgs,
}

/// `NAME=VALUE`, for the report's peers.
fn name_and<T: std::str::FromStr>(arg: &str) -> Result<(String, T), String> {
    let (name, value) = arg.split_once('=').ok_or_else(|| format!("`{arg}` is not NAME=VALUE"))?;
    let value = value.parse().map_err(|_| format!("`{value}` is not a valid value for {name}"))?;
    Ok((name.to_string(), value))
}

#[derive(Args)]
pub struct TrainBenchArgs {
    /// Model shape and batch (TOML, as for `train`); default: llama2.c's 15M shape
    /// (dim 288, 6 layers, 6 heads, hidden 768, vocab 32000), batch 8 × 256 tokens.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 32000)]
    vocab_size: usize,
    #[arg(long, default_value_t = 5)]
    steps: usize,
}

#[derive(Args)]
pub struct ServeArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8000
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 16)]
    requests: usize,
    /// Modes to run, comma-separated (off, auto, verify, alternate); all four when absent.
    #[arg(long, value_delimiter = ',')]
    mode: Vec<String>,
    /// Run the modes in rotation this many times and end with each mode's median tokens/s and
    /// its ratio to `off` (alternating spreads the machine's drift over every mode).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[arg(long, default_value = "Once upon a time")]
    prompt: String,
    /// Send the prompt as a user message to /v1/chat/completions (the chat template applies).
    #[arg(long)]
    chat: bool,
    /// Constrain every answer: `json_object`, or a file holding a JSON schema.
    #[arg(long)]
    response_format: Option<String>,
    /// Two-turn chats under a ~500-token system prompt; also reports the second turns' time
    /// to first token (what prefix caching saves).
    #[arg(long)]
    multi_turn: bool,
    #[arg(long, env = "RECYCLEGPT_API_KEY")]
    api_key: Option<String>,
    /// One JSON object per mode instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct KernelArgs {
    /// Output rows of the weight matrix.
    #[arg(long, default_value_t = 5632)]
    n: usize,
    /// Input width of the weight matrix.
    #[arg(long, default_value_t = 2048)]
    k: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,24,32,48,64")]
    m: Vec<usize>,
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DecodeArgs {
    /// Random-weight shapes to build (M1, M3, M4); default M1 and M3 unless --model is given.
    #[arg(long = "shape", value_delimiter = ',')]
    shapes: Vec<Shape>,
    /// Benchmark a model directory instead (add --recycle-init random if it has no module).
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value = "file")]
    recycle_init: super::model_args::RecycleInitArg,
    /// A trained module in its own directory, for the model given with --model.
    #[arg(long, conflicts_with = "recycle_init")]
    recycle: Option<std::path::PathBuf>,
    /// Rounds; every variant runs once per round and the medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Tokens generated per mode per round.
    #[arg(long, default_value_t = 32)]
    generate_tokens: usize,
    /// Batch sizes of the aggregate-throughput steps.
    #[arg(long = "batch", value_delimiter = ',', default_value = "1,4,8,16")]
    batch_sizes: Vec<usize>,
    /// With --model: compare the decode modes on answers to these user messages (rendered with
    /// the model's chat template, each answered up to --generate-tokens) instead of on a
    /// continuation of random tokens. Repeat for several; `--chat` alone asks the twelve
    /// default questions (crates/bench/data/chat-questions.txt).
    #[arg(long, requires = "model", num_args = 0..=1)]
    chat: Option<Vec<String>>,
    /// One JSON object per shape instead of a table.
    #[arg(long)]
    json: bool,
    /// Let `verify` and `auto` also draft from the text where it repeats itself (prompt
    /// lookup); `false` measures the module's drafts alone
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    prompt_lookup: bool,
    #[command(flatten)]
    placement: super::model_args::PlacementArgs,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Decode(args) => run_decode(args),
        BenchCommand::Kernels(args) => run_kernels(args),
        BenchCommand::Serve(args) => run_serve(args),
        BenchCommand::Train(args) => run_train(args),
        BenchCommand::Report(args) => run_report(args),
    }
}

fn run_report(args: ReportArgs) -> anyhow::Result<()> {
    let (device, dtype) = args.placement.resolve()?;
    let chat = args.chat.then(Vec::new);
    let mut decode =
        DecodeOptions { rounds: args.rounds, generate_tokens: args.generate_tokens, ..DecodeOptions::default() };
    let recycle_init = super::model_args::RecycleInitArg::File;
    let loaded = load_for_decode(&args.model, recycle_init, &args.recycle, &args.placement, &chat, &mut decode)?;
    let options = recyclegpt_bench::report::ReportOptions {
        out: args.out.clone(),
        model: args.model,
        shapes: args.shapes,
        decode,
        clients: args.clients,
        requests_per_client: args.requests_per_client,
        max_tokens: args.max_tokens,
        prompt: args.prompt.replace("\\n", "\n"),
        chat: args.chat,
        device,
        dtype,
        peers: args.peers,
        peer_decode: args.peer_decode,
    };
    let report = recyclegpt_bench::report::run(&options, loaded)?;
    for r in &report.decode {
        print_table(r);
    }
    for (name, rate) in &report.peer_decode {
        println!("{name}: {rate:.1} tokens/s (given)");
    }
    println!("{:>14} {:>9} {:>7} {:>9} {:>10} {:>9}", "server", "mode", "clients", "tokens/s", "ttft p50", "itl p50");
    for r in &report.serve {
        println!(
            "{:>14} {:>9} {:>7} {:>9.1} {:>8.1}ms {:>7.2}ms",
            r.server, r.mode, r.clients, r.tokens_per_second, r.ttft_p50_ms, r.itl_p50_ms
        );
    }
    println!("wrote {} and {}", args.out.join("report.json").display(), report.charts.join(", "));
    Ok(())
}

fn run_train(args: TrainBenchArgs) -> anyhow::Result<()> {
    let spec = match &args.config {
        Some(path) => recyclegpt_train::TrainSpec::from_toml_file(path)?,
        None => recyclegpt_train::TrainSpec {
            hidden_size: 288,
            intermediate_size: 768,
            num_hidden_layers: 6,
            num_attention_heads: 6,
            num_key_value_heads: 6,
            seq_len: 256,
            batch: 8,
            ..Default::default()
        },
    };
    let rate = recyclegpt_train::bench_train(&spec, args.vocab_size, args.steps)?;
    println!(
        "{}",
        serde_json::json!({"hidden_size": spec.hidden_size, "layers": spec.num_hidden_layers, "vocab_size": args.vocab_size,
                           "batch": spec.batch, "seq_len": spec.seq_len, "recycle_layers": spec.recycle_layers,
                           "steps": args.steps, "tokens_per_second": rate})
    );
    Ok(())
}

/// `json_object`, or a JSON schema read from a file.
fn response_format(value: &str) -> anyhow::Result<serde_json::Value> {
    if value == "json_object" {
        return Ok(serde_json::json!({"type": "json_object"}));
    }
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(value)?)?;
    Ok(serde_json::json!({"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}))
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let options = recyclegpt_bench::serve::ServeOptions {
        url: args.url,
        clients: args.clients,
        requests: args.requests,
        max_tokens: args.max_tokens,
        prompt: args.prompt,
        chat: args.chat,
        api_key: args.api_key,
        response_format: args.response_format.as_deref().map(response_format).transpose()?,
        multi_turn: args.multi_turn,
    };
    let modes: Vec<String> = if args.mode.is_empty() {
        ["off", "auto", "verify", "alternate"].map(String::from).to_vec()
    } else {
        args.mode.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if !args.json {
        println!(
            "{:>9} {:>7} {:>8} {:>7} {:>9} {:>10} {:>10} {:>9} {:>9}",
            "mode", "clients", "requests", "failed", "tokens/s", "ttft p50", "ttft p99", "itl p50", "itl p99"
        );
    }
    let mut rates: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for mode in (0..args.repeat.max(1)).flat_map(|_| modes.iter()) {
        let r = runtime.block_on(recyclegpt_bench::serve::run(&options, mode));
        rates.entry(mode.clone()).or_default().push(r.tokens_per_second);
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{:>9} {:>7} {:>8} {:>7} {:>9.1} {:>8.1}ms {:>8.1}ms {:>7.2}ms {:>7.2}ms",
                r.mode,
                r.clients,
                r.requests,
                r.failed,
                r.tokens_per_second,
                r.ttft_p50_ms,
                r.ttft_p99_ms,
                r.itl_p50_ms,
                r.itl_p99_ms
            );
            if let Some(second) = r.turn2_ttft_p50_ms {
                println!(
                    "{:>9} second turns: ttft p50 {second:.1}ms, {:.2}x lower than the first turns'",
                    "",
                    r.ttft_p50_ms / second.max(1e-9)
                );
            }
        }
    }
    if args.repeat > 1 {
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let off = rates.get_mut("off").map(median);
        for mode in &modes {
            let Some(rate) = rates.get_mut(mode).map(median) else { continue };
            let ratio = off.map(|off| format!("  {:.3}x off", rate / off)).unwrap_or_default();
            println!("median of {}: {mode:>9} {:>9.1} tok/s{ratio}", args.repeat, rate);
        }
    }
    Ok(())
}

fn run_kernels(args: KernelArgs) -> anyhow::Result<()> {
    let rows = recyclegpt_bench::kernels::run(args.n, args.k, &args.m, args.rounds)?;
    let attention = recyclegpt_bench::attention::run(args.rounds);
    if args.json {
        println!("{}", serde_json::json!({"linear": rows, "attention": attention}));
        return Ok(());
    }
    println!("weight [{} x {}], {:.1} MB", args.n, args.k, (args.n * args.k * 4) as f64 / 1e6);
    println!(
        "{:>4} {:>10} {:>10} {:>8} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "m",
        "kernel ms",
        "candle ms",
        "speedup",
        "kernel GB/s",
        "q8_0 kernel",
        "q4_1 kernel",
        "candle q8_0",
        "candle q4_1"
    );
    for r in rows {
        println!(
            "{:>4} {:>10.3} {:>10.3} {:>7.2}x {:>10.1} {:>9.3} ms {:>9.3} ms {:>9.3} ms {:>9.3} ms",
            r.m,
            r.kernel_ms,
            r.candle_ms,
            r.candle_ms / r.kernel_ms,
            r.kernel_gb_per_s,
            r.q8_kernel_ms,
            r.q4_kernel_ms,
            r.candle_q8_0_ms,
            r.candle_q4_1_ms
        );
    }
    println!("\ncached attention, one layer, microseconds");
    println!("{:<16} {:>6} {:>8} {:>8}", "heads", "rows", "cached", "us");
    for r in attention {
        println!("{:<16} {:>6} {:>8} {:>8.2}", r.shape, r.rows, r.cached, r.microseconds);
    }
    Ok(())
}

/// Each message as a one-turn chat prompt in the model's template, tokenized.
fn chat_prompts(loaded: &recyclegpt_model::LoadedModel, messages: &[String]) -> anyhow::Result<Vec<Vec<u32>>> {
    let tokenizer = &loaded.tokenizer;
    let template =
        recyclegpt_server::ChatTemplate::new(tokenizer.chat_template(), tokenizer.bos_token(), tokenizer.eos_token())
            .map_err(anyhow::Error::msg)?;
    messages
        .iter()
        .map(|content| {
            let message = recyclegpt_server::ChatMessage { role: "user".into(), content: content.clone() };
            let text = template
                .render(&[message], &recyclegpt_server::TemplateArgs::new())
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(tokenizer.encode(&text)?)
        })
        .collect()
}

/// Loads `model` (with its module) for the decode benchmark; with `chat` (the questions, or
/// none for the default ones), `options` compares the modes on the model's answers to them.
fn load_for_decode(
    model: &std::path::Path,
    recycle_init: super::model_args::RecycleInitArg,
    recycle: &Option<std::path::PathBuf>,
    placement: &super::model_args::PlacementArgs,
    chat: &Option<Vec<String>>,
    options: &mut DecodeOptions,
) -> anyhow::Result<recyclegpt_model::LoadedModel> {
    let model_args = ModelArgs {
        model: model.to_path_buf(),
        recycle_init,
        recycle: recycle.clone(),
        recycle_layers: 1,
        recycle_seed: 0,
        placement: placement.clone(),
    };
    let loaded = model_args.load()?;
    options.prompts = match chat {
        Some(messages) if messages.is_empty() => chat_prompts(&loaded, &recyclegpt_bench::default_chat_questions())?,
        Some(messages) => chat_prompts(&loaded, messages)?,
        None => Vec::new(),
    };
    options.eos_ids = loaded.tokenizer.eos_ids().to_vec();
    Ok(loaded)
}

fn run_decode(args: DecodeArgs) -> anyhow::Result<()> {
    let mut options = DecodeOptions {
        rounds: args.rounds,
        generate_tokens: args.generate_tokens,
        batch_sizes: args.batch_sizes.clone(),
        prompt_lookup: args.prompt_lookup,
        ..DecodeOptions::default()
    };
    let bandwidth = Bandwidth::measure();
    let (device, dtype) = args.placement.resolve()?;
    let mut targets: Vec<(String, RecycleGpt)> = Vec::new();
    if let Some(dir) = &args.model {
        let loaded = load_for_decode(dir, args.recycle_init, &args.recycle, &args.placement, &args.chat, &mut options)?;
        targets.push((dir.display().to_string(), loaded.model));
    }
    let shapes =
        if args.shapes.is_empty() && args.model.is_none() { vec![Shape::M1, Shape::M3] } else { args.shapes.clone() };
    for shape in shapes {
        let (config, recycle) = shape.config();
        tracing::info!(shape = shape.name(), "building random weights");
        targets.push((
            shape.name().to_string(),
            RecycleGpt::random(
                config,
                Some(recycle),
                42,
                &device,
                dtype,
                args.placement.quantize.resolve(std::path::Path::new(""), &device),
            )?,
        ));
    }
    for (name, model) in targets {
        let report = decode::run(&name, &model, &options, bandwidth)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_table(&report);
        }
    }
    Ok(())
}

fn print_table(r: &DecodeReport) {
    let rate = |m: &str| r.tokens_per_second.get(m).copied().unwrap_or(0.0);
    let batch = |b: &str| r.batched_tokens_per_second.get(b).copied().unwrap_or(0.0);
    println!(
        "== {} on {} in {}, weights quantized: {} ({:.1}M parameters, {:.0} MB read per token) ==",
        r.shape,
        r.device,
        r.dtype,
        r.quantization,
        r.params as f64 / 1e6,
        r.weight_bytes as f64 / 1e6
    );
    for (&tokens, &ms) in &r.forward_ms {
        let label = format!("full forward, {tokens} token{}", if tokens == 1 { "" } else { "s" });
        println!("{label:<27}{ms:8.2} ms   ratio {:.2}", ms / r.forward_1_ms);
    }
    println!("recycle step (2 pairs)     {:8.2} ms", r.recycle_step_ms);
    println!("output head (1 row)        {:8.2} ms", r.head_ms);
    println!(
        "memory bandwidth           {:8.1} GB/s read, {:.1} GB/s copy (read + write)",
        r.read_bandwidth_gb_per_s, r.bandwidth_gb_per_s
    );
    println!(
        "1-token forward reads weights at {:.1} GB/s: {:.0}% of the read bandwidth",
        r.weight_bytes as f64 / r.forward_1_ms / 1e6,
        100.0 * r.weight_read_fraction
    );
    println!(
        "tokens/s  off {:.1}  auto {:.1} ({:.2}x)  alternate {:.1} ({:.2}x)  verify {:.1} ({:.2}x, {:.2} tokens per full forward)",
        rate("off"),
        rate("auto"),
        rate("auto") / rate("off"),
        rate("alternate"),
        rate("alternate") / rate("off"),
        rate("verify"),
        rate("verify") / rate("off"),
        r.verify_tokens_per_full_forward
    );
    if !r.verify_acceptance_by_position.is_empty() {
        let shares: Vec<String> =
            r.verify_acceptance_by_position.iter().map(|a| format!("{:.1}%", 100.0 * a)).collect();
        println!("verify: drafts accepted by place in the chain: {}", shares.join(", "));
    }
    if r.verify_text_drafted > 0 {
        println!(
            "verify: {} drafted tokens read from the text (prompt lookup), {:.1}% accepted",
            r.verify_text_drafted,
            100.0 * r.verify_text_accepted as f64 / r.verify_text_drafted as f64
        );
    }
    if r.tokens_per_second.contains_key("auto") {
        println!(
            "auto: {:.2} tokens per full forward, no draft on {:.1}% of decode steps",
            r.auto_tokens_per_full_forward,
            100.0 * r.auto_skipped_share
        );
    }
    if let Some(agreement) = r.module_agreement {
        println!("module agreement with the full model along the greedy text: {:.1}%", 100.0 * agreement);
    }
    let mut sizes: Vec<String> = r.batched_tokens_per_second.keys().cloned().collect();
    sizes.sort_by_key(|s| s.parse::<usize>().unwrap_or(0));
    for (label, table) in
        [("1 new token", &r.batched_tokens_per_second), ("2 new tokens", &r.batched_2_tokens_per_second)]
    {
        let row: Vec<String> =
            sizes.iter().map(|s| format!("{s}: {:.1}", table.get(s).copied().unwrap_or(0.0))).collect();
        println!("batched tokens/s, {label:12} {}", row.join("  "));
    }
    if let Some(max) = sizes.last() {
        println!("batch {max} / batch 1 (1 new token): {:.2}x", batch(max) / batch("1"));
    }
    let mut lengths: Vec<(&String, &f64)> = r.prefill_tokens_per_second.iter().collect();
    lengths.sort_by_key(|(n, _)| n.parse::<usize>().unwrap_or(0));
    let prefill: Vec<String> = lengths.iter().map(|(n, rate)| format!("{n} tokens: {rate:.1}")).collect();
    if !prefill.is_empty() {
        println!("prefill tokens/s (one forward)  {}", prefill.join("  "));
    }
    println!();
}
