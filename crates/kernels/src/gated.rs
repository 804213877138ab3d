//! The gated feed-forward's activation, `silu(gate) · up`, over rows of `[gate | up]` (the
//! stacked projection's output), for the decode path that runs a layer over plain buffers.
use crate::pool::{self, OutPtr};

/// Columns per work item: a row of SmolLM2's feed-forward (1,536) is six items, so that one
/// row still splits across the threads.
const CHUNK: usize = 256;

/// `out[i, j] = silu(gate_up[i, j]) · gate_up[i, width + j]` for `rows` rows of `gate_up`
/// (`rows × 2·width`, row-major), with `silu(g) = g / (1 + e^-g)` computed in the same steps
/// as candle's, so the result equals the tensor ops' bit for bit.
pub fn silu_mul(gate_up: &[f32], rows: usize, width: usize, out: &mut [f32]) {
    assert!(gate_up.len() >= rows * 2 * width && out.len() >= rows * width, "silu_mul: buffer too small");
    let chunks = width.div_ceil(CHUNK);
    let ptr = OutPtr(out.as_mut_ptr());
    // An exponential costs about as much as 30 multiply-adds.
    pool::split(rows * chunks, rows * width * 30, |items| {
        for item in items {
            let (i, columns) = (item / chunks, (item % chunks) * CHUNK..((item % chunks + 1) * CHUNK).min(width));
            let row = &gate_up[i * 2 * width..(i + 1) * 2 * width];
            for j in columns {
                let g = row[j];
                // SAFETY: `i < rows` and `j < width`, inside the `rows × width` output (asserted
                // above); the pool hands each item to one thread, so these columns are its own.
                unsafe { store(ptr, i * width + j, g / (1.0 + (-g).exp()) * row[width + j]) };
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
    fn equals_silu_then_product_on_every_row_and_chunk() {
        let (rows, width) = (3, 600);
        let gate_up: Vec<f32> = (0..rows * 2 * width).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let mut out = vec![f32::NAN; rows * width];
        silu_mul(&gate_up, rows, width, &mut out);
        for i in 0..rows {
            for j in 0..width {
                let (g, u) = (gate_up[i * 2 * width + j], gate_up[i * 2 * width + width + j]);
                assert_eq!(out[i * width + j].to_bits(), (g / (1.0 + (-g).exp()) * u).to_bits(), "row {i} column {j}");
            }
        }
    }
}
