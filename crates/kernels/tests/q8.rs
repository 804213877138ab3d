//! The Q8_0 kernel against the same product computed from the dequantized weights, on every
//! path this CPU runs, over random shapes.
use proptest::prelude::*;
use recyclegpt_kernels::{linear_small, q8_linear, Isa, Q8Matrix};

fn values(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn q8_matches_the_dequantized_product(m in 1usize..=17, n in 1usize..=150, blocks in 1usize..=8, seed in 0u64..1000) {
        let k = blocks * 32;
        let w = Q8Matrix::quantize(&values(n * k, seed), n, k).expect("k is a multiple of 32");
        let x = values(m * k, seed + 1);
        // The reference: the dequantized weights times x, in f32.
        let mut reference = vec![0f32; m * n];
        linear_small(Isa::detect(), &x, m, k, &w.dequantize(), n, &mut reference);
        let scale = reference.iter().fold(1f32, |a, v| a.max(v.abs()));
        for isa in Isa::supported() {
            let mut out = vec![0f32; m * n];
            q8_linear(isa, &x, m, &w, &mut out);
            for (got, want) in out.iter().zip(&reference) {
                // x is rounded to 8 bits per block: about 1% of the largest output.
                prop_assert!((got - want).abs() <= 0.02 * scale, "{isa:?} m={m} n={n} k={k}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn every_path_gives_the_same_integers() {
    let (m, n, k) = (5, 70, 96);
    let w = Q8Matrix::quantize(&values(n * k, 7), n, k).unwrap();
    let x = values(m * k, 8);
    let outputs: Vec<Vec<f32>> = Isa::supported()
        .into_iter()
        .map(|isa| {
            let mut out = vec![0f32; m * n];
            q8_linear(isa, &x, m, &w, &mut out);
            out
        })
        .collect();
    for other in &outputs[1..] {
        for (a, b) in outputs[0].iter().zip(other) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
}

#[test]
fn only_whole_blocks_quantize() {
    assert!(Q8Matrix::quantize(&[0.0; 30], 1, 30).is_none());
    assert!(Q8Matrix::quantize(&[0.0; 64], 2, 32).is_some());
}
