//! `out[m, n] = x[m, k] · w[n, k]ᵀ` with `w` in Q8_0 (blocks of 32 int8 values and one scale)
//! and `x` quantized the same way per call, so each block is an integer dot product: `vpdpbusd`
//! where the CPU has AVX-512 VNNI, `vpmaddubsw` with AVX2, plain integers otherwise. Each weight
//! block is read once for all input rows, so a forward over 2 tokens reads the weights once, as
//! one over 1 token does. (candle's `QMatMul` rereads the weights for every row.)
use crate::isa::{Isa, Kind};
use rayon::prelude::*;

/// Values per block.
pub const BLOCK: usize = 32;
/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// A matrix in Q8_0: row-major int8 values and one f32 scale per block of 32.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    quants: Vec<i8>,
    scales: Vec<f32>,
}

impl Q8Matrix {
    /// Quantizes `values` (`rows × cols`, row-major); `None` unless `cols` is a multiple of 32.
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return None;
        }
        let (quants, scales) = quantize_blocks(values);
        Some(Self { rows, cols, quants, scales })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes read by one product: the values and the scales.
    pub fn bytes(&self) -> usize {
        self.quants.len() + 4 * self.scales.len()
    }

    pub fn dequantize(&self) -> Vec<f32> {
        self.quants
            .chunks(BLOCK)
            .zip(&self.scales)
            .flat_map(|(q, &d)| q.iter().map(move |&v| f32::from(v) * d))
            .collect()
    }
}

/// Per block of 32: scale = max |v| / 127, values rounded to the nearest step.
fn quantize_blocks(values: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut quants = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / BLOCK);
    for block in values.chunks(BLOCK) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        quants.extend(block.iter().map(|v| (v * inverse).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    (quants, scales)
}

/// Computes `out = x · wᵀ`; `x` is `m × w.cols()`, `out` is `m × w.rows()`, row-major.
pub fn q8_linear(isa: Isa, x: &[f32], m: usize, w: &Q8Matrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert!(x.len() >= m * k && out.len() >= m * n, "q8_linear: buffer too small");
    assert!(isa.available(), "q8_linear: {isa:?} is not supported by this CPU");
    let (xq, xs) = quantize_blocks(&x[..m * k]);
    let path = Path::choose(isa);
    // Each task fills its weight rows' outputs for every input row, transposed: [row][m].
    let mut transposed = vec![0f32; n * m];
    transposed.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, chunk)| {
        let first = task * ROWS_PER_TASK;
        for (r, sums) in chunk.chunks_mut(m).enumerate() {
            let row = first + r;
            let wq = &w.quants[row * k..(row + 1) * k];
            let ws = &w.scales[row * k / BLOCK..(row + 1) * k / BLOCK];
            path.row(wq, ws, &xq, &xs, k, sums);
        }
    });
    for (row, sums) in transposed.chunks(m).enumerate() {
        for (i, &v) in sums.iter().enumerate() {
            out[i * n + row] = v;
        }
    }
}

/// The integer dot-product path, chosen once per call from what the CPU has.
#[derive(Clone, Copy)]
enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

impl Path {
    fn choose(isa: Isa) -> Self {
        match isa.kind() {
            Kind::Scalar => Path::Scalar,
            #[cfg(target_arch = "x86_64")]
            // VNNI is an extension of AVX-512 that `Isa` does not track: checked here.
            Kind::Avx512
                if std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx2") =>
            {
                Path::Vnni
            }
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 | Kind::Avx2
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") =>
            {
                Path::Avx2
            }
            _ => Path::Scalar,
        }
    }

    /// `sums[i] = Σ_blocks ws[b]·xs[i, b]·(wq_b · xq_{i, b})` for every input row `i`.
    fn row(self, wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32], k: usize, sums: &mut [f32]) {
        match self {
            Path::Scalar => scalar_row(wq, ws, xq, xs, k, sums),
            // SAFETY: `choose` picked this path only after detecting AVX2 and FMA; the slices
            // hold whole blocks (`k` is a multiple of 32, checked by `Q8Matrix::quantize`).
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { simd::row_avx2(wq, ws, xq, xs, k, sums) },
            // SAFETY: as above, with AVX-512 VNNI and VL detected as well.
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => unsafe { simd::row_vnni(wq, ws, xq, xs, k, sums) },
        }
    }
}

fn scalar_row(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32], k: usize, sums: &mut [f32]) {
    let blocks = k / BLOCK;
    for (i, sum) in sums.iter_mut().enumerate() {
        let (xq, xs) = (&xq[i * k..(i + 1) * k], &xs[i * blocks..(i + 1) * blocks]);
        *sum = (0..blocks)
            .map(|b| {
                let range = b * BLOCK..(b + 1) * BLOCK;
                let dot: i32 =
                    wq[range.clone()].iter().zip(&xq[range]).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                dot as f32 * ws[b] * xs[b]
            })
            .sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::BLOCK;
    use std::arch::x86_64::*;

    /// The integer dot products of one 32-value block as 8 lanes of i32, `|w|` times `x` with
    /// `w`'s sign moved onto `x` (the unsigned × signed form both instructions need).
    ///
    /// # Safety
    /// The CPU must support AVX2 (and AVX-512 VNNI and VL when `VNNI`).
    #[inline(always)]
    unsafe fn block_dot<const VNNI: bool>(w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: the caller guarantees the features; these intrinsics only touch registers.
        unsafe {
            let magnitude = _mm256_sign_epi8(w, w);
            let signed = _mm256_sign_epi8(x, w);
            if VNNI {
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, signed)
            } else {
                // Pairs of u8 × i8 products fit an i16 (127 · 127 · 2 < 2^15).
                _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed), _mm256_set1_epi16(1))
            }
        }
    }

    /// Up to this many input rows share one pass over the weight row's blocks.
    const GROUP: usize = 8;

    /// The loop both paths share, inlined into each so that it is compiled with its features.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA (and AVX-512 VNNI and VL when `VNNI`); `wq` and each
    /// row of `xq` hold `k` values, `k` a multiple of 32, with one scale per block.
    #[inline(always)]
    unsafe fn body<const VNNI: bool>(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32], k: usize, sums: &mut [f32]) {
        let blocks = k / BLOCK;
        for (g, group) in sums.chunks_mut(GROUP).enumerate() {
            let first = g * GROUP;
            // SAFETY: register-only; AVX is implied by the caller's AVX2.
            let mut acc = [unsafe { _mm256_setzero_ps() }; GROUP];
            for b in 0..blocks {
                // SAFETY: `b < blocks`, so the 32 bytes at `b * BLOCK` lie inside `wq`, and
                // inside every input row of `xq`; the features are the caller's guarantee.
                unsafe {
                    let w = _mm256_loadu_si256(wq.as_ptr().add(b * BLOCK) as *const __m256i);
                    for (i, a) in acc.iter_mut().enumerate().take(group.len()) {
                        let row = first + i;
                        let x = _mm256_loadu_si256(xq.as_ptr().add(row * k + b * BLOCK) as *const __m256i);
                        let dot = _mm256_cvtepi32_ps(block_dot::<VNNI>(w, x));
                        let scale = _mm256_set1_ps(ws[b] * xs[row * blocks + b]);
                        *a = _mm256_fmadd_ps(dot, scale, *a);
                    }
                }
            }
            for (sum, a) in group.iter_mut().zip(acc) {
                // SAFETY: register-only horizontal sum; AVX is implied by AVX2 (the caller's).
                *sum = unsafe {
                    let half = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                    let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
                    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
                };
            }
        }
    }

    /// # Safety
    /// As [`body`], without VNNI.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_avx2(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32], k: usize, sums: &mut [f32]) {
        // SAFETY: forwarded from this function's own contract.
        unsafe { body::<false>(wq, ws, xq, xs, k, sums) }
    }

    /// # Safety
    /// As [`body`], with AVX-512 VNNI and VL.
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    pub unsafe fn row_vnni(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32], k: usize, sums: &mut [f32]) {
        // SAFETY: forwarded from this function's own contract.
        unsafe { body::<true>(wq, ws, xq, xs, k, sums) }
    }
}
