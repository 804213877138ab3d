//! Causal attention of a few query rows against one sequence's token-major KV cache, without
//! copying or transposing the cache (the decode and recycle steps: 1-2 rows per sequence).
use crate::isa::{Isa, Kind};
use crate::pool::{self, OutPtr};
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
    assert!(
        s.kv_heads > 0 && s.head_dim > 0 && s.heads.is_multiple_of(s.kv_heads),
        "attention: {s:?} is not a grouped-query shape"
    );
    let n = q.len() / (s.heads * s.head_dim);
    assert!(
        n <= total
            && k.len() >= total * s.kv_heads * s.head_dim
            && v.len() >= total * s.kv_heads * s.head_dim
            && out.len() >= q.len(),
        "attention: buffer sizes do not match the shape"
    );
    let out = OutPtr(out.as_mut_ptr());
    // Each (query row, head) pair is one item; the pool spreads them over the threads.
    pool::split(n * s.heads, n * s.heads * total * s.head_dim, |items| {
        // SAFETY: the buffer sizes were checked above, the items lie within `0..n * heads`, and
        // the pool hands each range to one thread, so the outputs of these items are its alone.
        unsafe {
            match isa.kind() {
                #[cfg(target_arch = "x86_64")]
                // An `Isa` only carries the AVX-512 kind when the CPU has AVX-512F
                // (`crate::isa`), which is all the function's features need.
                Kind::Avx512 => attention_avx512(s, q, k, v, total, items, out),
                #[cfg(target_arch = "x86_64")]
                // As above, for the AVX2 kind and AVX2 + FMA.
                Kind::Avx2 => attention_avx2(s, q, k, v, total, items, out),
                _ => attention_generic(s, q, k, v, total, items, out),
            }
        }
    });
}

/// [`attention_generic`] compiled for AVX-512 (it is inlined here and vectorised for it).
///
/// # Safety
/// The CPU must have AVX-512F; otherwise as [`attention_generic`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attention_avx512(
    s: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    total: usize,
    items: Items,
    out: OutPtr,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe { attention_generic(s, q, k, v, total, items, out) }
}

/// [`attention_generic`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA; otherwise as [`attention_generic`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_avx2(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], total: usize, items: Items, out: OutPtr) {
    // SAFETY: forwarded from this function's contract.
    unsafe { attention_generic(s, q, k, v, total, items, out) }
}

/// A range of (query row, head) items, numbered `row * heads + head`.
type Items = std::ops::Range<usize>;

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
///
/// # Safety
/// `q`, `k`, `v` and `out` must have the sizes `attention` checks, `items` must lie within
/// `0..n * heads`, and no one else may read or write those items' outputs during the call.
#[inline(always)]
unsafe fn attention_generic(
    s: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    total: usize,
    items: Items,
    out: OutPtr,
) {
    let hd = s.head_dim;
    let n = q.len() / (s.heads * hd);
    let group = s.heads / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let start = total - n;
    let mut scores = vec![0f32; total];
    for item in items {
        let (i, h) = (item / s.heads, item % s.heads);
        let visible = start + i + 1;
        let kvh = h / group;
        let qh = &q[item * hd..][..hd];
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
        // SAFETY: item `< n * heads`, so its `hd` outputs lie inside `out` (`n * heads * hd`
        // long), and they are this call's alone (the contract).
        let oh = unsafe { std::slice::from_raw_parts_mut(out.0.add(item * hd), hd) };
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
