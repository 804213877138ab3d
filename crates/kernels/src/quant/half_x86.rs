//! The F16 and BF16 tile kernels in AVX-512 and in AVX2: per column, the tile's 16 values
//! converted to f32 (`vcvtph2ps`, or BF16's bits shifted into an f32's high half) and
//! multiplied into each input row's 16 sums.
use super::half::HalfFormat;
use super::{prefetch_ahead, store_tile_256, store_tile_512, HalfMatrix, Out, TILE};
use std::arch::x86_64::*;

/// Columns between prefetches: 4 columns of 16 values are two cache lines.
const PREFETCH_COLUMNS: usize = 4;

/// # Safety
/// The CPU must have AVX-512F; otherwise as [`HalfMatrix::tile`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile_512(w: &HalfMatrix, x: &[f32], m: usize, tile: usize, out: Out) {
    let mut first = 0;
    while first < m {
        // Up to 8 input rows per pass, each column's conversion shared by them; at least 4
        // independent chains of multiply-adds in all. The count is a constant of each pass, so
        // that its sums stay in registers.
        let inputs = (m - first).min(8);
        // SAFETY: inputs `first..first + inputs` exist; the rest is the caller's contract.
        unsafe {
            match w.format() {
                HalfFormat::F16 => pass_of::<false>(w, x, inputs, tile, first, out),
                HalfFormat::BF16 => pass_of::<true>(w, x, inputs, tile, first, out),
            }
        }
        first += inputs;
    }
}

/// [`pass_512`] for `inputs` (1 to 8) rows.
///
/// # Safety
/// As [`pass_512`], with inputs `first..first + inputs` in range.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pass_of<const BF16: bool>(w: &HalfMatrix, x: &[f32], inputs: usize, tile: usize, first: usize, out: Out) {
    // SAFETY: forwarded.
    unsafe {
        match inputs {
            1 => pass_512::<1, 4, BF16>(w, x, tile, first, out),
            2 => pass_512::<2, 2, BF16>(w, x, tile, first, out),
            3 => pass_512::<3, 2, BF16>(w, x, tile, first, out),
            4 => pass_512::<4, 1, BF16>(w, x, tile, first, out),
            5 => pass_512::<5, 1, BF16>(w, x, tile, first, out),
            6 => pass_512::<6, 1, BF16>(w, x, tile, first, out),
            7 => pass_512::<7, 1, BF16>(w, x, tile, first, out),
            _ => pass_512::<8, 1, BF16>(w, x, tile, first, out),
        }
    }
}

/// Input rows `first..first + M` against every column of `tile`, spread over `C` chains per
/// input.
///
/// # Safety
/// As [`tile_512`], with inputs `first..first + M` in range.
// Indexing keeps the loops shaped like the register tile they fill.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pass_512<const M: usize, const C: usize, const BF16: bool>(
    w: &HalfMatrix,
    x: &[f32],
    tile: usize,
    first: usize,
    out: Out,
) {
    let cols = w.cols;
    let mut acc = [[_mm512_setzero_ps(); C]; M];
    // SAFETY: the tile's `cols` columns of 16 values and input rows `first..first + M` exist
    // (contract).
    unsafe {
        let weights = w.values.as_ptr().add(tile * cols * TILE);
        let x = x.as_ptr().add(first * cols);
        for c in 0..cols {
            if c % PREFETCH_COLUMNS == 0 {
                prefetch_ahead(weights.add(c * TILE) as *const u8, PREFETCH_COLUMNS * TILE * 2);
            }
            let v = _mm256_loadu_si256(weights.add(c * TILE) as *const __m256i);
            let v = if BF16 {
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
            } else {
                _mm512_cvtph_ps(v)
            };
            for i in 0..M {
                let xv = _mm512_set1_ps(*x.add(i * cols + c));
                acc[i][c % C] = _mm512_fmadd_ps(v, xv, acc[i][c % C]);
            }
        }
    }
    let sums: [__m512; M] =
        std::array::from_fn(|i| acc[i].iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a)));
    // SAFETY: inputs `first..first + M` are in range, and the tile's outputs the caller's.
    unsafe { store_tile_512(&sums, w.rows, tile, first, out) };
}

/// Without AVX-512: each column is two 8-row halves, up to 4 input rows per pass.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; otherwise as [`HalfMatrix::tile`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2(w: &HalfMatrix, x: &[f32], m: usize, tile: usize, out: Out) {
    let bf16 = w.format() == HalfFormat::BF16;
    for first in (0..m).step_by(4) {
        // SAFETY: inputs `first..first + M` exist for the `M` each arm names; the rest is the
        // caller's contract.
        unsafe {
            match ((m - first).min(4), bf16) {
                (1, false) => pass_avx2::<1, false>(w, x, tile, first, out),
                (2, false) => pass_avx2::<2, false>(w, x, tile, first, out),
                (3, false) => pass_avx2::<3, false>(w, x, tile, first, out),
                (_, false) => pass_avx2::<4, false>(w, x, tile, first, out),
                (1, true) => pass_avx2::<1, true>(w, x, tile, first, out),
                (2, true) => pass_avx2::<2, true>(w, x, tile, first, out),
                (3, true) => pass_avx2::<3, true>(w, x, tile, first, out),
                (_, true) => pass_avx2::<4, true>(w, x, tile, first, out),
            }
        }
    }
}

/// [`pass_512`] in AVX2.
///
/// # Safety
/// As [`tile_avx2`], with inputs `first..first + M` in range.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pass_avx2<const M: usize, const BF16: bool>(w: &HalfMatrix, x: &[f32], tile: usize, first: usize, out: Out) {
    let cols = w.cols;
    let mut acc = [[_mm256_setzero_ps(); 2]; M];
    // SAFETY: as in `pass_512`.
    unsafe {
        let weights = w.values.as_ptr().add(tile * cols * TILE);
        let x = x.as_ptr().add(first * cols);
        for c in 0..cols {
            if c % PREFETCH_COLUMNS == 0 {
                prefetch_ahead(weights.add(c * TILE) as *const u8, PREFETCH_COLUMNS * TILE * 2);
            }
            let halves = [0, 1].map(|h| {
                let v = _mm_loadu_si128(weights.add(c * TILE + 8 * h) as *const __m128i);
                if BF16 {
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
                } else {
                    _mm256_cvtph_ps(v)
                }
            });
            for (i, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(*x.add(i * cols + c));
                acc[0] = _mm256_fmadd_ps(halves[0], xv, acc[0]);
                acc[1] = _mm256_fmadd_ps(halves[1], xv, acc[1]);
            }
        }
        store_tile_256(&acc, w.rows, tile, first, out);
    }
}
