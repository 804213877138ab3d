//! The activations of one call quantized to int8 per block of 32, on the calling thread before
//! the product is split: with the scalar loop this took a tenth of a 2-token forward (the other
//! thread waiting), and it grows with every row a verifying forward adds, so each path has its
//! vector form, bit for bit the scalar one's.
use super::{quantize_block, Path, BLOCK};
use std::cell::RefCell;

/// `x` quantized for one call, `[input row][block]`; reused across calls.
#[derive(Default)]
pub(super) struct Activations {
    pub(super) m: usize,
    pub(super) quants: Vec<i8>,
    pub(super) scales: Vec<f32>,
    /// `Σx` of each block's int8 values.
    pub(super) sums: Vec<i32>,
    /// `scale · Σx` of each block: the minimum's term of the low-bit formats, one broadcast in
    /// the kernels' block epilogue instead of a conversion and a product per output tile.
    pub(super) scaled_sums: Vec<f32>,
    /// `Σx` of the first 16 int8 values of each block, for weights with a scale per half block
    /// (Q6_K); empty unless asked for.
    pub(super) low_sums: Vec<i32>,
}

impl Activations {
    /// Quantizes `x` (`m × cols`); with `halves`, the half blocks' sums too.
    pub(super) fn fill(&mut self, path: Path, x: &[f32], m: usize, cols: usize, halves: bool) {
        let blocks = m * cols / BLOCK;
        self.m = m;
        self.quants.resize(blocks * BLOCK, 0);
        self.scales.resize(blocks, 0.0);
        self.sums.resize(blocks, 0);
        let blocks = x[..m * cols].chunks_exact(BLOCK).zip(self.quants.chunks_exact_mut(BLOCK));
        for ((block, quants), (scale, sum)) in blocks.zip(self.scales.iter_mut().zip(self.sums.iter_mut())) {
            let block: &[f32; BLOCK] = block.try_into().expect("chunks_exact gives whole blocks");
            let quants: &mut [i8; BLOCK] = quants.try_into().expect("chunks_exact gives whole blocks");
            (*scale, *sum) = match path {
                // SAFETY: `Path::choose` picked these paths only on CPUs with their features
                // (VNNI implies AVX-512F; AVX2 comes with its FMA and F16C).
                #[cfg(target_arch = "x86_64")]
                Path::Vnni => unsafe { quantize_avx512(block, quants) },
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => unsafe { quantize_avx2(block, quants) },
                Path::Scalar => quantize_scalar(block, quants),
            };
        }
        self.scaled_sums.clear();
        self.scaled_sums.extend(self.scales.iter().zip(&self.sums).map(|(&scale, &sum)| scale * sum as f32));
        self.low_sums.clear();
        if halves {
            let low = |block: &[i8]| block[..BLOCK / 2].iter().map(|&v| i32::from(v)).sum::<i32>();
            self.low_sums.extend(self.quants.chunks_exact(BLOCK).map(low));
        }
    }
}

thread_local! {
    /// The calling thread's quantized activations, kept between calls so that a decode step
    /// does not allocate for them.
    pub(super) static ACTIVATIONS: RefCell<Activations> = RefCell::new(Activations::default());
}

fn quantize_scalar(block: &[f32; BLOCK], quants: &mut [i8; BLOCK]) -> (f32, i32) {
    let (q, scale) = quantize_block(block);
    *quants = q;
    (scale, q.iter().map(|&v| i32::from(v)).sum())
}

/// [`quantize_block`]'s steps in the same order (max |v|, `/ 127`, `1 / scale`, `v · inverse`,
/// `+ ±0.5`, truncate, clamp), so every finite block gives the same bytes.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_avx512(block: &[f32; BLOCK], quants: &mut [i8; BLOCK]) -> (f32, i32) {
    use std::arch::x86_64::*;
    // SAFETY: `block` holds 32 floats (two vectors), `quants` 32 bytes (two stores of 16).
    unsafe {
        let v = [_mm512_loadu_ps(block.as_ptr()), _mm512_loadu_ps(block.as_ptr().add(16))];
        let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
        let scale = max / 127.0;
        let inverse = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let (sign, half) = (_mm512_set1_epi32(i32::MIN), _mm512_set1_epi32(0.5f32.to_bits() as i32));
        let (low, high) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        let mut sum = _mm512_setzero_si512();
        for (i, v) in v.into_iter().enumerate() {
            let p = _mm512_mul_ps(v, inverse);
            let half = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(p), sign), half));
            let q = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvttps_epi32(_mm512_add_ps(p, half)), low), high);
            sum = _mm512_add_epi32(sum, q);
            _mm_storeu_si128(quants.as_mut_ptr().add(16 * i) as *mut __m128i, _mm512_cvtepi32_epi8(q));
        }
        (scale, _mm512_reduce_add_epi32(sum))
    }
}

/// As [`quantize_avx512`], in four 8-lane vectors.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(block: &[f32; BLOCK], quants: &mut [i8; BLOCK]) -> (f32, i32) {
    use std::arch::x86_64::*;
    // SAFETY: `block` holds 32 floats (four vectors), `quants` 32 bytes (one store).
    unsafe {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(block.as_ptr().add(8 * i)));
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
        let mut max = _mm256_and_ps(v[0], abs);
        for v in &v[1..] {
            max = _mm256_max_ps(max, _mm256_and_ps(*v, abs));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), max);
        let scale = lanes.iter().fold(0f32, |m, &v| m.max(v)) / 127.0;
        let inverse = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
        let (sign, half) = (_mm256_set1_epi32(i32::MIN), _mm256_set1_epi32(0.5f32.to_bits() as i32));
        let (low, high) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            let p = _mm256_mul_ps(v[i], inverse);
            let half = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(_mm256_castps_si256(p), sign), half));
            _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(_mm256_add_ps(p, half)), low), high)
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let mut sums = [0i32; 8];
        _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, sum);
        // The packs interleave the 128-bit lanes: bytes come out as dwords 0 4 1 5 2 6 3 7.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(quants.as_mut_ptr() as *mut __m256i, ordered);
        (scale, sums.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Isa;
    use rand::{Rng, SeedableRng};

    /// Every path's bytes, scales and sums equal the scalar loop's, on random blocks and on the
    /// edges: zeros, exact halves (where rounding direction shows), one large value.
    #[test]
    fn every_path_quantizes_as_the_scalar_loop() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut x: Vec<f32> = (0..64 * BLOCK).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        x[..BLOCK].fill(0.0);
        for (c, v) in x[BLOCK..2 * BLOCK].iter_mut().enumerate() {
            *v = (c as f32 - 16.0) * 0.5;
        }
        x[2 * BLOCK..3 * BLOCK].fill(1e-3);
        x[2 * BLOCK + 7] = -254.0;
        let (m, cols) = (4, 16 * BLOCK);
        let mut reference = Activations::default();
        reference.fill(Path::Scalar, &x, m, cols, true);
        for isa in Isa::supported() {
            let mut got = Activations::default();
            got.fill(Path::choose(isa), &x, m, cols, true);
            assert_eq!(got.quants, reference.quants, "{isa:?}");
            assert_eq!(got.scales, reference.scales, "{isa:?}");
            assert_eq!(got.sums, reference.sums, "{isa:?}");
            assert_eq!(got.scaled_sums, reference.scaled_sums, "{isa:?}");
            assert_eq!(got.low_sums, reference.low_sums, "{isa:?}");
        }
    }
}
