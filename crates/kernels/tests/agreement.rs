//! The kernel agrees with candle's matmul on random inputs, for every instruction set this CPU
//! has, over shapes that stress the register blocks and the vector tails.
use candle_core::{Device, Tensor};
use proptest::prelude::*;
use recyclegpt_kernels::{linear_small, small_linear, Isa};

fn random(len: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let x = Tensor::from_slice(x, (m, k), &Device::Cpu).unwrap();
    let w = Tensor::from_slice(w, (n, k), &Device::Cpu).unwrap();
    x.matmul(&w.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn check(isa: Isa, m: usize, k: usize, n: usize, seed: u64) -> Result<(), String> {
    let x = random(m * k, seed);
    let w = random(n * k, seed + 1);
    let want = reference(&x, m, k, &w, n);
    let mut got = vec![0.0; m * n];
    linear_small(isa, &x, m, k, &w, n, &mut got);
    // Relative to the size of the sum (k terms of magnitude <= 1).
    let scale = (k as f32).sqrt().max(1.0);
    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
        if (g - r).abs() > 1e-5 * scale.max(r.abs()) {
            return Err(format!("{isa:?} m={m} k={k} n={n}: element {i}: {g} vs {r}"));
        }
    }
    Ok(())
}

#[test]
fn fixed_shapes_cover_blocks_tails_and_threads() {
    for isa in Isa::supported() {
        for m in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 32, 33, 48] {
            for (k, n) in [(1, 1), (7, 1), (16, 5), (17, 9), (64, 64), (100, 37), (288, 768), (769, 300)] {
                check(isa, m, k, n, (m * 1000 + k * 10 + n) as u64).unwrap();
            }
        }
    }
}

#[test]
fn the_candle_op_matches_matmul() {
    let x = Tensor::from_vec(random(3 * 70, 1), (3, 70), &Device::Cpu).unwrap();
    let w = Tensor::from_vec(random(45 * 70, 2), (45, 70), &Device::Cpu).unwrap();
    let got: Vec<f32> = small_linear(&x, &w).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = x.matmul(&w.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    for (g, r) in got.iter().zip(&want) {
        assert!((g - r).abs() <= 1e-5 * r.abs().max(1.0));
    }
    // Non-contiguous input is made contiguous; wrong shapes are an error, not a panic.
    let xt = Tensor::from_vec(random(70 * 3, 3), (70, 3), &Device::Cpu).unwrap().t().unwrap();
    assert!(small_linear(&xt, &w).is_ok());
    let bad = Tensor::from_vec(random(3 * 71, 1), (3, 71), &Device::Cpu).unwrap();
    assert!(small_linear(&bad, &w).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_shapes_agree(m in 1usize..40, k in 1usize..300, n in 1usize..200, seed in 0u64..1000) {
        for isa in Isa::supported() {
            prop_assert!(check(isa, m, k, n, seed).is_ok(), "{:?}", check(isa, m, k, n, seed));
        }
    }
}
