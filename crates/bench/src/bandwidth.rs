//! The machine's memory bandwidth: a large multi-threaded copy (read + write traffic, as STREAM
//! counts it) and a large multi-threaded read (what streaming weights needs).
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
            dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        });
        best = best.min(seconds);
    }
    std::hint::black_box(&dst);
    (2 * n * 4) as f64 / best / 1e9
}

/// GB/s reading `bytes` (well past the last-level cache) with all threads: the ceiling for a
/// decode step that streams its weights once.
pub fn read_bandwidth_gb_per_s(bytes: usize, repeats: usize) -> f64 {
    let n = bytes / 4;
    let src = vec![1.0f32; n];
    let chunk = n.div_ceil(rayon::current_num_threads().max(1));
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let (total, seconds) = crate::time(|| src.par_chunks(chunk).map(sum).sum::<f32>());
        std::hint::black_box(total);
        best = best.min(seconds);
    }
    (n * 4) as f64 / best / 1e9
}

fn sum(values: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { sum_avx512(values) };
    }
    sum_lanes(values)
}

/// The same sum, compiled for AVX-512 so that the lanes vectorise to 512-bit adds.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(values: &[f32]) -> f32 {
    sum_lanes(values)
}

/// 64 independent lanes (four 512-bit chains), so that memory, not add latency, is the limit.
#[inline(always)]
fn sum_lanes(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 64];
    for block in values.chunks_exact(64) {
        for (l, v) in lanes.iter_mut().zip(block) {
            *l += v;
        }
    }
    lanes.iter().sum()
}
