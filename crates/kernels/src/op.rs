//! The kernel as a candle op, so model code keeps working with tensors.
use crate::isa::Isa;
use crate::linear::linear_small;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::OnceLock;

/// Up to this many input rows the kernel beats candle's matmul on these CPUs (see
/// `recyclegpt bench kernels`); above it, prefill chunks go to candle.
pub const SMALL_M_MAX: usize = 128;

/// The fastest path this CPU runs, detected once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

struct SmallLinear;

impl CustomOp2 for SmallLinear {
    fn name(&self) -> &'static str {
        "small-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (xs, ws) else { bail!("small-linear: f32 tensors only") };
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            bail!("small-linear: contiguous tensors only")
        };
        let (&[m, k], &[n, wk]) = (xl.dims(), wl.dims()) else {
            bail!("small-linear: expected x [m, k] and w [n, k], got {:?} and {:?}", xl.dims(), wl.dims())
        };
        if k != wk {
            bail!("small-linear: x has {k} columns but w has {wk}")
        }
        let mut out = vec![0f32; m * n];
        linear_small(isa(), &x[x0..x1], m, k, &w[w0..w1], n, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `x [m, k] · w [n, k]ᵀ` through the kernel (CPU, f32, any m; callers route small m here).
pub fn small_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(w, &SmallLinear)
}

/// The quantized kernels as a candle op over `x` (the weights live in the op).
struct QuantLinear<'a>(&'a crate::quant::QuantMatrix);

impl candle_core::CustomOp1 for QuantLinear<'_> {
    fn name(&self) -> &'static str {
        "quant-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = xs else { bail!("quant-linear: f32 input only") };
        let Some((x0, x1)) = xl.contiguous_offsets() else { bail!("quant-linear: contiguous input only") };
        let &[m, k] = xl.dims() else { bail!("quant-linear: expected x [m, k], got {:?}", xl.dims()) };
        if k != self.0.cols() {
            bail!("quant-linear: x has {k} columns but w has {}", self.0.cols())
        }
        let mut out = vec![0f32; m * self.0.rows()];
        crate::quant::quant_linear(isa(), &x[x0..x1], m, self.0, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((m, self.0.rows()))))
    }
}

/// `x [m, k] · wᵀ` with `w` quantized (CPU, f32 activations, any m).
pub fn quantized_linear(x: &Tensor, w: &crate::quant::QuantMatrix) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&QuantLinear(w))
}

/// The gate's activation times the up projection (the kernel) as a candle op.
struct GateMul(crate::gated::GateActivation);

impl candle_core::CustomOp1 for GateMul {
    fn name(&self) -> &'static str {
        "gate-mul"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = xs else { bail!("gate-mul: f32 input only") };
        let Some((x0, x1)) = xl.contiguous_offsets() else { bail!("gate-mul: contiguous input only") };
        let &[rows, double] = xl.dims() else { bail!("gate-mul: expected [rows, 2 · width], got {:?}", xl.dims()) };
        if double % 2 != 0 {
            bail!("gate-mul: {double} columns do not split into gate and up")
        }
        let mut out = vec![0f32; rows * double / 2];
        crate::gated::gate_mul(isa(), self.0, &x[x0..x1], rows, double / 2, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((rows, double / 2))))
    }
}

/// `act(gate) · up` of `gate_up [rows, 2 · width]` (CPU, f32): the arithmetic of the path that
/// runs layers over plain buffers, so both give the same bits.
pub fn gated(gate_up: &Tensor, act: crate::gated::GateActivation) -> Result<Tensor> {
    gate_up.contiguous()?.apply_op1_no_bwd(&GateMul(act))
}
