//! The gated feed-forward's activation, `act(gate) · up`, over rows of `[gate | up]` (the
//! stacked projection's output), for the decode path that runs a layer over plain buffers.
use crate::pool::{self, OutPtr};

/// Columns per work item: a row of SmolLM2's feed-forward (1,536) is six items, so that one
/// row still splits across the threads.
const CHUNK: usize = 256;

/// √(2/π), as candle writes it.
#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI: f32 = 0.79788456080286535587989211986876373;

/// The activation of the gate: SiLU (Llama, Qwen, Phi) or GELU with the tanh approximation
/// (Gemma), each computed in the same steps as candle's, so that the result equals the tensor
/// ops' bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateActivation {
    Silu,
    GeluTanh,
}

impl GateActivation {
    #[inline(always)]
    pub fn apply(self, g: f32) -> f32 {
        match self {
            GateActivation::Silu => g / (1.0 + (-g).exp()),
            GateActivation::GeluTanh => 0.5 * g * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * g * (1.0 + 0.044715 * g * g))),
        }
    }
}

/// `out[i, j] = act(gate_up[i, j]) · gate_up[i, width + j]` for `rows` rows of `gate_up`
/// (`rows × 2·width`, row-major).
pub fn gate_mul(act: GateActivation, gate_up: &[f32], rows: usize, width: usize, out: &mut [f32]) {
    assert!(gate_up.len() >= rows * 2 * width && out.len() >= rows * width, "gate_mul: buffer too small");
    let chunks = width.div_ceil(CHUNK);
    let ptr = OutPtr(out.as_mut_ptr());
    // An exponential (or a tanh) costs about as much as 30 multiply-adds.
    pool::split(rows * chunks, rows * width * 30, |items| {
        for item in items {
            let (i, columns) = (item / chunks, (item % chunks) * CHUNK..((item % chunks + 1) * CHUNK).min(width));
            let row = &gate_up[i * 2 * width..(i + 1) * 2 * width];
            for j in columns {
                let g = row[j];
                // SAFETY: `i < rows` and `j < width`, inside the `rows × width` output (asserted
                // above); the pool hands each item to one thread, so these columns are its own.
                unsafe { store(ptr, i * width + j, act.apply(g) * row[width + j]) };
            }
        }
    });
}

/// Writes `value` at element `at` of `out` (a function, so that the closure above holds the
/// whole `OutPtr`, which is `Sync`, not its raw pointer).
///
/// # Safety
/// Element `at` must be inside the output and written by no other thread.
unsafe fn store(out: OutPtr, at: usize, value: f32) {
    // SAFETY: the caller's contract.
    unsafe { *out.0.add(at) = value };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_activation_then_product_on_every_row_and_chunk() {
        let (rows, width) = (3, 600);
        let gate_up: Vec<f32> = (0..rows * 2 * width).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for act in [GateActivation::Silu, GateActivation::GeluTanh] {
            let mut out = vec![f32::NAN; rows * width];
            gate_mul(act, &gate_up, rows, width, &mut out);
            let gate = candle_core::Tensor::from_slice(&gate_up, (rows, 2 * width), &candle_core::Device::Cpu).unwrap();
            let (g, u) = (gate.narrow(1, 0, width).unwrap(), gate.narrow(1, width, width).unwrap());
            let g = match act {
                GateActivation::Silu => g.silu().unwrap(),
                GateActivation::GeluTanh => g.gelu().unwrap(),
            };
            let expected = (g * u).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                assert_eq!(got.to_bits(), want.to_bits(), "{act:?}: element {i}");
            }
        }
    }
}
