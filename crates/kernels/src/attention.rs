//! Causal attention of a few query rows against one sequence's token-major KV cache, without
//! copying or transposing the cache (the decode and recycle steps: 1-2 rows per sequence).
use crate::isa::{Isa, Kind};
use crate::pool::{self, OutPtr};
#[cfg(target_arch = "x86_64")]
use crate::vector::{Avx2, Avx512};
use crate::vector::{Scalar, Vector};
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
    // The vector paths need whole vectors per head; other head sizes take the next path down
    // that the CPU runs.
    let kind = match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 if s.head_dim.is_multiple_of(16) => Kind::Avx512,
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 | Kind::Avx2 if s.head_dim.is_multiple_of(8) && isa.fallback(Kind::Avx2).is_some() => Kind::Avx2,
        _ => Kind::Scalar,
    };
    // Each (query row, head) pair is one item; the pool spreads them over the threads.
    pool::split(n * s.heads, n * s.heads * total * s.head_dim, |items| {
        // SAFETY: the buffer sizes were checked above, the items lie within `0..n * heads`, and
        // the pool hands each range to one thread, so the outputs of these items are its alone.
        // `kind` is the `Isa`'s own path or a slower one that `Isa::fallback` checked, so the
        // CPU has its features, and its vector width divides the head size.
        unsafe {
            match kind {
                #[cfg(target_arch = "x86_64")]
                Kind::Avx512 => attention_avx512(s, q, k, v, total, items, out),
                #[cfg(target_arch = "x86_64")]
                Kind::Avx2 => attention_avx2(s, q, k, v, total, items, out),
                _ => attend::<Scalar>(s, q, k, v, total, items, out),
            }
        }
    });
}

/// [`attend`] compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F and the head size must be a multiple of 16; otherwise as
/// [`attend`].
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
    unsafe { attend::<Avx512>(s, q, k, v, total, items, out) }
}

/// [`attend`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA and the head size must be a multiple of 8; otherwise as
/// [`attend`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_avx2(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], total: usize, items: Items, out: OutPtr) {
    // SAFETY: forwarded from this function's contract.
    unsafe { attend::<Avx2>(s, q, k, v, total, items, out) }
}

/// A range of (query row, head) items, numbered `row * heads + head`.
type Items = std::ops::Range<usize>;

/// Output vectors one pass over the values accumulates in registers.
const OUT_VECTORS: usize = 8;

/// The kernel, once for every instruction set. Per item: the scores of four keys at a time
/// (their four horizontal sums share one set of shuffles), a vectorised softmax, then the
/// weighted values, accumulated in registers up to [`OUT_VECTORS`] vectors of the head at a
/// time.
///
/// # Safety
/// The CPU must have `S`'s features and `S::LANES` must divide the head size; `q`, `k`, `v`
/// and `out` must have the sizes `attention` checks, `items` must lie within `0..n * heads`,
/// and no one else may read or write those items' outputs during the call.
#[inline(always)]
unsafe fn attend<S: Vector>(
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
    let (group, chunks, stride) = (s.heads / s.kv_heads, hd / S::LANES, s.kv_heads * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0f32; total];
    for item in items {
        let (i, h) = (item / s.heads, item % s.heads);
        let visible = total - n + i + 1;
        let kvh = h / group;
        // SAFETY: the item's query, its key/value head's `visible` rows (`visible <= total`)
        // and its output lie inside the buffers `attention` checked; `S::LANES` divides `hd`,
        // so every vector load and store stays within one head's `hd` values. The output is
        // this call's alone (the contract).
        unsafe {
            let query = q.as_ptr().add(item * hd);
            let keys = k.as_ptr().add(kvh * hd);
            let values = v.as_ptr().add(kvh * hd);
            // Plain loops, no closures or iterator folds: those become functions of their own,
            // compiled without the caller's target features, where the intrinsics behind `S`
            // are calls rather than instructions (ten times slower).
            let mut j = 0;
            while j + 4 <= visible {
                let mut acc = [S::zero(); 4];
                for c in 0..chunks {
                    let qc = S::load(query.add(c * S::LANES));
                    for (u, acc) in acc.iter_mut().enumerate() {
                        *acc = S::fmadd(qc, S::load(keys.add((j + u) * stride + c * S::LANES)), *acc);
                    }
                }
                for (score, sum) in scores[j..j + 4].iter_mut().zip(S::sum4(acc)) {
                    *score = sum * scale;
                }
                j += 4;
            }
            while j < visible {
                let mut acc = S::zero();
                for c in 0..chunks {
                    acc = S::fmadd(S::load(query.add(c * S::LANES)), S::load(keys.add(j * stride + c * S::LANES)), acc);
                }
                scores[j] = S::sum(acc) * scale;
                j += 1;
            }
            let whole = visible / S::LANES * S::LANES;
            let row = scores.as_mut_ptr();
            let mut max = S::splat(f32::NEG_INFINITY);
            for j in (0..whole).step_by(S::LANES) {
                max = S::max(max, S::load(row.add(j)));
            }
            let mut max = S::max_lane(max);
            for &score in &scores[whole..visible] {
                max = max.max(score);
            }
            let mut sum = S::zero();
            for j in (0..whole).step_by(S::LANES) {
                let weight = S::exp(S::add(S::load(row.add(j)), S::splat(-max)));
                S::store(row.add(j), weight);
                sum = S::add(sum, weight);
            }
            let mut sum = S::sum(sum);
            for score in &mut scores[whole..visible] {
                *score = (*score - max).exp();
                sum += *score;
            }
            let output = out.0.add(item * hd);
            for first in (0..chunks).step_by(OUT_VECTORS) {
                let width = OUT_VECTORS.min(chunks - first);
                let mut acc = [S::zero(); OUT_VECTORS];
                for (j, &weight) in scores[..visible].iter().enumerate() {
                    let (weight, value) = (S::splat(weight), values.add(j * stride + first * S::LANES));
                    // A constant trip count keeps `acc` in registers; lanes past `width` are
                    // never loaded or stored.
                    for (c, acc) in acc.iter_mut().enumerate() {
                        if c < width {
                            *acc = S::fmadd(weight, S::load(value.add(c * S::LANES)), *acc);
                        }
                    }
                }
                let inv = S::splat(1.0 / sum);
                for (c, acc) in acc.iter().enumerate().take(width) {
                    S::store(output.add((first + c) * S::LANES), S::mul(*acc, inv));
                }
            }
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
