//! CPU kernels for decoding. A decode or recycle step multiplies a handful of rows (1-2 tokens
//! per sequence, a few sequences) by every weight matrix; that is bound by reading the weights,
//! so the kernel reads each weight row once for all input rows.
//!
//! The vector code is `unsafe` twice over: raw pointers, and `#[target_feature]` functions that
//! are undefined behaviour on a CPU without those features. The second rests on [`Isa`], which
//! only CPU detection can make. Every unsafe operation sits in an explicit `unsafe {}` block
//! with a `SAFETY:` comment, even inside an `unsafe fn`.
#![deny(unsafe_op_in_unsafe_fn)]

mod attention;
mod gated;
mod isa;
mod linear;
mod op;
mod pool;
mod quant;
mod vector;

pub use attention::{attention, cached_attention, AttentionShape};
pub use gated::{gate_mul, GateActivation};
pub use isa::Isa;
pub use linear::linear_small;
pub use op::{gated, isa, quantized_linear, small_linear, SMALL_M_MAX};
pub use quant::{
    low_bit_linear, q8_linear, quant_linear, HalfFormat, HalfMatrix, LowBitFormat, LowBitMatrix, Q8Matrix, QuantMatrix,
};
