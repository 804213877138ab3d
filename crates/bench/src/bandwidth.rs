//! The machine's memory bandwidth, measured as a large multi-threaded copy.
use rayon::prelude::*;

/// GB/s of read + write traffic copying `bytes` (well past the last-level cache) with all threads.
pub fn copy_bandwidth_gb_per_s(bytes: usize, repeats: usize) -> f64 {
    let n = bytes / 4;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let chunk = n.div_ceil(rayon::current_num_threads().max(1));
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let (_, seconds) = crate::time(|| {
            dst.par_chunks_mut(chunk)
                .zip(src.par_chunks(chunk))
                .for_each(|(d, s)| d.copy_from_slice(s));
        });
        best = best.min(seconds);
    }
    std::hint::black_box(&dst);
    (2 * n * 4) as f64 / best / 1e9
}
