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
        // independent chains of multiply-adds in all.
        let rest = m - first;
        // SAFETY: input `first < m` exists; the rest is the caller's contract.
        unsafe {
            match (w.format(), rest) {
                (HalfFormat::F16, 1) => pass_512::<1, 4, false>(w, x, m, tile, first, out),
                (HalfFormat::F16, 2) => pass_512::<2, 2, false>(w, x, m, tile, first, out),
                (HalfFormat::F16, 3 | 4) => pass_512::<4, 1, false>(w, x, m, tile, first, out),
                (HalfFormat::F16, _) => pass_512::<8, 1, false>(w, x, m, tile, first, out),
                (HalfFormat::BF16, 1) => pass_512::<1, 4, true>(w, x, m, tile, first, out),
                (HalfFormat::BF16, 2) => pass_512::<2, 2, true>(w, x, m, tile, first, out),
                (HalfFormat::BF16, 3 | 4) => pass_512::<4, 1, true>(w, x, m, tile, first, out),
                (HalfFormat::BF16, _) => pass_512::<8, 1, true>(w, x, m, tile, first, out),
            }
        }
        // A pass takes up to its `M` rows: the whole rest below 8.
        first += rest.min(8);
    }
}

/// Input rows `first..first + M` (those below `m`: a pass of 4 may take 3) against every
/// column of `tile`, spread over `C` chains per input.
///
/// # Safety
/// As [`tile_512`], with `first < m`.
// Indexing keeps the loops shaped like the register tile they fill.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pass_512<const M: usize, const C: usize, const BF16: bool>(
    w: &HalfMatrix,
    x: &[f32],
    m: usize,
    tile: usize,
    first: usize,
    out: Out,
) {
    let (cols, inputs) = (w.cols, (m - first).min(M));
    let mut acc = [[_mm512_setzero_ps(); C]; M];
    // SAFETY: the tile's `cols` columns of 16 values and input rows `first..first + inputs`
    // exist (contract; `x` holds whole rows).
    unsafe {
        let weights = w.values.as_ptr().add(tile * cols * TILE);
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
            for i in 0..inputs {
                let xv = _mm512_set1_ps(*x.get_unchecked((first + i) * cols + c));
                acc[i][c % C] = _mm512_fmadd_ps(v, xv, acc[i][c % C]);
            }
        }
    }
    let sums: [__m512; M] =
        std::array::from_fn(|i| acc[i].iter().fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a)));
    // SAFETY: inputs `first..first + inputs` are in range, and the tile's outputs the caller's.
    unsafe { store_tile_512(&sums[..inputs], w.rows, tile, first, out) };
}

/// Without AVX-512: each column is two 8-row halves, up to 4 input rows per pass.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; otherwise as [`HalfMatrix::tile`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2(w: &HalfMatrix, x: &[f32], m: usize, tile: usize, out: Out) {
    let bf16 = w.format() == HalfFormat::BF16;
    let cols = w.cols;
    for first in (0..m).step_by(4) {
        let inputs = (m - first).min(4);
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        // SAFETY: as in `pass_512`, for inputs `first..first + inputs`.
        unsafe {
            let weights = w.values.as_ptr().add(tile * cols * TILE);
            for c in 0..cols {
                if c % PREFETCH_COLUMNS == 0 {
                    prefetch_ahead(weights.add(c * TILE) as *const u8, PREFETCH_COLUMNS * TILE * 2);
                }
                let halves = [0, 1].map(|h| {
                    let v = _mm_loadu_si128(weights.add(c * TILE + 8 * h) as *const __m128i);
                    if bf16 {
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
                    } else {
                        _mm256_cvtph_ps(v)
                    }
                });
                for (i, acc) in acc.iter_mut().enumerate().take(inputs) {
                    let xv = _mm256_set1_ps(*x.get_unchecked((first + i) * cols + c));
                    acc[0] = _mm256_fmadd_ps(halves[0], xv, acc[0]);
                    acc[1] = _mm256_fmadd_ps(halves[1], xv, acc[1]);
                }
            }
            store_tile_256(&acc[..inputs], w.rows, tile, first, out);
        }
    }
}
