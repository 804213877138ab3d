//! Differentiable Llama layers for training. candle's fused RoPE, RMSNorm and softmax have no
//! backward pass, so these are written in plain tensor ops; tensor names match the inference
//! loader's so that what is trained here loads there.
use candle_core::{Device, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use recyclegpt_model::config::StackShape;
use recyclegpt_model::RopeParams;

pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?, eps: eps as f32 })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps)
    }
}

pub struct Linear {
    weight: Tensor,
}

impl Linear {
    pub fn new(vb: VarBuilder, out_dim: usize, in_dim: usize) -> Result<Self> {
        let std = (1.0 / in_dim as f64).sqrt();
        Ok(Self { weight: vb.get_with_hints((out_dim, in_dim), "weight", Init::Randn { mean: 0.0, stdev: std })? })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `x [..., in] → [..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.weight.t()?)
    }
}

/// cos / sin of the rotate-half convention, full head width: `[positions, head_dim]`.
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    pub fn new(head_dim: usize, positions: usize, rope: RopeParams, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let frequencies = recyclegpt_model::inverse_frequencies(head_dim, rope);
        let mut cos = Vec::with_capacity(positions * head_dim);
        let mut sin = Vec::with_capacity(positions * head_dim);
        for p in 0..positions {
            for i in 0..head_dim {
                let freq = frequencies[i % half];
                cos.push((p as f64 * freq).cos() as f32);
                sin.push((p as f64 * freq).sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (positions, head_dim), device)?,
            sin: Tensor::from_vec(sin, (positions, head_dim), device)?,
        })
    }

    /// Rotates `x [B, H, T, hd]` whose tokens sit at positions `start..start + T`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, _, t, hd) = x.dims4()?;
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        let half = hd / 2;
        let rotated =
            Tensor::cat(&[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

pub struct DecoderLayer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    s: StackShape,
}

impl DecoderLayer {
    pub fn new(vb: VarBuilder, s: StackShape) -> Result<Self> {
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        Ok(Self {
            input_norm: RmsNorm::new(vb.pp("input_layernorm"), s.hidden, s.eps)?,
            q: Linear::new(attn.pp("q_proj"), s.heads * s.head_dim, s.hidden)?,
            k: Linear::new(attn.pp("k_proj"), s.kv_heads * s.head_dim, s.hidden)?,
            v: Linear::new(attn.pp("v_proj"), s.kv_heads * s.head_dim, s.hidden)?,
            o: Linear::new(attn.pp("o_proj"), s.hidden, s.heads * s.head_dim)?,
            post_norm: RmsNorm::new(vb.pp("post_attention_layernorm"), s.hidden, s.eps)?,
            gate: Linear::new(mlp.pp("gate_proj"), s.intermediate, s.hidden)?,
            up: Linear::new(mlp.pp("up_proj"), s.intermediate, s.hidden)?,
            down: Linear::new(mlp.pp("down_proj"), s.hidden, s.intermediate)?,
            s,
        })
    }

    /// `x [B, T, d]`, positions `start..start + T`, causal.
    pub fn forward(&self, x: &Tensor, rope: &RopeTables, start: usize) -> Result<Tensor> {
        Ok(self.forward_keeping_kv(x, rope, start)?.0)
    }

    /// [`Self::forward`], also returning this pass's keys and values for later chained passes.
    pub fn forward_keeping_kv(&self, x: &Tensor, rope: &RopeTables, start: usize) -> Result<(Tensor, PassKv)> {
        let t = x.dim(1)?;
        let (q, kv) = self.project(x, rope, start)?;
        let (k, v) = (self.repeat(&kv.k)?, self.repeat(&kv.v)?);
        let scores = (q.matmul(&k.t()?)? / self.scale())?.broadcast_add(&causal_mask(t, x.device())?)?;
        let attended = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&v)?;
        Ok((self.finish(x, &attended)?, kv))
    }

    /// A later pass of a chain of drafts, trained in parallel as serving runs it one step at a
    /// time. Row r of `x [B, T', d]` continues the chain rooted at row r of the first pass
    /// (`root`, whose pairs the module's cache holds in serving), `chain.len() + 1` steps on:
    /// it attends to the root pass's rows up to r, and to row r of each earlier chained pass
    /// and of its own, the speculative entries serving's cache holds at that step.
    pub fn forward_chained(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        start: usize,
        root: &PassKv,
        chain: &[PassKv],
    ) -> Result<(Tensor, PassKv)> {
        let t = x.dim(1)?;
        let (q, own) = self.project(x, rope, start)?;
        let rows = |kv: &Tensor| self.repeat(&kv.narrow(2, 0, t)?);
        let mut scores =
            vec![(q.matmul(&rows(&root.k)?.t()?)? / self.scale())?.broadcast_add(&causal_mask(t, x.device())?)?];
        let mut values = Vec::with_capacity(chain.len() + 1);
        for kv in chain.iter().chain(std::iter::once(&own)) {
            // One key per row: the score is the row's own dot product, `[B, H, T', 1]`.
            scores.push(((&q * rows(&kv.k)?)?.sum_keepdim(D::Minus1)? / self.scale())?);
            values.push(rows(&kv.v)?);
        }
        let weights = candle_nn::ops::softmax(&Tensor::cat(&scores, D::Minus1)?, D::Minus1)?;
        let mut attended = weights.narrow(D::Minus1, 0, t)?.matmul(&rows(&root.v)?)?;
        for (i, v) in values.iter().enumerate() {
            attended = (attended + weights.narrow(D::Minus1, t + i, 1)?.broadcast_mul(v)?)?;
        }
        Ok((self.finish(x, &attended)?, own))
    }

    /// Queries `[B, H, T, hd]` and the pass's keys and values, all after RoPE where it applies.
    fn project(&self, x: &Tensor, rope: &RopeTables, start: usize) -> Result<(Tensor, PassKv)> {
        let (b, t, _) = x.dims3()?;
        let s = self.s;
        let h = self.input_norm.forward(x)?;
        let heads = |proj: &Linear, n: usize| -> Result<Tensor> {
            proj.forward(&h)?.reshape((b, t, n, s.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = rope.apply(&heads(&self.q, s.heads)?, start)?;
        let k = rope.apply(&heads(&self.k, s.kv_heads)?, start)?;
        Ok((q, PassKv { k, v: heads(&self.v, s.kv_heads)? }))
    }

    /// `[B, KV, T, hd]` → `[B, H, T, hd]`: each KV head serves its group of query heads.
    fn repeat(&self, x: &Tensor) -> Result<Tensor> {
        let group = self.s.heads / self.s.kv_heads;
        if group == 1 {
            return Ok(x.clone());
        }
        let (b, kv, t, hd) = x.dims4()?;
        x.unsqueeze(2)?.expand((b, kv, group, t, hd))?.reshape((b, self.s.heads, t, hd))
    }

    fn scale(&self) -> f64 {
        (self.s.head_dim as f64).sqrt()
    }

    /// The rest of the layer after attention: output projection, residual, MLP.
    fn finish(&self, x: &Tensor, attended: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let attended = attended.transpose(1, 2)?.reshape((b, t, self.s.heads * self.s.head_dim))?;
        let x = (x + self.o.forward(&attended)?)?;
        let h = self.post_norm.forward(&x)?;
        let mlp = self.down.forward(&(candle_nn::ops::silu(&self.gate.forward(&h)?)? * self.up.forward(&h)?)?)?;
        x + mlp
    }
}

/// A layer's keys and values for one pass (`[B, KV, T, hd]`, keys after RoPE): what the later
/// passes of a chain attend to.
pub struct PassKv {
    k: Tensor,
    v: Tensor,
}

/// `[t, t]`: 0 where column j <= row i, -inf after.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, t), device)
}

/// Mean soft cross-entropy of `logits [N, V]` against target probabilities `[N, V]`.
/// Cross-entropy against a teacher's top-K (`ids`, `probs`: `[..., K]`), per position, averaged
/// over positions: `-Σ_k p_k · log_softmax(logits)[id_k]`.
pub fn top_k_cross_entropy(logits: &Tensor, ids: &Tensor, probs: &Tensor) -> Result<Tensor> {
    per_position_cross_entropy(logits, ids, probs)?.mean_all()
}

/// [`top_k_cross_entropy`] averaged over the positions where `mask` (`[...]`, 0 or 1) is 1.
pub fn masked_top_k_cross_entropy(logits: &Tensor, ids: &Tensor, probs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let kept = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    (per_position_cross_entropy(logits, ids, probs)? * mask)?.sum_all()? / f64::from(kept)
}

fn per_position_cross_entropy(logits: &Tensor, ids: &Tensor, probs: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_probs.contiguous()?.gather(&ids.contiguous()?, D::Minus1)?;
    (probs * picked)?.sum(D::Minus1)?.neg()
}

/// How far the module's features (`[B, T, d]`) are from the base model's next hidden states
/// (`[B, T, d]`), each scaled to unit root-mean-square first (the module's `hnorm` normalises
/// what it is fed, so only the direction matters): mean squared difference per element.
pub fn feature_loss(features: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let unit = |x: &Tensor| -> Result<Tensor> {
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?;
        x.broadcast_div(&rms)
    };
    (unit(features)? - unit(targets)?)?.sqr()?.mean_all()
}
