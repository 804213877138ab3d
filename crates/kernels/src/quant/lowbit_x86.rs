//! The 4- and 5-bit tile kernels in AVX-512 VNNI and in AVX2. A 64-byte group vector holds two
//! groups of nibbles: the low ones (columns `4g..4g + 4`) and the high ones (`16 + 4g..`); the
//! 5-bit formats add each value's fifth bit from a bit mask per group and nibble half.
use super::lowbit::{MASKS_PER_BLOCK, TILE_BLOCK_BYTES};
use super::{prefetch_ahead, tile_rows, Activations, LowBitMatrix, BLOCK, GROUP, TILE};
use crate::pool::OutPtr;
use std::arch::x86_64::*;

/// Nibble-pair vectors per block.
const VECTORS: usize = BLOCK / 2 / GROUP;

// The AVX2 kernel's i16 block sums (see `tile_avx2`) cannot overflow.
const _: () = assert!(VECTORS * 2 * 2 * 15 * 128 < 1 << 15);

/// `FIVE`: the matrix is in a 5-bit format.
///
/// # Safety
/// The CPU must have AVX-512F, BW and VNNI; with `FIVE`, the matrix must hold its fifth bits
/// (`quantize` makes them for the 5-bit formats alone); otherwise as [`LowBitMatrix::tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_vnni<const FIVE: bool>(w: &LowBitMatrix, a: &Activations, tile: usize, out: OutPtr) {
    let mut first = 0;
    while first < a.m {
        // Up to 8 input rows per pass (unpacking the nibbles is shared by the pass), at least 4
        // independent chains in all.
        let inputs = (a.m - first).min(8);
        // SAFETY: inputs `first..first + inputs` exist; the rest is the caller's contract.
        unsafe {
            match inputs {
                1 => pass_vnni::<1, 2, FIVE>(w, a, tile, first, out),
                2 => pass_vnni::<2, 1, FIVE>(w, a, tile, first, out),
                3 => pass_vnni::<3, 1, FIVE>(w, a, tile, first, out),
                4 => pass_vnni::<4, 1, FIVE>(w, a, tile, first, out),
                5 => pass_vnni::<5, 1, FIVE>(w, a, tile, first, out),
                6 => pass_vnni::<6, 1, FIVE>(w, a, tile, first, out),
                7 => pass_vnni::<7, 1, FIVE>(w, a, tile, first, out),
                _ => pass_vnni::<8, 1, FIVE>(w, a, tile, first, out),
            }
        }
        first += inputs;
    }
}

/// Input rows `first..first + M` against every block of `tile`, with `C` chains per input for
/// the low nibbles and `C` for the high ones. In the 4-bit formats the high nibbles are masked
/// in place (`& 0xF0`, 16 times their value, no shift per vector): their sums are divided by 16
/// once per block. In the 5-bit ones a fifth bit of 16 would not fit a byte there, so the high
/// nibbles are shifted down, and each value gains 16 where its mask bit is set.
///
/// # Safety
/// As [`tile_vnni`], with inputs `first..first + M` in range.
// Indexing keeps the loops shaped like the register tile they fill.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn pass_vnni<const M: usize, const C: usize, const FIVE: bool>(
    w: &LowBitMatrix,
    a: &Activations,
    tile: usize,
    first: usize,
    out: OutPtr,
) {
    let blocks = w.blocks;
    let low = _mm512_set1_epi8(0x0F);
    let high = _mm512_set1_epi8(0xF0u8 as i8);
    let sixteen = _mm512_set1_epi8(16);
    let mut acc = [_mm512_setzero_ps(); M];
    // SAFETY: block `b < blocks` of `tile` (256 bytes, 16 scales and 16 minimums) and of every
    // input row `< m` (32 bytes, one scale and one sum) exist; the features are the caller's.
    unsafe {
        let mut weights = w.quants.as_ptr().add(tile * blocks * TILE_BLOCK_BYTES);
        for b in 0..blocks {
            let mut sums_lo = [[_mm512_setzero_si512(); C]; M];
            let mut sums_hi = [[_mm512_setzero_si512(); C]; M];
            prefetch_ahead(weights, TILE_BLOCK_BYTES);
            for g in 0..VECTORS {
                let v = _mm512_loadu_si512(weights.add(g * TILE * GROUP) as *const _);
                let (lo, hi) = if FIVE {
                    let masks = w.fifth.as_ptr().add((tile * blocks + b) * MASKS_PER_BLOCK + 2 * g);
                    let lo = _mm512_and_si512(v, low);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                    (
                        _mm512_mask_add_epi8(lo, *masks, lo, sixteen),
                        _mm512_mask_add_epi8(hi, *masks.add(1), hi, sixteen),
                    )
                } else {
                    (_mm512_and_si512(v, low), _mm512_and_si512(v, high))
                };
                for i in 0..M {
                    let x = a.quants.as_ptr().add(((first + i) * blocks + b) * BLOCK + g * GROUP);
                    let x_lo = _mm512_set1_epi32((x as *const i32).read_unaligned());
                    let x_hi = _mm512_set1_epi32((x.add(BLOCK / 2) as *const i32).read_unaligned());
                    sums_lo[i][g % C] = _mm512_dpbusd_epi32(sums_lo[i][g % C], lo, x_lo);
                    sums_hi[i][g % C] = _mm512_dpbusd_epi32(sums_hi[i][g % C], hi, x_hi);
                }
            }
            let at = (tile * blocks + b) * TILE;
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(w.scales.as_ptr().add(at) as *const __m256i));
            let m = _mm512_cvtph_ps(_mm256_loadu_si256(w.mins.as_ptr().add(at) as *const __m256i));
            for i in 0..M {
                let xa = (first + i) * blocks + b;
                let (mut lo, mut hi) = (sums_lo[i][0], sums_hi[i][0]);
                for c in 1..C {
                    lo = _mm512_add_epi32(lo, sums_lo[i][c]);
                    hi = _mm512_add_epi32(hi, sums_hi[i][c]);
                }
                // Exact: in the 4-bit formats every high product is a multiple of 16.
                let sum =
                    if FIVE { _mm512_add_epi32(lo, hi) } else { _mm512_add_epi32(lo, _mm512_srai_epi32::<4>(hi)) };
                let scale = a.scales[xa];
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, _mm512_set1_ps(scale)), acc[i]);
                acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(scale * a.sums[xa] as f32), acc[i]);
            }
            weights = weights.add(TILE_BLOCK_BYTES);
        }
    }
    let real = tile_rows(w.rows, tile);
    let mask: __mmask16 = if real == TILE { !0 } else { (1u16 << real) - 1 };
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: lanes `0..real` are rows `tile * 16 + r < n` of input row `first + i < m`,
        // inside the `m × n` output and the caller's alone; the mask keeps the store to them.
        unsafe { _mm512_mask_storeu_ps(out.0.add((first + i) * w.rows + tile * TILE), mask, *acc) };
    }
}

/// Without VNNI: each 64-byte vector is two 8-row halves; values (at most 31) times signed bytes
/// fit `vpmaddubsw`'s i16 pairs. In the 4-bit formats a block's products are summed in i16 and
/// widened once per block: each i16 lane sums 16 products (4 groups, low and high nibbles,
/// pairs), at most 16 · 15 · 128 = 30,720 < 2^15 in magnitude for any signed byte. In the 5-bit
/// ones that sum could reach 16 · 31 · 128, so each group's pairs are widened as they come. The
/// scales and minimums are f16, converted 8 at a time (F16C): converting them one by one cost
/// more than the block's products. Two input rows per pass.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; with `FIVE`, the matrix must hold its fifth bits;
/// otherwise as [`LowBitMatrix::tile`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<const FIVE: bool>(w: &LowBitMatrix, a: &Activations, tile: usize, out: OutPtr) {
    let blocks = w.blocks;
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let real = tile_rows(w.rows, tile);
    for first in (0..a.m).step_by(2) {
        let inputs = (a.m - first).min(2);
        let mut acc = [[_mm256_setzero_ps(); 2]; 2];
        for b in 0..blocks {
            // i16 sums (4-bit formats) or i32 sums (5-bit), per input and half.
            let mut sums = [[_mm256_setzero_si256(); 2]; 2];
            let at = (tile * blocks + b) * TILE;
            // SAFETY: block `b` of `tile` (256 bytes, 16 scales and 16 minimums) and of every
            // input row `< m` (32 bytes, one scale and one sum) exist; the features are the
            // caller's guarantee.
            unsafe {
                let weights = w.quants.as_ptr().add((tile * blocks + b) * TILE_BLOCK_BYTES);
                for g in 0..VECTORS {
                    // The inputs' 4 bytes of this group, broadcast once for both halves.
                    let mut xs = [(_mm256_setzero_si256(), _mm256_setzero_si256()); 2];
                    for (i, xs) in xs.iter_mut().enumerate().take(inputs) {
                        let x = a.quants.as_ptr().add(((first + i) * blocks + b) * BLOCK + g * GROUP);
                        xs.0 = _mm256_set1_epi32((x as *const i32).read_unaligned());
                        xs.1 = _mm256_set1_epi32((x.add(BLOCK / 2) as *const i32).read_unaligned());
                    }
                    for half in 0..2 {
                        let v = _mm256_loadu_si256(weights.add(g * TILE * GROUP + half * 32) as *const __m256i);
                        let mut lo = _mm256_and_si256(v, low);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                        if FIVE {
                            let masks = w.fifth.as_ptr().add((tile * blocks + b) * MASKS_PER_BLOCK + 2 * g);
                            lo = _mm256_or_si256(lo, fifth_bits((*masks >> (32 * half)) as u32));
                            hi = _mm256_or_si256(hi, fifth_bits((*masks.add(1) >> (32 * half)) as u32));
                        }
                        for (sums, &(x_lo, x_hi)) in sums.iter_mut().zip(&xs).take(inputs) {
                            let pairs =
                                _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
                            sums[half] = if FIVE {
                                _mm256_add_epi32(sums[half], _mm256_madd_epi16(pairs, ones))
                            } else {
                                _mm256_add_epi16(sums[half], pairs)
                            };
                        }
                    }
                }
                for half in 0..2 {
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(w.scales.as_ptr().add(at + half * 8) as *const __m128i));
                    let m = _mm256_cvtph_ps(_mm_loadu_si128(w.mins.as_ptr().add(at + half * 8) as *const __m128i));
                    for (i, acc) in acc.iter_mut().enumerate().take(inputs) {
                        let xa = (first + i) * blocks + b;
                        let scale = a.scales[xa];
                        let wide = if FIVE { sums[i][half] } else { _mm256_madd_epi16(sums[i][half], ones) };
                        let dot = _mm256_cvtepi32_ps(wide);
                        acc[half] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d, _mm256_set1_ps(scale)), acc[half]);
                        acc[half] = _mm256_fmadd_ps(m, _mm256_set1_ps(scale * a.sums[xa] as f32), acc[half]);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate().take(inputs) {
            let mut lanes = [0f32; TILE];
            // SAFETY: `lanes` holds 16 floats, two stores of 8.
            unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
            }
            for (r, &v) in lanes.iter().enumerate().take(real) {
                // SAFETY: row `tile * 16 + r < n` of input `first + i < m`, the caller's alone.
                unsafe { *out.0.add((first + i) * w.rows + tile * TILE + r) = v };
            }
        }
    }
}

/// 16 in each byte whose bit of `bits` is set, 0 in the others (32 bytes for 32 bits).
///
/// # Safety
/// The CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn fifth_bits(bits: u32) -> __m256i {
    // Byte i of the result reads byte i / 8 of `bits` (within each 128-bit lane, which holds
    // all four), then tests its bit i % 8.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(set, _mm256_set1_epi8(16))
}
