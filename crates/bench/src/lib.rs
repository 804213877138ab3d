//! Benchmarks anyone can run (`recyclegpt bench ...`). Variants are interleaved round by
//! round so that machine noise hits all of them alike, and results are medians.
pub mod attention;
pub mod bandwidth;
pub mod charts;
pub mod decode;
pub mod kernels;
pub mod report;
pub mod serve;
pub mod shapes;

use std::time::Instant;

/// Median of the samples (seconds), in milliseconds.
pub fn median_ms(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    let median = if samples.len().is_multiple_of(2) { (samples[mid - 1] + samples[mid]) / 2.0 } else { samples[mid] };
    median * 1e3
}

/// Seconds taken by `f`.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}

/// The default chat questions of the decode and serving benchmarks.
pub fn default_chat_questions() -> Vec<String> {
    include_str!("../data/chat-questions.txt")
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}
