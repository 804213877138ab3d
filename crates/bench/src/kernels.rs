//! `recyclegpt bench kernels`: the small-m kernel against candle's matmul, m = 1..64, on one
//! weight matrix, to find where candle's matmul takes over (the model's `SMALL_M_MAX`); and
//! candle's quantized matmul (`QMatMul`, Q8_0 and Q4_1 weights, activations quantized to 8 bits)
//! on the same matrix, the baseline for quantized kernels of our own.
use crate::{median_ms, time};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use recyclegpt_kernels::{low_bit_linear, q8_linear, small_linear, Isa, LowBitFormat, LowBitMatrix, Q8Matrix};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub m: usize,
    pub kernel_ms: f64,
    pub candle_ms: f64,
    /// Weight bytes read per second by the kernel.
    pub kernel_gb_per_s: f64,
    /// Our Q8_0 and Q4_1 kernels (each weight block read once for all rows).
    pub q8_kernel_ms: f64,
    pub q4_kernel_ms: f64,
    /// candle's `QMatMul` with the weights in Q8_0 and in Q4_1.
    pub candle_q8_0_ms: f64,
    pub candle_q4_1_ms: f64,
}

pub fn run(n: usize, k: usize, ms: &[usize], rounds: usize) -> candle_core::Result<Vec<KernelRow>> {
    let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
    let wt = w.t()?;
    let q8 = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0)?)?;
    let q4 = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q4_1)?)?;
    let ours = Q8Matrix::quantize(&w.flatten_all()?.to_vec1::<f32>()?, n, k)
        .ok_or_else(|| candle_core::Error::Msg(format!("k = {k} is not a multiple of 32")))?;
    let ours_q4 = LowBitMatrix::quantize(&w.flatten_all()?.to_vec1::<f32>()?, n, k, LowBitFormat::Q4_1)
        .ok_or_else(|| candle_core::Error::Msg(format!("k = {k} is not a multiple of 32")))?;
    let isa = Isa::detect();
    let mut rows = Vec::new();
    for &m in ms {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        // One untimed call each: the first use starts rayon's threads.
        small_linear(&x, &w)?;
        x.matmul(&wt)?;
        q8.forward(&x)?;
        let (mut kernel, mut candle, mut q8_ms, mut q4_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut ours_ms, mut ours_q4_ms) = (Vec::new(), Vec::new());
        let x_values = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; m * n];
        for _ in 0..rounds {
            let ((), t) = time(|| q8_linear(isa, &x_values, m, &ours, &mut out));
            ours_ms.push(t);
            let ((), t) = time(|| low_bit_linear(isa, &x_values, m, &ours_q4, &mut out));
            ours_q4_ms.push(t);
            for (matmul, times) in [(&q8, &mut q8_ms), (&q4, &mut q4_ms)] {
                let (out, t) = time(|| matmul.forward(&x));
                out?;
                times.push(t);
            }
            let (out, t) = time(|| small_linear(&x, &w));
            out?;
            kernel.push(t);
            let (out, t) = time(|| x.matmul(&wt));
            out?;
            candle.push(t);
        }
        let kernel_ms = median_ms(&mut kernel);
        rows.push(KernelRow {
            m,
            kernel_ms,
            candle_ms: median_ms(&mut candle),
            kernel_gb_per_s: (n * k * 4) as f64 / (kernel_ms / 1e3) / 1e9,
            q8_kernel_ms: median_ms(&mut ours_ms),
            q4_kernel_ms: median_ms(&mut ours_q4_ms),
            candle_q8_0_ms: median_ms(&mut q8_ms),
            candle_q4_1_ms: median_ms(&mut q4_ms),
        });
    }
    Ok(rows)
}
