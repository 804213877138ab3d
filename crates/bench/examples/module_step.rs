//! What one step of a recyclable module costs (one pair after 127 cached, its logits row
//! included), median of `ROUNDS`: a profiling harness beside `forward_cost`.
//!
//! ```sh
//! cargo run --release -p recyclegpt-bench --example module_step -- MODEL MODULE_DIR 1000
//! ```
use recyclegpt_model::{LoadOptions, LoadedModel, Quantization, RecycleInit, SeqInput};
use std::error::Error;
use std::time::Instant;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, module, rounds] = args.as_slice() else {
        return Err("usage: module_step MODEL MODULE_DIR ROUNDS".into());
    };
    let rounds: usize = rounds.parse()?;
    let options = LoadOptions {
        quantize: Some(Quantization::AsStored),
        recycle_init: RecycleInit::FromDir(module.into()),
        ..LoadOptions::default()
    };
    let loaded = LoadedModel::load(std::path::Path::new(model), &options)?;
    let model = &loaded.model;
    let prompt: Vec<u32> = (0..128).map(|i| i * 37 % 40_000 + 100).collect();
    let mut cache = model.new_cache(256)?;
    let out = model.forward(&mut [SeqInput { tokens: &prompt, cache: &mut cache, logits_rows: vec![] }])?;
    let Some(mut module_cache) = model.new_recycle_cache(256)? else {
        return Err("the model has no recyclable module".into());
    };
    // The module's cache holds the pairs of positions 1..128, as after a prefill.
    let pairs = SeqInput { tokens: &prompt[1..], cache: &mut module_cache, logits_rows: vec![] };
    model.recycle_forward(&out.features.narrow(0, 0, 127)?, &mut [pairs])?;
    let last = out.features.narrow(0, 127, 1)?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        model.recycle_forward(
            &last,
            &mut [SeqInput { tokens: &[500], cache: &mut module_cache, logits_rows: vec![0] }],
        )?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        module_cache.truncate(127);
    }
    times.sort_by(f64::total_cmp);
    println!("module step, 1 pair: median {:.3} ms", times[times.len() / 2]);
    Ok(())
}
