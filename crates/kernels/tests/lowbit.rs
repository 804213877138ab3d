//! The 4- and 5-bit kernels against the product of the dequantized weights on every path this
//! CPU runs, and the blocks against llama.cpp's Q4_0, Q4_1, Q5_0 and Q5_1 as candle implements
//! them.
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use proptest::prelude::*;
use recyclegpt_kernels::{linear_small, low_bit_linear, Isa, LowBitFormat, LowBitMatrix};

fn values(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

const FORMATS: [LowBitFormat; 4] = [LowBitFormat::Q4_0, LowBitFormat::Q4_1, LowBitFormat::Q5_0, LowBitFormat::Q5_1];

/// How far a product may be from the dequantized weights' `reference` (`m × n`): the kernels
/// round each block of 32 activations to int8 (an error of at most max|x| / 254 per value), so
/// output (i, j) may move by Σ over blocks of max|x_block| / 254 · Σ|w_block|, plus f32 rounding.
fn tolerance(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut bound = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            bound[i * n + j] = (0..k / 32)
                .map(|b| {
                    let xb = &x[i * k + b * 32..][..32];
                    let wb = &w[j * k + b * 32..][..32];
                    xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 254.0 * wb.iter().map(|v| v.abs()).sum::<f32>()
                })
                .sum::<f32>()
                * 1.01
                + 1e-4;
        }
    }
    bound
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn low_bit_matches_the_dequantized_product(m in 1usize..=17, n in 1usize..=150, blocks in 1usize..=8, seed in 0u64..1000) {
        let k = blocks * 32;
        for format in FORMATS {
            let w = LowBitMatrix::quantize(&values(n * k, seed), n, k, format).expect("k is a multiple of 32");
            let x = values(m * k, seed + 1);
            let dequantized = w.dequantize();
            let mut reference = vec![0f32; m * n];
            linear_small(Isa::detect(), &x, m, k, &dequantized, n, &mut reference);
            let bound = tolerance(&x, &dequantized, m, n, k);
            for isa in Isa::supported() {
                let mut out = vec![0f32; m * n];
                low_bit_linear(isa, &x, m, &w, &mut out);
                for ((got, want), bound) in out.iter().zip(&reference).zip(&bound) {
                    prop_assert!((got - want).abs() <= *bound, "{format:?} {isa:?} m={m} n={n} k={k}: {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn every_path_gives_the_same_integers() {
    let (m, n, k) = (5, 70, 96);
    for format in FORMATS {
        let w = LowBitMatrix::quantize(&values(n * k, 7), n, k, format).unwrap();
        let x = values(m * k, 8);
        let outputs: Vec<Vec<f32>> = Isa::supported()
            .into_iter()
            .map(|isa| {
                let mut out = vec![0f32; m * n];
                low_bit_linear(isa, &x, m, &w, &mut out);
                out
            })
            .collect();
        for other in &outputs[1..] {
            for (a, b) in outputs[0].iter().zip(other) {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{format:?}: {a} vs {b}");
            }
        }
    }
}

/// The largest block sums any path forms (every value at its top, 15 or 31, every activation
/// ±127 after quantization) come out exact: the AVX2 path sums products in 16 bits.
#[test]
fn the_largest_block_sums_do_not_overflow() {
    let (m, n, k) = (2, 16, 64);
    // Blocks of 0 then 31 ones: values 0 and the top, scale 1/top, minimum 0.
    let row: Vec<f32> = (0..k).map(|c| if c % 32 == 0 { 0.0 } else { 1.0 }).collect();
    for format in [LowBitFormat::Q4_1, LowBitFormat::Q5_1] {
        let w = LowBitMatrix::quantize(&row.repeat(n), n, k, format).unwrap();
        let x: Vec<f32> = (0..m * k).map(|i| if i < k { 1.0 } else { -1.0 }).collect();
        for isa in Isa::supported() {
            let mut out = vec![0f32; m * n];
            low_bit_linear(isa, &x, m, &w, &mut out);
            for (i, got) in out.iter().enumerate() {
                let want = if i < n { (k - 2) as f32 } else { -((k - 2) as f32) };
                assert!((got - want).abs() <= 1e-3 * want.abs(), "{format:?} {isa:?}: output {i} is {got}, not {want}");
            }
        }
    }
}

/// The blocks equal llama.cpp's (candle's `QTensor::quantize` implements its reference
/// quantizers), and quantizing their dequantized values again gives them back exactly: a GGUF
/// file's Q4_0, Q4_1, Q5_0 and Q5_1 weights survive the load unchanged.
#[test]
fn blocks_equal_llama_cpp_and_survive_a_round_trip() {
    let (n, k) = (48, 256);
    let original = values(n * k, 3);
    let formats = [
        (LowBitFormat::Q4_0, GgmlDType::Q4_0),
        (LowBitFormat::Q4_1, GgmlDType::Q4_1),
        (LowBitFormat::Q5_0, GgmlDType::Q5_0),
        (LowBitFormat::Q5_1, GgmlDType::Q5_1),
    ];
    for (format, ggml) in formats {
        let ours = LowBitMatrix::quantize(&original, n, k, format).unwrap().dequantize();
        let tensor = Tensor::from_vec(original.clone(), (n, k), &Device::Cpu).unwrap();
        let theirs = QTensor::quantize(&tensor, ggml).unwrap().dequantize(&Device::Cpu).unwrap();
        let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{format:?}: {differing} of {} values differ from llama.cpp's", ours.len());
        let again = LowBitMatrix::quantize(&theirs, n, k, format).unwrap().dequantize();
        assert_eq!(again, theirs, "{format:?}: requantizing the dequantized file values changed them");
    }
}

#[test]
fn only_whole_blocks_quantize() {
    assert!(LowBitMatrix::quantize(&[0.0; 30], 1, 30, LowBitFormat::Q4_0).is_none());
    assert!(LowBitMatrix::quantize(&[0.0; 64], 2, 32, LowBitFormat::Q4_1).is_some());
}
