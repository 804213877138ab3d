//! What one full forward over 1, 2, 4, ... new tokens costs after 128 cached positions, with a
//! logits row for every new token (as a verifying forward asks), median of `ROUNDS`: a profiling
//! harness (`perf record` on it sees forwards and nothing else once the model has loaded).
//!
//! ```sh
//! cargo run --release -p recyclegpt-bench --example forward_cost -- MODEL 1,2,4,8,16 300
//! ```
use recyclegpt_model::{LoadOptions, LoadedModel, Quantization, SeqInput};
use std::error::Error;
use std::time::Instant;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, sizes, rounds] = args.as_slice() else {
        return Err("usage: forward_cost MODEL SIZES(1,2,4) ROUNDS".into());
    };
    let sizes = sizes.split(',').map(str::parse).collect::<Result<Vec<usize>, _>>()?;
    let rounds: usize = rounds.parse()?;
    let options = LoadOptions { quantize: Some(Quantization::AsStored), ..LoadOptions::default() };
    let loaded = LoadedModel::load(std::path::Path::new(model), &options)?;
    let model = &loaded.model;
    let cached = 128;
    let prompt: Vec<u32> = (0..cached as u32).map(|i| i * 37 % 40_000 + 100).collect();
    let mut cache = model.new_cache(cached + sizes.iter().max().copied().unwrap_or(1))?;
    model.forward(&mut [SeqInput { tokens: &prompt, cache: &mut cache, logits_rows: vec![] }])?;
    for n in sizes {
        let tokens: Vec<u32> = (0..n as u32).map(|i| i * 91 % 40_000 + 200).collect();
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds.max(1) {
            let started = Instant::now();
            model.forward(&mut [SeqInput { tokens: &tokens, cache: &mut cache, logits_rows: (0..n).collect() }])?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            cache.truncate(cached);
        }
        times.sort_by(f64::total_cmp);
        println!("{n} tokens: median {:.3} ms", times[times.len() / 2]);
    }
    Ok(())
}
