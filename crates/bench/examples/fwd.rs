use recyclegpt_model::{LoadOptions, LoadedModel, SeqInput};
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(&args[1]);
    let size: usize = args[2].parse().unwrap();
    let iters: usize = args[3].parse().unwrap();
    let loaded = LoadedModel::load(
        path,
        &LoadOptions { quantize: Some(recyclegpt_model::Quantization::Q4_1), ..LoadOptions::default() },
    )
    .unwrap();
    let model = loaded.model;
    let prompt: Vec<u32> = (0..128).map(|i| (i * 37 % 40000 + 100) as u32).collect();
    let mut cache = model.new_cache(256).unwrap();
    model.forward(&mut [SeqInput { tokens: &prompt, cache: &mut cache, logits_rows: vec![] }]).unwrap();
    let next: Vec<u32> = (0..size as u32).map(|i| 500 + i).collect();
    let start = Instant::now();
    for _ in 0..iters {
        model.forward(&mut [SeqInput { tokens: &next, cache: &mut cache, logits_rows: (0..size).collect() }]).unwrap();
        cache.truncate(128);
    }
    println!("{size}: {:.2} ms", start.elapsed().as_secs_f64() * 1e3 / iters as f64);
}
