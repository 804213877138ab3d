//! Causal attention of a few query rows against one sequence's token-major KV cache, without
//! copying or transposing the cache (the decode and recycle steps: 1-2 rows per sequence).
use crate::isa::{Isa, Kind};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// `q [n, heads, hd]` holds positions `total - n ..total`; `k`, `v` are `[total, kv_heads, hd]`;
/// writes `out [n, heads * hd]`. Query head `h` reads key/value head `h / (heads / kv_heads)`.
pub fn attention(isa: Isa, s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], total: usize, out: &mut [f32]) {
    let n = q.len() / (s.heads * s.head_dim);
    assert!(
        n <= total
            && k.len() >= total * s.kv_heads * s.head_dim
            && v.len() >= total * s.kv_heads * s.head_dim
            && out.len() >= q.len(),
        "attention: buffer sizes do not match the shape"
    );
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` only carries the AVX-512 kind when the CPU has AVX-512F (`crate::isa`),
        // and the body is safe code, so that is all the call needs.
        Kind::Avx512 => unsafe { attention_avx512(s, q, k, v, total, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for the AVX2 kind and AVX2 + FMA.
        Kind::Avx2 => unsafe { attention_avx2(s, q, k, v, total, out) },
        _ => attention_generic(s, q, k, v, total, out),
    }
}

/// [`attention_generic`] compiled for AVX-512 (it is inlined here and vectorised for it).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attention_avx512(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], total: usize, out: &mut [f32]) {
    attention_generic(s, q, k, v, total, out)
}

/// [`attention_generic`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_avx2(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], total: usize, out: &mut [f32]) {
    attention_generic(s, q, k, v, total, out)
}

/// Sum of products, with 16 independent lanes so that the compiler vectorises it (a plain
/// iterator sum is a serial chain it may not reorder).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Plain loops, written so that the compiler vectorises them for the enclosing target features.
#[inline(always)]
fn attention_generic(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], total: usize, out: &mut [f32]) {
    let hd = s.head_dim;
    let n = q.len() / (s.heads * hd);
    let group = s.heads / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let start = total - n;
    let mut scores = vec![0f32; total];
    for i in 0..n {
        let visible = start + i + 1;
        for h in 0..s.heads {
            let kvh = h / group;
            let qh = &q[(i * s.heads + h) * hd..][..hd];
            let mut max = f32::NEG_INFINITY;
            for (j, score) in scores[..visible].iter_mut().enumerate() {
                *score = dot(qh, &k[(j * s.kv_heads + kvh) * hd..][..hd]) * scale;
                max = max.max(*score);
            }
            let mut sum = 0.0;
            for score in scores[..visible].iter_mut() {
                *score = (*score - max).exp();
                sum += *score;
            }
            let oh = &mut out[(i * s.heads + h) * hd..][..hd];
            oh.fill(0.0);
            for (j, &p) in scores[..visible].iter().enumerate() {
                let vj = &v[(j * s.kv_heads + kvh) * hd..][..hd];
                for (o, &x) in oh.iter_mut().zip(vj) {
                    *o += p * x;
                }
            }
            let inv = 1.0 / sum;
            oh.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

struct CachedAttention(AttentionShape);

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "cached-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (qs, ks, vs) else {
            bail!("cached-attention: f32 tensors only")
        };
        let (Some((q0, q1)), Some((k0, k1)), Some((v0, v1))) =
            (ql.contiguous_offsets(), kl.contiguous_offsets(), vl.contiguous_offsets())
        else {
            bail!("cached-attention: contiguous tensors only")
        };
        let s = self.0;
        let (&[n, heads, hd], &[total, kv_heads, khd]) = (ql.dims(), kl.dims()) else {
            bail!("cached-attention: expected q [n, heads, hd] and k [total, kv_heads, hd]")
        };
        if heads != s.heads
            || kv_heads != s.kv_heads
            || hd != s.head_dim
            || khd != hd
            || kl.dims() != vl.dims()
            || n > total
        {
            bail!("cached-attention: shapes {:?}, {:?}, {:?} do not match {s:?}", ql.dims(), kl.dims(), vl.dims())
        }
        let mut out = vec![0f32; n * heads * hd];
        attention(crate::op::isa(), s, &q[q0..q1], &k[k0..k1], &v[v0..v1], total, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, heads * hd))))
    }
}

/// Attention of `q [n, heads, hd]` (the last `n` positions) over `k`, `v` `[total, kv_heads, hd]`,
/// returning `[n, heads * hd]`.
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor, shape: AttentionShape) -> Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(k, v, &CachedAttention(shape))
}
