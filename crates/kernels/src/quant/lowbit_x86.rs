//! The low-bit tile kernels in AVX-512 VNNI and in AVX2. A 64-byte group vector holds two
//! groups of nibbles: the low ones (columns `4g..4g + 4`) and the high ones (`16 + 4g..`); the
//! 5- and 6-bit formats add each value's fifth (and sixth) bit from a bit mask per group and
//! nibble half. `BITS` is the format's bits per value, `S` where it keeps its scales
//! (`lowbit::scaling`); `LowBitMatrix::tile` names the pair of each format.
use super::lowbit::{scaling, MASKS_PER_BLOCK, SUPER, TILE_BLOCK_BYTES, TILE_SUB_BYTES};
use super::{prefetch_ahead, store_tile_256, store_tile_512, Activations, LowBitMatrix, Out, BLOCK, GROUP, TILE};
use std::arch::x86_64::*;

/// Nibble-pair vectors per block.
const VECTORS: usize = BLOCK / 2 / GROUP;

// The AVX2 kernel's i16 block sums (see `tile_avx2`) cannot overflow.
const _: () = assert!(VECTORS * 2 * 2 * 15 * 128 < 1 << 15);

/// The scales of one block of a tile's 16 rows: `d` and `m` of each half block (the same for
/// both halves but in Q6_K, whose `m` is applied as `q - 32` and returned as zero).
///
/// # Safety
/// Block `b < blocks` of `tile` must exist, with the planes format `S` keeps; the CPU must have
/// AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scales_512<const BITS: u32, const S: u8>(w: &LowBitMatrix, tile: usize, b: usize) -> [(__m512, __m512); 2] {
    let at = scale_index::<S>(w.blocks, tile, b);
    // SAFETY: the 16 rows' scales (and minimums, where `S` keeps them) of block `b` of `tile`
    // start at `at`, and its multipliers (where `S` keeps them) at `sub_at`: `zeros` sized the
    // planes so (contract).
    unsafe {
        let f16s = |plane: &[half::f16]| _mm512_cvtph_ps(_mm256_loadu_si256(plane.as_ptr().add(at) as *const __m256i));
        let bytes =
            |which: usize| _mm_loadu_si128(w.sub.as_ptr().add(sub_at(w.blocks, tile, b, which)) as *const __m128i);
        let d = f16s(&w.scales);
        match S {
            scaling::BLOCK => [(d, f16s(&w.mins)); 2],
            scaling::SYMMETRIC => [(d, _mm512_mul_ps(d, _mm512_set1_ps(-((1 << (BITS - 1)) as f32)))); 2],
            scaling::SUPER => {
                let scale = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes(0))));
                let min = _mm512_mul_ps(f16s(&w.mins), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes(1))));
                [(scale, _mm512_sub_ps(_mm512_setzero_ps(), min)); 2]
            }
            _halves => [0, 1]
                .map(|h| (_mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes(h)))), _mm512_setzero_ps())),
        }
    }
}

/// Where the first of a tile's 16 rows' scales of block `b` is, for scales kept as `S` (a
/// const, so that Q4_0-Q5_1 pay no branch per block).
#[inline(always)]
fn scale_index<const S: u8>(blocks: usize, tile: usize, b: usize) -> usize {
    match S {
        scaling::SUPER | scaling::HALVES => (tile * blocks / SUPER + b / SUPER) * TILE,
        _ => (tile * blocks + b) * TILE,
    }
}

/// Where the first of a tile's 16 rows' K multipliers `which` of block `b` is.
#[inline(always)]
fn sub_at(blocks: usize, tile: usize, b: usize, which: usize) -> usize {
    (tile * blocks + b) * TILE_SUB_BYTES + which * TILE
}

/// # Safety
/// The CPU must have AVX-512F, BW and VNNI; the matrix must be in a format with `BITS` bits per
/// value and scales kept as `S`; otherwise as [`LowBitMatrix::tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile_vnni<const BITS: u32, const S: u8>(w: &LowBitMatrix, a: &Activations, tile: usize, out: Out) {
    let mut first = 0;
    while first < a.m {
        // Up to 8 input rows per pass (unpacking the nibbles is shared by the pass), at least 4
        // independent chains in all.
        let inputs = (a.m - first).min(8);
        // SAFETY: inputs `first..first + inputs` exist; the rest is the caller's contract.
        unsafe {
            match inputs {
                1 => pass_vnni::<1, 2, BITS, S>(w, a, tile, first, out),
                2 => pass_vnni::<2, 1, BITS, S>(w, a, tile, first, out),
                3 => pass_vnni::<3, 1, BITS, S>(w, a, tile, first, out),
                4 => pass_vnni::<4, 1, BITS, S>(w, a, tile, first, out),
                5 => pass_vnni::<5, 1, BITS, S>(w, a, tile, first, out),
                6 => pass_vnni::<6, 1, BITS, S>(w, a, tile, first, out),
                7 => pass_vnni::<7, 1, BITS, S>(w, a, tile, first, out),
                _ => pass_vnni::<8, 1, BITS, S>(w, a, tile, first, out),
            }
        }
        first += inputs;
    }
}

/// Input rows `first..first + M` against every block of `tile`, with `C` chains per input for
/// the low nibbles and `C` for the high ones. In the 4-bit formats, for one or two input rows,
/// the high nibbles are masked in place (`& 0xF0`, 16 times their value, no shift per vector):
/// their sums are divided by 16 once per block and row. For more rows they are shifted down
/// once per vector, which the rows share, saving each row that shift per block (a verifying
/// forward of 8 tokens took 5% less). In the others a fifth bit of 16 would not fit a byte
/// there, so the high nibbles are shifted down, and each value gains 16 (and 32) where its mask
/// bits are set.
/// Q6_K's halves keep their own sums, each less 32 times its activations' sum.
///
/// # Safety
/// As [`tile_vnni`], with inputs `first..first + M` in range.
// Indexing keeps the loops shaped like the register tile they fill.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn pass_vnni<const M: usize, const C: usize, const BITS: u32, const S: u8>(
    w: &LowBitMatrix,
    a: &Activations,
    tile: usize,
    first: usize,
    out: Out,
) {
    let blocks = w.blocks;
    let low = _mm512_set1_epi8(0x0F);
    let high = _mm512_set1_epi8(0xF0u8 as i8);
    // Whether the 4-bit formats' high nibbles are shifted down per vector (see above).
    let shifted = BITS > 4 || M > 2;
    let (sixteen, thirty_two) = (_mm512_set1_epi8(16), _mm512_set1_epi8(32));
    let mut acc = [_mm512_setzero_ps(); M];
    // SAFETY: block `b < blocks` of `tile` (256 bytes, its scales, masks and multipliers) and of
    // every input row `< m` (32 bytes, one scale and one sum) exist; the features are the
    // caller's.
    unsafe {
        let mut weights = w.quants.as_ptr().add(tile * blocks * TILE_BLOCK_BYTES);
        for b in 0..blocks {
            let mut sums_lo = [[_mm512_setzero_si512(); C]; M];
            let mut sums_hi = [[_mm512_setzero_si512(); C]; M];
            prefetch_ahead(weights, TILE_BLOCK_BYTES);
            for g in 0..VECTORS {
                let v = _mm512_loadu_si512(weights.add(g * TILE * GROUP) as *const _);
                let (lo, hi) = if BITS > 4 {
                    let mask = (tile * blocks + b) * MASKS_PER_BLOCK + 2 * g;
                    let mut lo = _mm512_and_si512(v, low);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                    lo = _mm512_mask_add_epi8(lo, *w.fifth.as_ptr().add(mask), lo, sixteen);
                    hi = _mm512_mask_add_epi8(hi, *w.fifth.as_ptr().add(mask + 1), hi, sixteen);
                    if BITS > 5 {
                        lo = _mm512_mask_add_epi8(lo, *w.sixth.as_ptr().add(mask), lo, thirty_two);
                        hi = _mm512_mask_add_epi8(hi, *w.sixth.as_ptr().add(mask + 1), hi, thirty_two);
                    }
                    (lo, hi)
                } else if shifted {
                    (_mm512_and_si512(v, low), _mm512_and_si512(_mm512_srli_epi16::<4>(v), low))
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
            let [(d, m), (d_hi, _)] = scales_512::<BITS, S>(w, tile, b);
            for i in 0..M {
                let xa = (first + i) * blocks + b;
                let (mut lo, mut hi) = (sums_lo[i][0], sums_hi[i][0]);
                for c in 1..C {
                    lo = _mm512_add_epi32(lo, sums_lo[i][c]);
                    hi = _mm512_add_epi32(hi, sums_hi[i][c]);
                }
                let scale = _mm512_set1_ps(a.scales[xa]);
                if S == scaling::HALVES {
                    let low_sum = a.low_sums[xa];
                    lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(32 * low_sum));
                    hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(32 * (a.sums[xa] - low_sum)));
                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), _mm512_mul_ps(d, scale), acc[i]);
                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_mul_ps(d_hi, scale), acc[i]);
                    continue;
                }
                // Exact: unshifted, every high product is a multiple of 16.
                let sum =
                    if shifted { _mm512_add_epi32(lo, hi) } else { _mm512_add_epi32(lo, _mm512_srai_epi32::<4>(hi)) };
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, scale), acc[i]);
                acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(a.scaled_sums[xa]), acc[i]);
            }
            weights = weights.add(TILE_BLOCK_BYTES);
        }
    }
    // SAFETY: inputs `first..first + M` are in range, and the tile's outputs the caller's.
    unsafe { store_tile_512(&acc, w.rows, tile, first, out) };
}

/// [`scales_512`] for the 8 rows of `half` of a tile.
///
/// # Safety
/// As [`scales_512`], with AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn scales_256<const BITS: u32, const S: u8>(
    w: &LowBitMatrix,
    tile: usize,
    b: usize,
    half: usize,
) -> [(__m256, __m256); 2] {
    let at = scale_index::<S>(w.blocks, tile, b) + 8 * half;
    // SAFETY: as in `scales_512`, for the 8 rows from `8 * half`.
    unsafe {
        let f16s = |plane: &[half::f16]| _mm256_cvtph_ps(_mm_loadu_si128(plane.as_ptr().add(at) as *const __m128i));
        let bytes = |which: usize| {
            _mm_loadl_epi64(w.sub.as_ptr().add(sub_at(w.blocks, tile, b, which) + 8 * half) as *const __m128i)
        };
        let d = f16s(&w.scales);
        match S {
            scaling::BLOCK => [(d, f16s(&w.mins)); 2],
            scaling::SYMMETRIC => [(d, _mm256_mul_ps(d, _mm256_set1_ps(-((1 << (BITS - 1)) as f32)))); 2],
            scaling::SUPER => {
                let scale = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes(0))));
                let min = _mm256_mul_ps(f16s(&w.mins), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes(1))));
                [(scale, _mm256_sub_ps(_mm256_setzero_ps(), min)); 2]
            }
            _halves => [0, 1]
                .map(|h| (_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes(h)))), _mm256_setzero_ps())),
        }
    }
}

/// Without VNNI: each 64-byte vector is two 8-row halves; values (at most 63) times signed bytes
/// fit `vpmaddubsw`'s i16 pairs. In the 4-bit formats a block's products are summed in i16 and
/// widened once per block: each i16 lane sums 16 products (4 groups, low and high nibbles,
/// pairs), at most 16 · 15 · 128 = 30,720 < 2^15 in magnitude for any signed byte. In the others
/// that sum could overflow, so each group's pairs are widened as they come (Q6_K's halves
/// apart). The scales and minimums are f16, converted 8 at a time (F16C): converting them one by
/// one cost more than the block's products. Two input rows per pass.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; the matrix must be in a format with `BITS` bits per
/// value and scales kept as `S`; otherwise as [`LowBitMatrix::tile`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<const BITS: u32, const S: u8>(w: &LowBitMatrix, a: &Activations, tile: usize, out: Out) {
    let blocks = w.blocks;
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    for first in (0..a.m).step_by(2) {
        let inputs = (a.m - first).min(2);
        let mut acc = [[_mm256_setzero_ps(); 2]; 2];
        for b in 0..blocks {
            // Per input and row half: i16 sums (4-bit formats) or i32 sums (the others) of the
            // block, or (Q6_K) of each half block.
            let mut sums = [[[_mm256_setzero_si256(); 2]; 2]; 2];
            // SAFETY: block `b` of `tile` (256 bytes, its scales, masks and multipliers) and of
            // every input row `< m` (32 bytes, one scale and one sum) exist; the features are the
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
                    let mask = (tile * blocks + b) * MASKS_PER_BLOCK + 2 * g;
                    for half in 0..2 {
                        let v = _mm256_loadu_si256(weights.add(g * TILE * GROUP + half * 32) as *const __m256i);
                        let mut lo = _mm256_and_si256(v, low);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                        let planes = [(&w.fifth, 16), (&w.sixth, 32)];
                        for (plane, value) in planes.into_iter().take(BITS.saturating_sub(4) as usize) {
                            let masks = plane.as_ptr().add(mask);
                            lo = _mm256_or_si256(lo, bit_bytes((*masks >> (32 * half)) as u32, value));
                            hi = _mm256_or_si256(hi, bit_bytes((*masks.add(1) >> (32 * half)) as u32, value));
                        }
                        for (sums, &(x_lo, x_hi)) in sums.iter_mut().zip(&xs).take(inputs) {
                            let (p_lo, p_hi) = (_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
                            let sums = &mut sums[half];
                            if S == scaling::HALVES {
                                sums[0] = _mm256_add_epi32(sums[0], _mm256_madd_epi16(p_lo, ones));
                                sums[1] = _mm256_add_epi32(sums[1], _mm256_madd_epi16(p_hi, ones));
                            } else if BITS > 4 {
                                let pairs = _mm256_add_epi16(p_lo, p_hi);
                                sums[0] = _mm256_add_epi32(sums[0], _mm256_madd_epi16(pairs, ones));
                            } else {
                                sums[0] = _mm256_add_epi16(sums[0], _mm256_add_epi16(p_lo, p_hi));
                            }
                        }
                    }
                }
                for half in 0..2 {
                    let [(d, m), (d_hi, _)] = scales_256::<BITS, S>(w, tile, b, half);
                    for (i, acc) in acc.iter_mut().enumerate().take(inputs) {
                        let xa = (first + i) * blocks + b;
                        let scale = _mm256_set1_ps(a.scales[xa]);
                        let sums = sums[i][half];
                        if S == scaling::HALVES {
                            let low_sum = a.low_sums[xa];
                            let lo = _mm256_sub_epi32(sums[0], _mm256_set1_epi32(32 * low_sum));
                            let hi = _mm256_sub_epi32(sums[1], _mm256_set1_epi32(32 * (a.sums[xa] - low_sum)));
                            acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(d, scale), acc[half]);
                            acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(d_hi, scale), acc[half]);
                            continue;
                        }
                        let wide = if BITS > 4 { sums[0] } else { _mm256_madd_epi16(sums[0], ones) };
                        let dot = _mm256_cvtepi32_ps(wide);
                        acc[half] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d, scale), acc[half]);
                        acc[half] = _mm256_fmadd_ps(m, _mm256_set1_ps(a.scaled_sums[xa]), acc[half]);
                    }
                }
            }
        }
        // SAFETY: inputs `first..first + inputs` are in range, and the tile's outputs the caller's.
        unsafe { store_tile_256(&acc[..inputs], w.rows, tile, first, out) };
    }
}

/// `value` in each byte whose bit of `bits` is set, 0 in the others (32 bytes for 32 bits).
///
/// # Safety
/// The CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bit_bytes(bits: u32, value: i8) -> __m256i {
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
    _mm256_and_si256(set, _mm256_set1_epi8(value))
}
