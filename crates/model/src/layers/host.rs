//! The decoder layer on the CPU in f32 over plain buffers: the path of every forward of up to
//! `SMALL_M_MAX` rows (decode, verify and module steps, prefill chunks).
//!
//! By hand, beside the tensor path that other devices and larger forwards take, because that
//! path's overhead was most of a decode step: a layer is about twenty candle ops, each
//! allocating (and zeroing) its output and some waking rayon's threads, and a 1-token SmolLM2
//! forward took 4.3 ms of which the matrix kernels were about 2. Here a layer runs the same
//! kernels over buffers that the forward allocates once, and the small elementwise steps
//! inline, in the same arithmetic as candle's ops, so both paths give equal outputs bit for bit
//! (`tests::both_paths_agree_bit_for_bit`).
use super::{Attention, DecoderLayer, Linear, RmsNorm, SeqSlot};
use crate::error::{ModelError, Result};
use crate::rope::Rope;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use recyclegpt_kernels::{attention, gate_mul, isa, linear_small, quant_linear, SMALL_M_MAX};

/// Whether a forward of `rows` rows of `x` takes this path.
pub(crate) fn applies(x: &Tensor, rows: usize) -> bool {
    is_host_f32(x) && rows <= SMALL_M_MAX
}

/// Whether `t` is f32 on the CPU, whose values this path reads in place.
pub(crate) fn is_host_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Calls `f` with the values of `t`, which must be a contiguous f32 tensor on the CPU.
pub(crate) fn with_host_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) => f(&values[start..end]),
        _ => Err(ModelError::Config("the CPU path needs contiguous f32 tensors on the CPU".into())),
    }
}

/// The forward's working rows, reused by every layer (each holds `rows × width` values).
#[derive(Default)]
struct Buffers {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attended: Vec<f32>,
    projected: Vec<f32>,
    gate_up: Vec<f32>,
    activated: Vec<f32>,
}

/// Sizes `buffer` to `len` values; the kernels overwrite them all, so a buffer that already has
/// that size (every layer after the first) is left as it is.
fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.resize(len, 0.0);
    buffer
}

/// Runs `x` (`[T, d]`, at `positions`) through `layers`, writing each sequence's keys and
/// values after its cached ones (the caller commits them); returns the output and the outputs
/// of the layers in `taps` (counted from 1). `ropes`: the global layers' and the local ones'.
pub(crate) fn forward(
    layers: &[DecoderLayer],
    ropes: [&Rope; 2],
    x: &Tensor,
    positions: &[u32],
    seqs: &[SeqSlot],
    taps: &[usize],
) -> Result<(Tensor, Vec<Tensor>)> {
    let (rows, width) = x.dims2()?;
    let mut x = with_host_values(&x.contiguous()?, |values| Ok(values.to_vec()))?;
    let mut buffers = Buffers::default();
    let mut tapped = Vec::with_capacity(taps.len());
    let ([cos, local_cos], [sin, local_sin]) = (ropes.map(|r| r.full_tables().0), ropes.map(|r| r.full_tables().1));
    with_host_values(cos, |cos| {
        with_host_values(sin, |sin| {
            with_host_values(local_cos, |local_cos| {
                with_host_values(local_sin, |local_sin| {
                    let global = HostRope { cos, sin, positions };
                    let local = HostRope { cos: local_cos, sin: local_sin, positions };
                    for (i, layer) in layers.iter().enumerate() {
                        let rope = if layer.is_local() { &local } else { &global };
                        let at = LayerRows { count: rows, layer: i, rope, seqs };
                        layer.forward_host(&mut x, &at, &mut buffers)?;
                        if taps.contains(&(i + 1)) {
                            tapped.push(Tensor::from_slice(&x, (rows, width), &Device::Cpu)?);
                        }
                    }
                    Ok(())
                })
            })
        })
    })?;
    Ok((Tensor::from_vec(x, (rows, width), &Device::Cpu)?, tapped))
}

/// The rotary tables (`[positions, head_dim / 2]` each) and the rows' positions.
struct HostRope<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    positions: &'a [u32],
}

impl HostRope<'_> {
    /// Rotates each head of `src` (row `row`, `heads × head_dim`) into `dst` as candle's
    /// `rope_thd` does: the first half of a head against the second.
    fn rotate(&self, row: usize, head_dim: usize, src: &[f32], dst: &mut [f32]) -> Result<()> {
        let half = head_dim / 2;
        let at = self.positions[row] as usize * half;
        let (Some(cos), Some(sin)) = (self.cos.get(at..at + half), self.sin.get(at..at + half)) else {
            return Err(ModelError::Input(format!("position {} is past the rotary tables", self.positions[row])));
        };
        for (src, dst) in src.chunks_exact(head_dim).zip(dst.chunks_exact_mut(head_dim)) {
            let (x1, x2) = src.split_at(half);
            let (d1, d2) = dst.split_at_mut(half);
            for i in 0..half {
                d1[i] = x1[i] * cos[i] - x2[i] * sin[i];
                d2[i] = x1[i] * sin[i] + x2[i] * cos[i];
            }
        }
        Ok(())
    }
}

/// The rows a layer runs: how many, the layer's index (in each sequence's cache), their
/// positions, and the sequences they belong to.
struct LayerRows<'a, 'b> {
    count: usize,
    layer: usize,
    rope: &'a HostRope<'a>,
    seqs: &'a [SeqSlot<'b>],
}

impl DecoderLayer {
    fn forward_host(&self, x: &mut [f32], at: &LayerRows, b: &mut Buffers) -> Result<()> {
        let rows = at.count;
        self.input_norm.forward_host(x, &mut b.normed)?;
        self.attention.forward_host(at, b)?;
        if let Some(norm) = &self.attention_output_norm {
            norm.normalize_in_place(&mut b.projected)?;
        }
        add_in_place(x, &b.projected);
        self.post_norm.forward_host(x, &mut b.normed)?;
        self.mlp.gate_up.forward_host(&b.normed, rows, &mut b.gate_up)?;
        let width = self.mlp.intermediate;
        gate_mul(isa(), self.mlp.activation, &b.gate_up, rows, width, sized(&mut b.activated, rows * width));
        self.mlp.down.forward_host(&b.activated, rows, &mut b.projected)?;
        if let Some(norm) = &self.feedforward_output_norm {
            norm.normalize_in_place(&mut b.projected)?;
        }
        add_in_place(x, &b.projected);
        Ok(())
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

impl Attention {
    /// Attention over `b.normed`, leaving the output projection in `b.projected`.
    fn forward_host(&self, at: &LayerRows, b: &mut Buffers) -> Result<()> {
        let (rows, layer, rope) = (at.count, at.layer, at.rope);
        let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let row_width = q_width + 2 * kv_width;
        self.qkv.forward_host(&b.normed, rows, &mut b.qkv)?;
        if let Some((q_norm, k_norm)) = &self.qk_norms {
            // Each head normalised in place, before RoPE reads it.
            for qkv in b.qkv.chunks_exact_mut(row_width) {
                let (q, k) = qkv[..q_width + kv_width].split_at_mut(q_width);
                q_norm.normalize_in_place(q)?;
                k_norm.normalize_in_place(k)?;
            }
        }
        let (q, k, v) =
            (sized(&mut b.q, rows * q_width), sized(&mut b.k, rows * kv_width), sized(&mut b.v, rows * kv_width));
        for (i, qkv) in b.qkv.chunks_exact(row_width).enumerate() {
            rope.rotate(i, self.head_dim, &qkv[..q_width], &mut q[i * q_width..(i + 1) * q_width])?;
            rope.rotate(i, self.head_dim, &qkv[q_width..q_width + kv_width], &mut k[i * kv_width..(i + 1) * kv_width])?;
            v[i * kv_width..(i + 1) * kv_width].copy_from_slice(&qkv[q_width + kv_width..]);
        }
        let attended = sized(&mut b.attended, rows * q_width);
        let mut first = 0;
        for seq in at.seqs {
            let new = first..first + seq.new_tokens;
            seq.cache.write_host(
                layer,
                &k[new.start * kv_width..new.end * kv_width],
                &v[new.start * kv_width..new.end * kv_width],
            )?;
            let total = seq.cache.len() + seq.new_tokens;
            seq.cache.with_host_entries(layer, total, |keys, values| {
                let (q, out) =
                    (&q[new.start * q_width..new.end * q_width], &mut attended[new.start * q_width..new.end * q_width]);
                attention(isa(), self.shape, q, keys, values, total, out);
                Ok(())
            })?;
            first = new.end;
        }
        self.o.forward_host(&b.attended, rows, &mut b.projected)
    }
}

impl RmsNorm {
    /// Normalizes each row of `x` into `out` as candle's `rms_norm` does.
    fn forward_host(&self, x: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let out = sized(out, x.len());
        out.copy_from_slice(x);
        self.normalize_in_place(out)
    }

    /// Normalizes each run of the weight's length in `x` (rows, or heads) in place, as candle's
    /// `rms_norm` does.
    fn normalize_in_place(&self, x: &mut [f32]) -> Result<()> {
        with_host_values(&self.weight, |weight| {
            for row in x.chunks_exact_mut(weight.len()) {
                let sum2 = row.iter().map(|v| v * v).sum::<f32>();
                let m = (sum2 / weight.len() as f32 + self.eps).sqrt();
                for (v, a) in row.iter_mut().zip(weight) {
                    *v = *v / m * *a;
                }
            }
            Ok(())
        })
    }
}

impl Linear {
    /// `out = x · Wᵀ` for `rows` rows of `x`, with the kernels the tensor path uses for them.
    fn forward_host(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<()> {
        match (&self.quant, &self.weight) {
            (Some(quant), _) => quant_linear(isa(), x, rows, quant, sized(out, rows * quant.rows())),
            (None, Some(weight)) => {
                let (n, k) = weight.dims2()?;
                with_host_values(weight, |w| {
                    linear_small(isa(), x, rows, k, w, n, sized(out, rows * n));
                    Ok(())
                })?
            }
            (None, None) => return Err(ModelError::Config("a linear layer has no weights".into())),
        }
        if let Some(bias) = &self.bias {
            with_host_values(bias, |bias| {
                for row in out.chunks_exact_mut(bias.len()) {
                    row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
