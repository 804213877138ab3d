//! Per-sequence key/value cache: preallocated, token-major, rollback is a length reset.
use crate::config::StackShape;
use crate::error::{ModelError, Result};
use crate::layers::with_host_values;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};

pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    /// Positions passed over without being stored (see `skip`).
    skipped: usize,
    /// Entries stored before the first skip: the ones whose positions are their indices.
    stored_before_skip: Option<usize>,
    capacity: usize,
}

impl KvCache {
    pub fn new(shape: &StackShape, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        let block = (capacity, shape.kv_heads, shape.head_dim);
        let mut keys = Vec::with_capacity(shape.layers);
        let mut values = Vec::with_capacity(shape.layers);
        for _ in 0..shape.layers {
            keys.push(Tensor::zeros(block, dtype, device)?);
            values.push(Tensor::zeros(block, dtype, device)?);
        }
        Ok(Self { keys, values, len: 0, skipped: 0, stored_before_skip: None, capacity })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// An independent copy (the tensors are copied, not shared).
    pub fn duplicate(&self) -> Result<Self> {
        Ok(Self {
            keys: self.keys.iter().map(Tensor::copy).collect::<candle_core::Result<_>>()?,
            values: self.values.iter().map(Tensor::copy).collect::<candle_core::Result<_>>()?,
            len: self.len,
            skipped: self.skipped,
            stored_before_skip: self.stored_before_skip,
            capacity: self.capacity,
        })
    }

    /// The position the next token takes: the stored ones plus those skipped.
    pub fn position(&self) -> usize {
        self.len + self.skipped
    }

    /// Passes over `n` positions without storing them: later tokens keep their true positions
    /// (so rotary offsets to the stored ones stay right) and attend to what is stored. The
    /// recyclable module's cache does this while `auto` decoding does not draft, so that a
    /// sequence that stops drafting stops paying for the module; drafts after such a gap see a
    /// shorter history, which costs acceptance, never correctness (every draft is verified).
    pub fn skip(&mut self, n: usize) {
        self.stored_before_skip.get_or_insert(self.len);
        self.skipped += n;
    }

    /// The first entries, stored before any position was skipped: entry `i` is position `i`.
    pub fn contiguous_len(&self) -> usize {
        self.stored_before_skip.unwrap_or(self.len).min(self.len)
    }

    /// Fills this empty cache with the first `n` entries of `other` (a cache of the same
    /// stack): prefix caching reuses another sequence's keys and values for a shared prefix.
    pub fn copy_prefix(&mut self, other: &KvCache, n: usize) -> Result<()> {
        if self.len + self.skipped > 0 || n > other.len || n > self.capacity || other.keys.len() != self.keys.len() {
            return Err(ModelError::Input(format!(
                "cannot copy {n} cached entries of {} into a cache holding {} of {}",
                other.len, self.len, self.capacity
            )));
        }
        if n > 0 {
            for (mine, theirs) in self.keys.iter().zip(&other.keys).chain(self.values.iter().zip(&other.values)) {
                mine.slice_set(&theirs.narrow(0, 0, n)?, 0, 0)?;
            }
        }
        self.len = n;
        Ok(())
    }

    /// Forgets every stored entry from `len` on (a count of stored entries, not a position:
    /// skipped positions stay skipped).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        if let Some(before) = &mut self.stored_before_skip {
            *before = (*before).min(self.len);
        }
    }

    pub(crate) fn check_room(&self, new_tokens: usize) -> Result<()> {
        if self.len + new_tokens > self.capacity {
            return Err(ModelError::Input(format!(
                "{} cached + {new_tokens} new tokens exceed the cache capacity of {}",
                self.len, self.capacity
            )));
        }
        Ok(())
    }

    /// Writes `k`, `v` (`[t, kv_heads, head_dim]`) after the cached positions of `layer` and
    /// returns the keys and values of all positions up to them; `commit` advances the length.
    pub(crate) fn write(&self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(0)?;
        self.keys[layer].slice_set(&k.contiguous()?, 0, self.len)?;
        self.values[layer].slice_set(&v.contiguous()?, 0, self.len)?;
        let total = self.len + t;
        Ok((self.keys[layer].narrow(0, 0, total)?, self.values[layer].narrow(0, 0, total)?))
    }

    /// [`Self::write`] for the CPU path: `k`, `v` hold the new rows (`kv_heads × head_dim`
    /// values each), written in place.
    pub(crate) fn write_host(&self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let at = self.len * self.keys[layer].dims()[1..].iter().product::<usize>();
        self.keys[layer].inplace_op1(&WriteAt { at, values: k })?;
        self.values[layer].inplace_op1(&WriteAt { at, values: v })?;
        Ok(())
    }

    /// Calls `f` with the keys and values of `layer`'s first `total` entries (the CPU path).
    pub(crate) fn with_host_entries<R>(
        &self,
        layer: usize,
        total: usize,
        f: impl FnOnce(&[f32], &[f32]) -> Result<R>,
    ) -> Result<R> {
        let (keys, values) = (self.keys[layer].narrow(0, 0, total)?, self.values[layer].narrow(0, 0, total)?);
        with_host_values(&keys, |keys| with_host_values(&values, |values| f(keys, values)))
    }

    pub(crate) fn commit(&mut self, new_tokens: usize) {
        self.len += new_tokens;
    }
}

/// Copies `values` into a CPU f32 tensor from element `at` on.
struct WriteAt<'a> {
    at: usize,
    values: &'a [f32],
}

impl InplaceOp1 for WriteAt<'_> {
    fn name(&self) -> &'static str {
        "kv-write"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("kv-write: a contiguous f32 cache only")
        };
        let from = start + self.at;
        match data[..end].get_mut(from..from + self.values.len()) {
            Some(dst) => dst.copy_from_slice(self.values),
            None => candle_core::bail!("kv-write: {} values at {} overrun the cache", self.values.len(), self.at),
        }
        Ok(())
    }
}
