//! The few vector operations the attention and gate kernels are written in, one implementation
//! per instruction set: each kernel has one body, generic over [`Vector`], compiled once per path
//! inside a `#[target_feature]` function (as candle's CPU backend does with its `VecOps`).
//!
//! Every method is `unsafe`: the x86 ones are only sound on a CPU with their features, which
//! the caller proves with an [`Isa`](crate::Isa), and `load`/`store` take raw pointers.

/// A vector of `LANES` f32 lanes.
pub(crate) trait Vector {
    type V: Copy;
    const LANES: usize;

    /// # Safety (for every method)
    /// The CPU must have the implementation's features; pointers must be valid for `LANES`
    /// f32 reads or writes.
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `-|x|`.
    unsafe fn neg_abs(x: Self::V) -> Self::V;
    /// `a` in the lanes where `x >= 0`, `b` in the others.
    unsafe fn select_nonneg(x: Self::V, a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sum(v: Self::V) -> f32;
    unsafe fn max_lane(v: Self::V) -> f32;
    /// The sums of four vectors' lanes, with a handful of shuffles for all four (summing each
    /// alone is a chain of shuffles per vector, which would cost more than the products).
    unsafe fn sum4(v: [Self::V; 4]) -> [f32; 4];
    /// e^x for x ≤ 0 (softmax weights): Cephes' polynomial, within a few ulp of `f32::exp`;
    /// lanes below -87.3 give about 1e-38 rather than 0.
    unsafe fn exp(x: Self::V) -> Self::V;
}

/// Cephes' `expf`: x = n·ln 2 + r with ln 2 split in two for precision, then a polynomial in r.
mod cephes {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const MIN_X: f32 = -87.336_55;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
}

/// The scalar path: one lane, and `f32::exp`.
pub(crate) struct Scalar;

impl Vector for Scalar {
    type V = f32;
    const LANES: usize = 1;
    unsafe fn zero() -> f32 {
        0.0
    }
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    unsafe fn load(p: *const f32) -> f32 {
        // SAFETY: the caller guarantees `p` is valid for one read.
        unsafe { *p }
    }
    unsafe fn store(p: *mut f32, v: f32) {
        // SAFETY: the caller guarantees `p` is valid for one write.
        unsafe { *p = v }
    }
    unsafe fn fmadd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    unsafe fn max(a: f32, b: f32) -> f32 {
        a.max(b)
    }
    unsafe fn sum(v: f32) -> f32 {
        v
    }
    unsafe fn max_lane(v: f32) -> f32 {
        v
    }
    unsafe fn sum4(v: [f32; 4]) -> [f32; 4] {
        v
    }
    unsafe fn exp(x: f32) -> f32 {
        x.exp()
    }
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    unsafe fn neg_abs(x: f32) -> f32 {
        -x.abs()
    }
    unsafe fn select_nonneg(x: f32, a: f32, b: f32) -> f32 {
        if x >= 0.0 {
            a
        } else {
            b
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{cephes, Vector};
    use std::arch::x86_64::*;

    /// AVX-512F: 16 lanes.
    pub(crate) struct Avx512;

    // SAFETY (every method): the caller guarantees the CPU has AVX-512F, all these intrinsics
    // need, and that pointers are valid for 16 f32 reads or writes.
    impl Vector for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn neg_abs(x: __m512) -> __m512 {
            unsafe { _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN))) }
        }
        #[inline(always)]
        unsafe fn select_nonneg(x: __m512, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_setzero_ps()), b, a) }
        }
        #[inline(always)]
        unsafe fn sum(v: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(v) }
        }
        #[inline(always)]
        unsafe fn max_lane(v: __m512) -> f32 {
            unsafe { _mm512_reduce_max_ps(v) }
        }
        #[inline(always)]
        unsafe fn sum4([a, b, c, d]: [__m512; 4]) -> [f32; 4] {
            unsafe {
                // Within each 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], the same for c, d,
                // then [a, b, c, d] partial sums; the four 128-bit lanes are added last.
                let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
                let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
                let (ab, cd) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
                // (The halves are moved as f64 pairs but added as f32.)
                let abcd = _mm512_add_ps(
                    _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
                    _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
                );
                let halves = _mm256_add_ps(
                    _mm512_castps512_ps256(abcd),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)),
                );
                let quarter = _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1));
                let mut out = [0f32; 4];
                _mm_storeu_ps(out.as_mut_ptr(), quarter);
                out
            }
        }
        #[inline(always)]
        unsafe fn exp(x: __m512) -> __m512 {
            unsafe {
                let x = _mm512_max_ps(x, _mm512_set1_ps(cephes::MIN_X));
                let n = _mm512_roundscale_ps(
                    _mm512_mul_ps(x, _mm512_set1_ps(cephes::LOG2E)),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                );
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(cephes::LN2_HI), x);
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(cephes::LN2_LO), r);
                let mut p = _mm512_set1_ps(cephes::P[0]);
                for c in &cephes::P[1..] {
                    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
                }
                let y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
                _mm512_scalef_ps(y, n)
            }
        }
    }

    /// AVX2 with FMA: 8 lanes.
    pub(crate) struct Avx2;

    // SAFETY (every method): the caller guarantees the CPU has AVX2 and FMA, all these
    // intrinsics need, and that pointers are valid for 8 f32 reads or writes.
    impl Vector for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn neg_abs(x: __m256) -> __m256 {
            unsafe { _mm256_or_ps(x, _mm256_set1_ps(-0.0)) }
        }
        #[inline(always)]
        unsafe fn select_nonneg(x: __m256, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_setzero_ps())) }
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            unsafe {
                let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
                _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
            }
        }
        #[inline(always)]
        unsafe fn max_lane(v: __m256) -> f32 {
            unsafe {
                let halves = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let pairs = _mm_max_ps(halves, _mm_movehl_ps(halves, halves));
                _mm_cvtss_f32(_mm_max_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
            }
        }
        #[inline(always)]
        unsafe fn sum4([a, b, c, d]: [__m256; 4]) -> [f32; 4] {
            unsafe {
                // As for AVX-512, with two 128-bit lanes.
                let ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                let cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
                let (ab, cd) = (_mm256_castps_pd(ab), _mm256_castps_pd(cd));
                let abcd = _mm256_add_ps(
                    _mm256_castpd_ps(_mm256_unpacklo_pd(ab, cd)),
                    _mm256_castpd_ps(_mm256_unpackhi_pd(ab, cd)),
                );
                let quarter = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
                let mut out = [0f32; 4];
                _mm_storeu_ps(out.as_mut_ptr(), quarter);
                out
            }
        }
        #[inline(always)]
        unsafe fn exp(x: __m256) -> __m256 {
            unsafe {
                let x = _mm256_max_ps(x, _mm256_set1_ps(cephes::MIN_X));
                let n = _mm256_round_ps(
                    _mm256_mul_ps(x, _mm256_set1_ps(cephes::LOG2E)),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                );
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(cephes::LN2_HI), x);
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(cephes::LN2_LO), r);
                let mut p = _mm256_set1_ps(cephes::P[0]);
                for c in &cephes::P[1..] {
                    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
                }
                let y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
                // 2^n through the exponent bits: n ≥ -126 here, so the result is normal.
                let bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
                _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
            }
        }
    }
}
