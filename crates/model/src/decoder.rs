//! A stack of Llama decoder layers run over a ragged batch: the new tokens of every sequence
//! form one `[T, d]` matrix for the projections; attention runs per sequence on its own cache.
use crate::config::{RopeParams, StackShape};
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::layers::{host_forward, host_path_applies, DecoderLayer, SeqSlot};
use crate::rope::Rope;
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};

pub struct DecoderStack {
    layers: Vec<DecoderLayer>,
    rope: Rope,
    /// The local layers' RoPE (Gemma 3's sliding-window layers have a base of their own).
    local_rope: Option<Rope>,
    shape: StackShape,
    /// Rope position of a sequence's first cache entry (the module's cache starts at position 1).
    first_position: usize,
}

impl DecoderStack {
    pub fn load(
        w: &Weights,
        shape: StackShape,
        max_positions: usize,
        rope: RopeParams,
        first_position: usize,
    ) -> Result<Self> {
        let layers = (0..shape.layers).map(|i| DecoderLayer::load(&w.pp(i), &shape, i)).collect::<Result<Vec<_>>>()?;
        let positions = max_positions + first_position;
        let local_rope = shape
            .window
            .map(|window| {
                let local = RopeParams { theta: window.rope_theta, scaling: None, factors: None };
                Rope::new(shape.head_dim, positions, local, w.dtype(), w.device())
            })
            .transpose()?;
        let rope = Rope::new(shape.head_dim, positions, rope, w.dtype(), w.device())?;
        Ok(Self { layers, rope, local_rope, shape, first_position })
    }

    /// The global and the local RoPE (the same when no layer is local).
    fn ropes(&self) -> [&Rope; 2] {
        [&self.rope, self.local_rope.as_ref().unwrap_or(&self.rope)]
    }

    /// The format the first layer's feed-forward is kept in, if quantized.
    pub fn layer_quantization(&self) -> Option<crate::quantize::Quantization> {
        self.layers.first().and_then(DecoderLayer::quantization)
    }

    /// Bytes of the layers' matrices, read once per forward.
    pub fn matrix_bytes(&self) -> usize {
        self.layers.iter().map(DecoderLayer::matrix_bytes).sum()
    }

    pub fn new_cache(&self, capacity: usize, dtype: DType, device: &Device) -> Result<KvCache> {
        KvCache::new(&self.shape, capacity, dtype, device)
    }

    /// Runs `x` (`[T, d]`, the seqs' new tokens in order) through every layer, appending to each
    /// sequence's cache; returns the last layer's output `[T, d]`.
    pub fn forward(&self, x: Tensor, seqs: &mut [SeqSlot]) -> Result<Tensor> {
        Ok(self.forward_tapped(x, seqs, &[])?.0)
    }

    /// [`Self::forward`], also returning the output of each layer in `taps` (counted from 1,
    /// rising), `[T, d]` each.
    pub fn forward_tapped(&self, x: Tensor, seqs: &mut [SeqSlot], taps: &[usize]) -> Result<(Tensor, Vec<Tensor>)> {
        let total: usize = seqs.iter().map(|s| s.new_tokens).sum();
        if x.dim(0)? != total {
            return Err(ModelError::Input(format!("{} rows for {total} new tokens", x.dim(0)?)));
        }
        let mut positions = Vec::with_capacity(total);
        for seq in seqs.iter() {
            seq.cache.check_room(seq.new_tokens)?;
            let start = self.first_position + seq.cache.position();
            positions.extend((start..start + seq.new_tokens).map(|p| p as u32));
        }
        if let Some(&last) = positions.iter().max() {
            if last as usize >= self.rope.max_positions() {
                return Err(ModelError::Input(format!(
                    "position {last} is past the model's context of {}",
                    self.rope.max_positions() - self.first_position
                )));
            }
        }
        let (x, tapped) = if host_path_applies(&x, total) {
            host_forward(&self.layers, self.ropes(), &x, &positions, seqs, taps)?
        } else {
            self.forward_tensors(x, seqs, positions, taps)?
        };
        if tapped.len() != taps.len() {
            return Err(ModelError::Input(format!("layers {taps:?} asked of a stack of {}", self.layers.len())));
        }
        for seq in seqs.iter_mut() {
            seq.cache.commit(seq.new_tokens);
        }
        Ok((x, tapped))
    }

    /// The layers in candle ops (other devices and dtypes, forwards of many rows).
    fn forward_tensors(
        &self,
        mut x: Tensor,
        seqs: &[SeqSlot],
        positions: Vec<u32>,
        taps: &[usize],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let total = positions.len();
        let positions = Tensor::from_vec(positions, total, x.device())?;
        let (cos, sin) = self.rope.tables(&positions)?;
        let local = self.local_rope.as_ref().map(|rope| rope.tables(&positions)).transpose()?;
        let mut tapped = Vec::with_capacity(taps.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (cos, sin) = match &local {
                Some((cos, sin)) if layer.is_local() => (cos, sin),
                _ => (&cos, &sin),
            };
            x = layer.forward(&x, cos, sin, i, seqs)?;
            if taps.contains(&(i + 1)) {
                tapped.push(x.clone());
            }
        }
        Ok((x, tapped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::Quantization;

    /// Runs two sequences (one with cached entries, one fresh) through `stack` on one path and
    /// returns the output, the tap and every cached key and value.
    fn run(stack: &DecoderStack, host: bool) -> Result<Vec<Vec<f32>>> {
        let (shape, device) = (&stack.shape, &Device::Cpu);
        let mut caches = [stack.new_cache(16, DType::F32, device)?, stack.new_cache(16, DType::F32, device)?];
        let x = |rows: usize, seed: f32| {
            let values = (0..rows * shape.hidden).map(|i| (i as f32 * 0.37 + seed).sin()).collect::<Vec<_>>();
            Tensor::from_vec(values, (rows, shape.hidden), device)
        };
        let mut outputs = Vec::new();
        for (step, new) in [[5, 0], [3, 2]].into_iter().enumerate() {
            let mut slots: Vec<SeqSlot> = caches
                .iter_mut()
                .zip(new)
                .filter(|(_, n)| *n > 0)
                .map(|(cache, new_tokens)| SeqSlot { cache, new_tokens })
                .collect();
            let rows = new.iter().sum();
            let positions: Vec<u32> = slots
                .iter()
                .flat_map(|s| (s.cache.position()..s.cache.position() + s.new_tokens).map(|p| p as u32))
                .collect();
            let x = x(rows, step as f32)?;
            let (out, taps) = if host {
                host_forward(&stack.layers, stack.ropes(), &x, &positions, &slots, &[1])?
            } else {
                stack.forward_tensors(x, &slots, positions, &[1])?
            };
            for slot in slots.iter_mut() {
                slot.cache.commit(slot.new_tokens);
            }
            outputs.push(out.flatten_all()?.to_vec1()?);
            outputs.push(taps[0].flatten_all()?.to_vec1()?);
        }
        for cache in &caches {
            for layer in 0..shape.layers {
                cache.with_host_entries(layer, cache.len(), |k, v| {
                    outputs.extend([k.to_vec(), v.to_vec()]);
                    Ok(())
                })?;
            }
        }
        Ok(outputs)
    }

    #[test]
    fn both_paths_agree_bit_for_bit() -> Result<()> {
        use crate::config::SlidingWindow;
        use recyclegpt_kernels::GateActivation;
        // Llama's layer, Qwen2's (biases on the projections), Qwen3's (norms on the heads) and
        // Gemma 3's (head norms, norms around both halves, a GELU gate, a local layer whose
        // window of 3 the second step's rows pass, with its own RoPE base).
        let gemma3 = Some(SlidingWindow { size: 3, pattern: 2, rope_theta: 1_000.0 });
        let families = [
            (false, false, false, GateActivation::Silu, None),
            (true, false, false, GateActivation::Silu, None),
            (false, true, false, GateActivation::Silu, None),
            (false, true, true, GateActivation::GeluTanh, gemma3),
        ];
        for (qkv_bias, qk_norm, sandwich_norms, activation, window) in families {
            let shape = StackShape {
                hidden: 64,
                intermediate: 96,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                head_dim: 16,
                eps: 1e-5,
                qkv_bias,
                qk_norm,
                sandwich_norms,
                activation,
                window,
            };
            for quantize in [None, Some(Quantization::Q8_0), Some(Quantization::Q4_1)] {
                let weights = Weights::random(7, DType::F32, &Device::Cpu).with_quantization(quantize);
                let rope = RopeParams { theta: 10_000.0, scaling: None, factors: None };
                let stack = DecoderStack::load(&weights, shape, 32, rope, 0)?;
                let (host, tensors) = (run(&stack, true)?, run(&stack, false)?);
                assert_eq!(host.len(), tensors.len());
                for (i, (a, b)) in host.iter().zip(&tensors).enumerate() {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(a), bits(b), "{shape:?} {quantize:?}: output {i} differs");
                }
            }
        }
        Ok(())
    }
}
