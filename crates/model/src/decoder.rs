//! A stack of Llama decoder layers run over a ragged batch: the new tokens of every sequence
//! form one `[T, d]` matrix for the projections; attention runs per sequence on its own cache.
use crate::config::{RopeParams, StackShape};
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::layers::{DecoderLayer, SeqSlot};
use crate::rope::Rope;
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};

pub struct DecoderStack {
    layers: Vec<DecoderLayer>,
    rope: Rope,
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
        let layers = (0..shape.layers).map(|i| DecoderLayer::load(&w.pp(i), &shape)).collect::<Result<Vec<_>>>()?;
        let rope = Rope::new(shape.head_dim, max_positions + first_position, rope, w.dtype(), w.device())?;
        Ok(Self { layers, rope, shape, first_position })
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
    pub fn forward_tapped(&self, mut x: Tensor, seqs: &mut [SeqSlot], taps: &[usize]) -> Result<(Tensor, Vec<Tensor>)> {
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
        let positions = Tensor::from_vec(positions, total, x.device())?;
        let (cos, sin) = self.rope.tables(&positions)?;
        let mut tapped = Vec::with_capacity(taps.len());
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &cos, &sin, i, seqs)?;
            if taps.contains(&(i + 1)) {
                tapped.push(x.clone());
            }
        }
        if tapped.len() != taps.len() {
            return Err(ModelError::Input(format!("layers {taps:?} asked of a stack of {}", self.layers.len())));
        }
        for seq in seqs.iter_mut() {
            seq.cache.commit(seq.new_tokens);
        }
        Ok((x, tapped))
    }
}
