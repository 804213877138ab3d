//! The Q8_0 tile kernels in AVX-512 VNNI and in AVX2.
use super::q8::{OFFSET, TILE_BLOCK_BYTES};
use super::{prefetch_ahead, store_tile_256, store_tile_512, Activations, Out, Q8Matrix, BLOCK, GROUP, TILE};
use std::arch::x86_64::*;

/// Groups per block.
const GROUPS: usize = BLOCK / GROUP;

/// # Safety
/// The CPU must have AVX-512F, BW and VNNI; otherwise as [`Q8Matrix::tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_vnni(w: &Q8Matrix, a: &Activations, tile: usize, out: Out) {
    let mut first = 0;
    while first < a.m {
        // Up to 8 input rows per pass (their accumulators stay in registers: each pass streams
        // the matrix again, and the output head is the largest one). A block's 8 groups are
        // spread over `C` chains per input row, so that at least 4 independent chains hide
        // `vpdpbusd`'s latency.
        let inputs = (a.m - first).min(8);
        // SAFETY: inputs `first..first + inputs` exist; the rest is the caller's contract.
        unsafe {
            match inputs {
                1 => pass_vnni::<1, 4>(w, a, tile, first, out),
                2 => pass_vnni::<2, 2>(w, a, tile, first, out),
                3 => pass_vnni::<3, 1>(w, a, tile, first, out),
                4 => pass_vnni::<4, 1>(w, a, tile, first, out),
                5 => pass_vnni::<5, 1>(w, a, tile, first, out),
                6 => pass_vnni::<6, 1>(w, a, tile, first, out),
                7 => pass_vnni::<7, 1>(w, a, tile, first, out),
                _ => pass_vnni::<8, 1>(w, a, tile, first, out),
            }
        }
        first += inputs;
    }
}

/// Input rows `first..first + M` against every block of `tile`, one block per step: one
/// `vpdpbusd` per group gives 16 rows' partial dot products, which are scaled per block and
/// accumulated in f32.
///
/// # Safety
/// As [`tile_vnni`], with inputs `first..first + M` in range.
// Indexing keeps the loops shaped like the register tile they fill.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn pass_vnni<const M: usize, const C: usize>(
    w: &Q8Matrix,
    a: &Activations,
    tile: usize,
    first: usize,
    out: Out,
) {
    let blocks = w.blocks;
    let mut acc = [_mm512_setzero_ps(); M];
    // SAFETY: block `b < blocks` of `tile` (512 bytes and 16 scales) and of every input row
    // `< m` (32 bytes, one scale and one offset) exist; the features are the caller's guarantee.
    unsafe {
        let mut weights = w.quants.as_ptr().add(tile * blocks * TILE_BLOCK_BYTES);
        for b in 0..blocks {
            let mut sums = [[_mm512_setzero_si512(); C]; M];
            prefetch_ahead(weights, TILE_BLOCK_BYTES);
            for g in 0..GROUPS {
                let at = weights.add(g * TILE * GROUP);
                let wv = _mm512_loadu_si512(at as *const _);
                for i in 0..M {
                    let x = a.quants.as_ptr().add(((first + i) * blocks + b) * BLOCK + g * GROUP);
                    let xv = _mm512_set1_epi32((x as *const i32).read_unaligned());
                    sums[i][g % C] = _mm512_dpbusd_epi32(sums[i][g % C], wv, xv);
                }
            }
            let ws = _mm512_cvtph_ps(_mm256_loadu_si256(w.scales.as_ptr().add((tile * blocks + b) * TILE) as *const _));
            for i in 0..M {
                let xa = (first + i) * blocks + b;
                let mut sum = sums[i][0];
                for c in 1..C {
                    sum = _mm512_add_epi32(sum, sums[i][c]);
                }
                let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, _mm512_set1_epi32(OFFSET * a.sums[xa])));
                acc[i] = _mm512_fmadd_ps(dot, _mm512_mul_ps(ws, _mm512_set1_ps(a.scales[xa])), acc[i]);
            }
            weights = weights.add(TILE_BLOCK_BYTES);
        }
    }
    // SAFETY: inputs `first..first + M` are in range, and the tile's outputs the caller's.
    unsafe { store_tile_512(&acc, w.rows, tile, first, out) };
}

/// Without VNNI: each 64-byte group is two 8-row halves; the offset is flipped back to signed
/// bytes (`xor 0x80`), and the sign of `w` moves onto `x` so that `vpmaddubsw` sees `|w|`
/// unsigned times a signed value. Two input rows per pass (16 ymm registers).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; otherwise as [`Q8Matrix::tile`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2(w: &Q8Matrix, a: &Activations, tile: usize, out: Out) {
    let blocks = w.blocks;
    let flip = _mm256_set1_epi8(i8::MIN);
    let ones = _mm256_set1_epi16(1);
    for first in (0..a.m).step_by(2) {
        let inputs = (a.m - first).min(2);
        let mut acc = [[_mm256_setzero_ps(); 2]; 2];
        for b in 0..blocks {
            let mut sums = [[_mm256_setzero_si256(); 2]; 2];
            // SAFETY: block `b` of `tile` and of every input row `< m` exists, with its scales
            // and offsets; the features are the caller's guarantee.
            unsafe {
                let weights = w.quants.as_ptr().add((tile * blocks + b) * TILE_BLOCK_BYTES);
                for g in 0..GROUPS {
                    for half in 0..2 {
                        let raw = _mm256_loadu_si256(weights.add(g * TILE * GROUP + half * 32) as *const __m256i);
                        let signed_w = _mm256_xor_si256(raw, flip);
                        let magnitude = _mm256_sign_epi8(signed_w, signed_w);
                        for (i, sums) in sums.iter_mut().enumerate().take(inputs) {
                            let x = a.quants.as_ptr().add(((first + i) * blocks + b) * BLOCK + g * GROUP);
                            let xv = _mm256_set1_epi32((x as *const i32).read_unaligned());
                            let signed_x = _mm256_sign_epi8(xv, signed_w);
                            // Pairs of u8 × i8 products fit an i16 (127 · 127 · 2 < 2^15).
                            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), ones);
                            sums[half] = _mm256_add_epi32(sums[half], dot);
                        }
                    }
                }
                for half in 0..2 {
                    let ws = _mm256_cvtph_ps(_mm_loadu_si128(
                        w.scales.as_ptr().add((tile * blocks + b) * TILE + half * 8) as *const _,
                    ));
                    for (i, acc) in acc.iter_mut().enumerate().take(inputs) {
                        let scale = _mm256_mul_ps(ws, _mm256_set1_ps(a.scales[(first + i) * blocks + b]));
                        acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[i][half]), scale, acc[half]);
                    }
                }
            }
        }
        // SAFETY: inputs `first..first + inputs` are in range, and the tile's outputs the caller's.
        unsafe { store_tile_256(&acc[..inputs], w.rows, tile, first, out) };
    }
}
