//! The F16 and BF16 kernels against the f32 product of the same (rounded) weights on every path
//! this CPU runs: equal up to f32 summation order, over random shapes and rows of any width.
use proptest::prelude::*;
use recyclegpt_kernels::{linear_small, quant_linear, HalfFormat, HalfMatrix, Isa, QuantMatrix};

fn values(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Every path's product of `x` (`m × k`) and `w` against the f32 product of its values, into
/// outputs that start as NaN: within f32 rounding of a sum of `k` terms of at most 1 each.
fn check(w: &HalfMatrix, x: &[f32], m: usize) {
    let (n, k) = (w.rows(), w.cols());
    let mut reference = vec![0f32; m * n];
    linear_small(Isa::detect(), x, m, k, &w.dequantize(), n, &mut reference);
    let w = QuantMatrix::Half(w.clone());
    for isa in Isa::supported() {
        let mut out = vec![f32::NAN; m * n];
        quant_linear(isa, x, m, &w, &mut out);
        for (j, (got, want)) in out.iter().zip(&reference).enumerate() {
            assert!((got - want).abs() <= 1e-5 * k as f32, "{isa:?} output {j}: {got} vs {want}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn half_matches_the_f32_product(m in 1usize..=17, n in 1usize..=40, k in 1usize..=300, seed in 0u64..1000, bf16 in any::<bool>()) {
        let format = if bf16 { HalfFormat::BF16 } else { HalfFormat::F16 };
        let w = HalfMatrix::quantize(&values(n * k, seed), n, k, format).expect("any positive width");
        check(&w, &values(m * k, seed + 1), m);
    }
}

/// The values are the nearest of each format, and read back as they were stored.
#[test]
fn values_round_to_the_nearest_and_come_back() {
    let values = [1.0f32, -2.5, 1.0 / 3.0, 65504.0, 1e-8, 3.0e38];
    let f16 = HalfMatrix::quantize(&values, 2, 3, HalfFormat::F16).unwrap();
    let expected: Vec<f32> = values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    assert_eq!(f16.dequantize(), expected);
    let bf16 = HalfMatrix::quantize(&values, 3, 2, HalfFormat::BF16).unwrap();
    let expected: Vec<f32> = values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
    assert_eq!(bf16.dequantize(), expected);
    assert_eq!(bf16.bytes(), 2 * 16 * 2, "one tile of 16 rows × 2 columns");
    assert!(HalfMatrix::quantize(&values, 2, 0, HalfFormat::F16).is_none());
    assert!(HalfMatrix::quantize(&values, 4, 2, HalfFormat::F16).is_none());
}
