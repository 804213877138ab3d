//! The Q8_0 kernel against the same product computed from the dequantized weights, on every
//! path this CPU runs, over random shapes.
use proptest::prelude::*;
use recyclegpt_kernels::{linear_small, q8_linear, Isa, Q8Matrix, QuantMatrix};

fn values(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// How far the kernel may be from the dequantized product for row `x` of the input and row `w`
/// of the weights: each input value is rounded to its block's step (max |x| / 127), so by at
/// most half a step, and the products carry that error times |w| (the weights are the
/// reference's own, so they add none); plus f32 roundings. A bound in proportion to the
/// largest output instead failed now and then, where an output near zero summed 128 such
/// roundings.
fn allowed_error(x: &[f32], w: &[f32]) -> f32 {
    let mut bound = 1e-5;
    for (xb, wb) in x.chunks(32).zip(w.chunks(32)) {
        let step = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
        bound += wb.iter().zip(xb).map(|(w, x)| w.abs() * (0.5 * step * 1.001 + 1e-6 * x.abs())).sum::<f32>();
    }
    bound
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn q8_matches_the_dequantized_product(m in 1usize..=17, n in 1usize..=150, blocks in 1usize..=8, seed in 0u64..1000) {
        let k = blocks * 32;
        let w = Q8Matrix::quantize(&values(n * k, seed), n, k).expect("k is a multiple of 32");
        let dequantized = w.dequantize();
        let x = values(m * k, seed + 1);
        // The reference: the dequantized weights times x, in f32.
        let mut reference = vec![0f32; m * n];
        linear_small(Isa::detect(), &x, m, k, &dequantized, n, &mut reference);
        for isa in Isa::supported() {
            let mut out = vec![0f32; m * n];
            q8_linear(isa, &x, m, &w, &mut out);
            for (i, (got, want)) in out.iter().zip(&reference).enumerate() {
                let (row, col) = (i / n, i % n);
                let allowed = allowed_error(&x[row * k..][..k], &dequantized[col * k..][..k]);
                prop_assert!((got - want).abs() <= allowed, "{isa:?} m={m} n={n} k={k}: {got} vs {want} (allowed {allowed})");
            }
        }
    }
}

/// The case that broke the old bound (one output near zero, 4 blocks): within the new one.
#[test]
fn an_output_near_zero_stays_within_its_rounding() {
    let (m, n, k, seed) = (1, 1, 128, 177);
    let w = Q8Matrix::quantize(&values(n * k, seed), n, k).unwrap();
    let dequantized = w.dequantize();
    let x = values(m * k, seed + 1);
    let mut reference = vec![0f32; 1];
    linear_small(Isa::detect(), &x, m, k, &dequantized, n, &mut reference);
    for isa in Isa::supported() {
        let mut out = vec![0f32; 1];
        q8_linear(isa, &x, m, &w, &mut out);
        let allowed = allowed_error(&x, &dequantized);
        assert!(
            (out[0] - reference[0]).abs() <= allowed,
            "{isa:?}: {} vs {} (allowed {allowed})",
            out[0],
            reference[0]
        );
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

/// The blocks are llama.cpp's: the same values back as candle's port of its Q8_0 quantizer
/// gives (an f16 scale per block), so a GGUF file's Q8_0 tensor is kept as it is stored.
#[test]
fn blocks_are_llama_cpp_s() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let (n, k) = (20, 96);
    let values = values(n * k, 3);
    let tensor = Tensor::from_slice(&values, (n, k), &Device::Cpu).unwrap();
    let blocks = QTensor::quantize(&tensor, GgmlDType::Q8_0).unwrap();
    let expected = blocks.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ours = Q8Matrix::quantize(&values, n, k).unwrap();
    assert_eq!(ours.dequantize(), expected);
    // Quantizing the stored values again keeps them, as loading a GGUF file does.
    assert_eq!(Q8Matrix::quantize(&expected, n, k).unwrap().dequantize(), expected);
}

#[test]
fn a_stacked_matrix_gives_its_rows_and_nothing_past_them() {
    let (a, b) = (values(3 * 64, 1), values(5 * 64, 2));
    let parts = vec![
        QuantMatrix::Q8_0(Q8Matrix::quantize(&a, 3, 64).unwrap()),
        QuantMatrix::Q8_0(Q8Matrix::quantize(&b, 5, 64).unwrap()),
    ];
    let stacked = QuantMatrix::stacked(parts).unwrap();
    let whole = stacked.dequantize();
    for row in 0..8 {
        assert_eq!(stacked.dequantize_row(row).as_deref(), Some(&whole[row * 64..(row + 1) * 64]));
    }
    assert_eq!(stacked.dequantize_row(8), None);
    assert_eq!(QuantMatrix::Q8_0(Q8Matrix::quantize(&a, 3, 64).unwrap()).dequantize_row(3), None);
}
