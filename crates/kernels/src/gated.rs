//! The gated feed-forward's activation, `act(gate) · up`, over rows of `[gate | up]` (the
//! stacked projection's output), vectorised: one `f32::exp` per value cost 8% of an 8-token
//! SmolLM2 forward.
use crate::isa::{Isa, Kind};
use crate::pool::{self, OutPtr};
#[cfg(target_arch = "x86_64")]
use crate::vector::{Avx2, Avx512};
use crate::vector::{Scalar, Vector};

/// Columns per work item: a row of SmolLM2's feed-forward (1,536) is six items, so that one
/// row still splits across the threads.
const CHUNK: usize = 256;

/// √(2/π), as candle writes it.
#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI: f32 = 0.79788456080286535587989211986876373;

/// The activation of the gate: SiLU (Llama, Qwen, Phi) or GELU with the tanh approximation
/// (Gemma).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateActivation {
    Silu,
    GeluTanh,
}

/// `out[i, j] = act(gate_up[i, j]) · gate_up[i, width + j]` for `rows` rows of `gate_up`
/// (`rows × 2·width`, row-major). Each column takes the same path whatever the number of rows,
/// so a row's result does not depend on the rows beside it.
pub fn gate_mul(isa: Isa, act: GateActivation, gate_up: &[f32], rows: usize, width: usize, out: &mut [f32]) {
    assert!(gate_up.len() >= rows * 2 * width && out.len() >= rows * width, "gate_mul: buffer too small");
    let chunks = width.div_ceil(CHUNK);
    let ptr = OutPtr(out.as_mut_ptr());
    let kind = isa.kind();
    // An exponential costs about as much as 30 multiply-adds.
    pool::split(rows * chunks, rows * width * 30, |items| {
        for item in items {
            let (i, first) = (item / chunks, (item % chunks) * CHUNK);
            let len = CHUNK.min(width - first);
            let row = &gate_up[i * 2 * width..(i + 1) * 2 * width];
            let (gate, up) = (&row[first..first + len], &row[width + first..width + first + len]);
            // SAFETY: `i < rows` and the columns lie within `width`, inside the `rows × width`
            // output (asserted above); the pool hands each item to one thread, so they are its
            // own. The vector paths run only where the `Isa` detected their features.
            unsafe {
                let at = ptr.add(i * width + first);
                match kind {
                    #[cfg(target_arch = "x86_64")]
                    Kind::Avx512 => chunk_avx512(act, gate, up, at),
                    #[cfg(target_arch = "x86_64")]
                    Kind::Avx2 => chunk_avx2(act, gate, up, at),
                    _ => chunk::<Scalar>(act, gate, up, at),
                }
            }
        }
    });
}

/// [`chunk`] compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F; otherwise as [`chunk`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chunk_avx512(act: GateActivation, gate: &[f32], up: &[f32], out: *mut f32) {
    // SAFETY: forwarded from this function's contract.
    unsafe { chunk::<Avx512>(act, gate, up, out) }
}

/// [`chunk`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA; otherwise as [`chunk`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_avx2(act: GateActivation, gate: &[f32], up: &[f32], out: *mut f32) {
    // SAFETY: forwarded from this function's contract.
    unsafe { chunk::<Avx2>(act, gate, up, out) }
}

/// Whole vectors of `gate` and `up`, then the rest one value at a time.
///
/// # Safety
/// The CPU must have `S`'s features; `up` must be as long as `gate`, and `out` valid for as
/// many writes, which no one else makes.
#[inline(always)]
unsafe fn chunk<S: Vector>(act: GateActivation, gate: &[f32], up: &[f32], out: *mut f32) {
    let whole = gate.len() / S::LANES * S::LANES;
    // SAFETY: every access lies within `gate.len()` values (the contract).
    unsafe {
        for j in (0..whole).step_by(S::LANES) {
            let value = activate::<S>(act, S::load(gate.as_ptr().add(j)));
            S::store(out.add(j), S::mul(value, S::load(up.as_ptr().add(j))));
        }
        for j in whole..gate.len() {
            *out.add(j) = activate::<Scalar>(act, gate[j]) * up[j];
        }
    }
}

/// The activation of `g`, from e^x of x ≤ 0 only (what [`Vector::exp`] computes): SiLU as
/// `g · σ(g)` with σ from `t = e^-|g|` (`1/(1+t)` for g ≥ 0, `t/(1+t)` below), GELU's tanh of
/// `y` as `±(1-t)/(1+t)` with `t = e^-2|y|`. Neither overflows for any g.
///
/// # Safety
/// The CPU must have `S`'s features.
#[inline(always)]
unsafe fn activate<S: Vector>(act: GateActivation, g: S::V) -> S::V {
    // SAFETY: the contract.
    unsafe {
        let one = S::splat(1.0);
        match act {
            GateActivation::Silu => {
                let t = S::exp(S::neg_abs(g));
                S::mul(g, S::div(S::select_nonneg(g, one, t), S::add(one, t)))
            }
            GateActivation::GeluTanh => {
                let inner = S::fmadd(S::splat(0.044715), S::mul(g, g), one);
                let y = S::mul(S::mul(S::splat(SQRT_TWO_OVER_PI), g), inner);
                let t = S::exp(S::mul(S::splat(2.0), S::neg_abs(y)));
                let tanh = S::div(S::fmadd(S::splat(-1.0), t, one), S::add(one, t));
                let tanh = S::select_nonneg(y, tanh, S::mul(S::splat(-1.0), tanh));
                S::mul(S::mul(S::splat(0.5), g), S::add(one, tanh))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path, on every row and chunk, within a few f32 roundings of the activation in f64,
    /// over values from -60 to 60 (past where e^x of either sign would overflow f32).
    #[test]
    fn every_path_computes_the_activation_then_the_product() {
        let (rows, width) = (3, 600);
        let gate_up: Vec<f32> =
            (0..rows * 2 * width).map(|i| ((i * 37 % 1201) as f32 - 600.0) / 10.0 * (i % 3) as f32).collect();
        for act in [GateActivation::Silu, GateActivation::GeluTanh] {
            let exact = |g: f64| match act {
                GateActivation::Silu => g / (1.0 + (-g).exp()),
                GateActivation::GeluTanh => {
                    0.5 * g * (1.0 + (f64::from(SQRT_TWO_OVER_PI) * g * (1.0 + 0.044715 * g * g)).tanh())
                }
            };
            for isa in Isa::supported() {
                let mut out = vec![f32::NAN; rows * width];
                gate_mul(isa, act, &gate_up, rows, width, &mut out);
                for i in 0..rows {
                    for j in 0..width {
                        let (g, u) = (gate_up[i * 2 * width + j], gate_up[i * 2 * width + width + j]);
                        let want = exact(f64::from(g)) * f64::from(u);
                        let got = f64::from(out[i * width + j]);
                        let slack = 1e-5 * want.abs() + 1e-6 * f64::from(u).abs() + 1e-30;
                        assert!((got - want).abs() <= slack, "{act:?} {isa:?} ({i}, {j}): g {g}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
