//! `out[m, n] = x[m, k] · w[n, k]ᵀ` for small `m`, vectorised with AVX-512 or AVX2+FMA when the
//! CPU has them (scalar otherwise) and split across threads by output rows of `w`.
use crate::isa::{Isa, Kind};
use crate::pool::{self, OutPtr};

/// Weight rows per register block, and input rows per register block. A single input row
/// takes twice the weight rows, so that enough independent FMA chains hide the FMA latency.
const NR: usize = 4;
const NR_SINGLE: usize = 8;
const MR: usize = 4;

/// Computes `out = x · wᵀ`; `x` is `m × k`, `w` is `n × k`, `out` is `m × n`, all row-major.
pub fn linear_small(isa: Isa, x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert!(x.len() >= m * k && w.len() >= n * k && out.len() >= m * n, "linear_small: buffer too small");
    assert!(isa.available(), "linear_small: {isa:?} is not supported by this CPU");
    let ptr = OutPtr(out.as_mut_ptr());
    // Work is split in whole register blocks of weight rows.
    pool::split(n.div_ceil(NR_SINGLE), m * n * k, |blocks| {
        let rows = blocks.start * NR_SINGLE..(blocks.end * NR_SINGLE).min(n);
        // SAFETY: the buffer sizes were checked above, `rows` lies within `0..n`, and the pool
        // hands each range to one thread, so no other thread touches these columns of `out`.
        unsafe { run_rows(isa, x, m, k, w, n, rows, ptr) }
    });
}

/// Monomorphises the register block for `mr` input rows × `nr` weight rows.
macro_rules! dispatch {
    ($isa:ident, $mr:expr, $nr:expr, $args:expr) => {
        match ($mr, $nr) {
            (1, 1) => $isa::block::<1, 1>($args),
            (2, 1) => $isa::block::<2, 1>($args),
            (3, 1) => $isa::block::<3, 1>($args),
            (4, 1) => $isa::block::<4, 1>($args),
            (1, NR_SINGLE) => $isa::block::<1, NR_SINGLE>($args),
            (1, _) => $isa::block::<1, NR>($args),
            (2, _) => $isa::block::<2, NR>($args),
            (3, _) => $isa::block::<3, NR>($args),
            _ => $isa::block::<4, NR>($args),
        }
    };
}

/// Computes columns `rows` of `out`, one register block at a time. Which vector code runs comes
/// from `isa`, whose existence proves the CPU has its features.
///
/// # Safety
/// `x`, `w` and `out` must hold at least `m*k`, `n*k` and `m*n` values, `rows` must lie within
/// `0..n`, and nothing else may read or write columns `rows` of `out` during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn run_rows(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    rows: std::ops::Range<usize>,
    out: OutPtr,
) {
    let block_rows = if m == 1 { NR_SINGLE } else { NR };
    let mut j = rows.start;
    while j < rows.end {
        let nr = if rows.end - j >= block_rows { block_rows } else { 1 };
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR);
            // SAFETY: `i < m` and `j < rows.end <= n`, so row `i` of `x`, row `j` of `w` and element
            // `(i, j)` of `out` lie inside buffers of the sizes the caller guarantees.
            let args = unsafe {
                Block { x: x.as_ptr().add(i * k), w: w.as_ptr().add(j * k), out: out.0.add(i * n + j), k, n }
            };
            // SAFETY: `args` covers `mr <= m - i` rows of `x`, `nr <= rows.end - j` rows of `w`
            // and that `mr × nr` corner of `out`: in bounds, and this call's alone (the caller's
            // contract), as `Block` requires. An `Isa` only carries a vector kind when the CPU
            // has that kind's features (see `crate::isa`), as the `#[target_feature]` blocks need.
            unsafe {
                match isa.kind() {
                    #[cfg(target_arch = "x86_64")]
                    Kind::Avx512 => dispatch!(avx512, mr, nr, args),
                    #[cfg(target_arch = "x86_64")]
                    Kind::Avx2 => dispatch!(avx2, mr, nr, args),
                    _ => scalar_block(mr, nr, args),
                }
            }
            i += mr;
        }
        j += nr;
    }
}

/// One register block: `mr` rows of `x` starting at `x`, `nr` rows of `w` starting at `w`, each
/// `k` long, and the `mr × nr` outputs at `out`, rows `n` apart.
///
/// The contract every block function relies on: `x` is readable for its `mr` rows and `w` for
/// its `nr` rows, neither is written during the call, `out` is writable at `i * n + r` for
/// `i < mr`, `r < nr`, and no one else reads or writes those outputs meanwhile.
#[derive(Clone, Copy)]
struct Block {
    x: *const f32,
    w: *const f32,
    out: *mut f32,
    k: usize,
    n: usize,
}

/// The block without vector instructions (any CPU).
///
/// # Safety
/// `b` must satisfy [`Block`]'s contract for `mr` input rows and `nr` weight rows.
unsafe fn scalar_block(mr: usize, nr: usize, b: Block) {
    // SAFETY: every row slice and output element here is one the caller vouches for, and the
    // rows are not written while the slices live (the contract), as `from_raw_parts` requires.
    unsafe {
        for i in 0..mr {
            let xi = std::slice::from_raw_parts(b.x.add(i * b.k), b.k);
            for r in 0..nr {
                let wr = std::slice::from_raw_parts(b.w.add(r * b.k), b.k);
                *b.out.add(i * b.n + r) = xi.iter().zip(wr).map(|(a, c)| a * c).sum();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Block;
    use std::arch::x86_64::*;

    /// The block in AVX-512: 16 columns per step, then one masked step for the tail.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and `b` must satisfy [`Block`]'s contract for `MR` input rows
    /// and `NR` weight rows.
    // Indexing keeps the loops shaped like the `MR × NR` register tile they fill.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block<const MR: usize, const NR: usize>(b: Block) {
        // SAFETY: the caller guarantees the CPU has AVX-512F, which is all these intrinsics use,
        // and that rows `0..MR` of `x`, `0..NR` of `w` (each `k` long) and the `MR × NR` outputs
        // are valid. Full loads read columns `c..c + 16 <= full <= k`; the tail's masked loads
        // touch only columns `full..k` (masked-off lanes are never accessed).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NR]; MR];
            let mut wv = [_mm512_setzero_ps(); NR];
            let full = b.k / 16 * 16;
            let mut c = 0;
            while c < full {
                for r in 0..NR {
                    wv[r] = _mm512_loadu_ps(b.w.add(r * b.k + c));
                }
                for i in 0..MR {
                    let xv = _mm512_loadu_ps(b.x.add(i * b.k + c));
                    for r in 0..NR {
                        acc[i][r] = _mm512_fmadd_ps(xv, wv[r], acc[i][r]);
                    }
                }
                c += 16;
            }
            if full < b.k {
                let mask: __mmask16 = (1u32 << (b.k - full)).wrapping_sub(1) as __mmask16;
                for r in 0..NR {
                    wv[r] = _mm512_maskz_loadu_ps(mask, b.w.add(r * b.k + full));
                }
                for i in 0..MR {
                    let xv = _mm512_maskz_loadu_ps(mask, b.x.add(i * b.k + full));
                    for r in 0..NR {
                        acc[i][r] = _mm512_fmadd_ps(xv, wv[r], acc[i][r]);
                    }
                }
            }
            for i in 0..MR {
                for r in 0..NR {
                    *b.out.add(i * b.n + r) = _mm512_reduce_add_ps(acc[i][r]);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Block;
    use std::arch::x86_64::*;

    /// The sum of the 8 lanes of `v`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA (the features this is compiled for).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum(v: __m256) -> f32 {
        // Register-only intrinsics: safe inside a function compiled with their features.
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }

    /// The block in AVX2: 8 columns per step, then a scalar tail.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and `b` must satisfy [`Block`]'s contract for `MR` input
    /// rows and `NR` weight rows.
    // Indexing keeps the loops shaped like the `MR × NR` register tile they fill.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block<const MR: usize, const NR: usize>(b: Block) {
        // SAFETY: the caller guarantees the CPU has AVX2 and FMA, which is all these intrinsics
        // (and `sum`) use, and that rows `0..MR` of `x`, `0..NR` of `w` (each `k` long) and the
        // `MR × NR` outputs are valid. Vector loads read columns `c..c + 8 <= full <= k`; the
        // scalar tail reads columns `full..k`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            let mut wv = [_mm256_setzero_ps(); NR];
            let full = b.k / 8 * 8;
            let mut c = 0;
            while c < full {
                for r in 0..NR {
                    wv[r] = _mm256_loadu_ps(b.w.add(r * b.k + c));
                }
                for i in 0..MR {
                    let xv = _mm256_loadu_ps(b.x.add(i * b.k + c));
                    for r in 0..NR {
                        acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
                    }
                }
                c += 8;
            }
            for i in 0..MR {
                for r in 0..NR {
                    let mut total = sum(acc[i][r]);
                    for t in full..b.k {
                        total += *b.x.add(i * b.k + t) * *b.w.add(r * b.k + t);
                    }
                    *b.out.add(i * b.n + r) = total;
                }
            }
        }
    }
}
