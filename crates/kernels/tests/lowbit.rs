//! The low-bit kernels against the product of the dequantized weights on every path this CPU
//! runs, and the blocks against llama.cpp's Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K as
//! candle implements them.
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
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

/// The first output of `product` (`m × n`, run on every path this CPU has, into outputs that
/// start as NaN) farther from the product of `dequantized` (`n × k`) than [`tolerance`] allows,
/// described; `None` if every one is within it.
fn outlier(
    dequantized: &[f32],
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    product: impl Fn(Isa, &mut [f32]),
) -> Option<String> {
    let mut reference = vec![0f32; m * n];
    linear_small(Isa::detect(), x, m, k, dequantized, n, &mut reference);
    let bound = tolerance(x, dequantized, m, n, k);
    Isa::supported().into_iter().find_map(|isa| {
        let mut out = vec![f32::NAN; m * n];
        product(isa, &mut out);
        let far = |(j, ((got, want), bound)): (usize, ((&f32, &f32), &f32))| {
            let within = (got - want).abs() <= *bound;
            (!within).then(|| format!("{isa:?} output {j}: {got} vs {want}"))
        };
        out.iter().zip(&reference).zip(&bound).enumerate().find_map(far)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn low_bit_matches_the_dequantized_product(m in 1usize..=17, n in 1usize..=150, blocks in 1usize..=8, seed in 0u64..1000) {
        let k = blocks * 32;
        for format in FORMATS {
            let w = LowBitMatrix::quantize(&values(n * k, seed), n, k, format).expect("k is a multiple of 32");
            let x = values(m * k, seed + 1);
            let outlier = outlier(&w.dequantize(), &x, m, n, k, |isa, out| low_bit_linear(isa, &x, m, &w, out));
            prop_assert!(outlier.is_none(), "{format:?} m={m} n={n} k={k}: {outlier:?}");
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

const K_FORMATS: [(LowBitFormat, GgmlDType); 3] =
    [(LowBitFormat::Q4K, GgmlDType::Q4K), (LowBitFormat::Q5K, GgmlDType::Q5K), (LowBitFormat::Q6K, GgmlDType::Q6K)];

/// `rows` rows of `cols / 256` random K-quant blocks of `format`: random bytes, with the f16
/// scales (and minimums) set to finite values.
fn k_blocks(format: LowBitFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let size = format.ggml_block_bytes().unwrap();
    let mut bytes: Vec<u8> = (0..rows * cols / 256 * size).map(|_| rng.random()).collect();
    for block in bytes.chunks_mut(size) {
        let mut f16 = |at: usize, rng: &mut rand::rngs::StdRng| {
            let v = half::f16::from_f32(rng.random_range(1e-4f32..2e-2));
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        match format {
            LowBitFormat::Q6K => f16(208, &mut rng),
            _ => {
                f16(0, &mut rng);
                f16(2, &mut rng);
            }
        }
    }
    bytes
}

fn from_ggml(format: LowBitFormat, bytes: &[u8], rows: usize, cols: usize) -> Option<LowBitMatrix> {
    let row_bytes = bytes.len() / rows;
    let rows: Vec<&[u8]> = bytes.chunks(row_bytes).collect();
    LowBitMatrix::from_ggml(format, cols, &rows)
}

/// A K-quant matrix read from llama.cpp's blocks gives back exactly the values candle's
/// dequantization of the same blocks gives.
#[test]
fn k_blocks_decode_as_llama_cpp_decodes_them() {
    let (n, k) = (40, 512);
    for (format, ggml) in K_FORMATS {
        let bytes = k_blocks(format, n, k, 11);
        let ours = from_ggml(format, &bytes, n, k).unwrap().dequantize();
        let theirs = qtensor_from_ggml(ggml, &bytes, vec![n, k], &Device::Cpu).unwrap();
        let theirs = theirs.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{format:?}: {differing} of {} values differ from llama.cpp's", ours.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn k_quants_match_the_dequantized_product(m in 1usize..=17, n in 1usize..=70, supers in 1usize..=3, seed in 0u64..1000) {
        let k = supers * 256;
        for (format, _) in K_FORMATS {
            let w = from_ggml(format, &k_blocks(format, n, k, seed), n, k).unwrap();
            let x = values(m * k, seed + 1);
            let outlier = outlier(&w.dequantize(), &x, m, n, k, |isa, out| low_bit_linear(isa, &x, m, &w, out));
            prop_assert!(outlier.is_none(), "{format:?} m={m} n={n} k={k}: {outlier:?}");
        }
    }
}

/// Rows of the wrong length, columns that are not whole K blocks, and the formats read from
/// values are refused.
#[test]
fn only_whole_k_blocks_are_read() {
    let bytes = k_blocks(LowBitFormat::Q4K, 2, 256, 1);
    assert!(from_ggml(LowBitFormat::Q4K, &bytes, 2, 256).is_some());
    assert!(LowBitMatrix::from_ggml(LowBitFormat::Q4K, 256, &[&bytes[..100]]).is_none());
    assert!(LowBitMatrix::from_ggml(LowBitFormat::Q4K, 128, &[&bytes[..144]]).is_none());
    assert!(LowBitMatrix::from_ggml(LowBitFormat::Q4_1, 256, &[&bytes[..144]]).is_none());
    assert!(LowBitMatrix::quantize(&[0.0; 256], 1, 256, LowBitFormat::Q6K).is_none());
}

/// The largest sums the 5- and 6-bit K-quants form (every value at its top, 31 or 63, every
/// multiplier at its largest, every activation ±127 after quantization) come out exact.
#[test]
fn the_largest_k_block_sums_do_not_overflow() {
    let (m, n, k) = (2, 16, 256);
    for format in [LowBitFormat::Q5K, LowBitFormat::Q6K] {
        let mut block = vec![0xFFu8; format.ggml_block_bytes().unwrap()];
        let set_f16 = |block: &mut [u8], at: usize, v: f32| {
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes())
        };
        if format == LowBitFormat::Q6K {
            block[192..208].fill(127);
            set_f16(&mut block, 208, 1.0 / (127.0 * 31.0));
        } else {
            set_f16(&mut block, 0, 1.0 / (63.0 * 31.0));
            set_f16(&mut block, 2, 0.0);
        }
        let w = from_ggml(format, &block.repeat(n), n, k).unwrap();
        let value = w.dequantize()[0];
        let x: Vec<f32> = (0..m * k).map(|i| if i < k { 1.0 } else { -1.0 }).collect();
        for isa in Isa::supported() {
            let mut out = vec![0f32; m * n];
            low_bit_linear(isa, &x, m, &w, &mut out);
            for (i, got) in out.iter().enumerate() {
                let want = if i < n { k as f32 * value } else { -(k as f32) * value };
                assert!((got - want).abs() <= 1e-3 * want.abs(), "{format:?} {isa:?}: output {i} is {got}, not {want}");
            }
        }
    }
}

/// Matrices of different formats stacked, row counts that leave padding in their last tiles
/// (and a BF16 one, which reads the activations unrounded), give the product of their
/// dequantized rows one after another: each part writes its own columns of the output.
#[test]
fn stacked_parts_write_their_own_columns() {
    use recyclegpt_kernels::{quant_linear, HalfFormat, HalfMatrix, Q8Matrix, QuantMatrix};
    let (m, k) = (3, 256);
    let parts = vec![
        QuantMatrix::Q8_0(Q8Matrix::quantize(&values(20 * k, 1), 20, k).unwrap()),
        QuantMatrix::LowBit(LowBitMatrix::quantize(&values(7 * k, 2), 7, k, LowBitFormat::Q5_0).unwrap()),
        QuantMatrix::LowBit(from_ggml(LowBitFormat::Q6K, &k_blocks(LowBitFormat::Q6K, 33, k, 3), 33, k).unwrap()),
        QuantMatrix::Half(HalfMatrix::quantize(&values(5 * k, 5), 5, k, HalfFormat::BF16).unwrap()),
    ];
    let stacked = QuantMatrix::stacked(parts).unwrap();
    let n = stacked.rows();
    assert_eq!(n, 65);
    let x = values(m * k, 4);
    let outlier = outlier(&stacked.dequantize(), &x, m, n, k, |isa, out| quant_linear(isa, &x, m, &stacked, out));
    assert!(outlier.is_none(), "{outlier:?}");
    assert!(QuantMatrix::stacked(vec![]).is_none());
}
