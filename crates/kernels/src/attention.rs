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
    // Each (tile of up to `TILE` rows, head) pair is one item; the pool spreads them over the
    // threads.
    pool::split(n.div_ceil(TILE) * s.heads, n * s.heads * total * s.head_dim, |items| {
        // SAFETY: the buffer sizes were checked above, the items lie within
        // `0..n.div_ceil(TILE) * heads`, and the pool hands each range to one thread, so the
        // outputs of these items are its alone.
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

/// A range of (row tile, head) items, numbered `tile * heads + head`.
type Items = std::ops::Range<usize>;

/// Query rows of one head that one pass over the head's keys and values serves. Rows of a
/// head read the same keys and values, so a verifying forward's 2-4 rows load them once
/// rather than once per row: the second row costs its arithmetic, not another pass over the
/// cache, which is what decides whether a draft pays.
const TILE: usize = 4;

/// Output vectors one pass over the values accumulates in registers for a tile of one row;
/// a tile of `R` rows takes fewer per pass (see `attend`).
const OUT_VECTORS: usize = 8;

/// The kernel, once for every instruction set: each item's tile of rows goes to the body
/// compiled for its row count.
///
/// # Safety
/// The CPU must have `S`'s features and `S::LANES` must divide the head size; `q`, `k`, `v`
/// and `out` must have the sizes `attention` checks, `items` must lie within
/// `0..n.div_ceil(TILE) * heads`, and no one else may read or write those items' outputs
/// during the call.
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
    let n = q.len() / (s.heads * s.head_dim);
    let mut scores = vec![0f32; TILE * total];
    for item in items {
        let tile = Tile { first: item / s.heads * TILE, head: item % s.heads, n, total };
        // SAFETY: forwarded from this function's contract; the tile's rows lie within `0..n`.
        unsafe {
            match n - tile.first {
                1 => attend_tile::<S, 1, OUT_VECTORS>(s, q, k, v, tile, &mut scores, out),
                2 => attend_tile::<S, 2, { OUT_VECTORS / 2 }>(s, q, k, v, tile, &mut scores, out),
                // Three or four rows: two vectors each per pass keep the accumulators within
                // AVX2's 16 registers (AVX-512 with four measured no faster: the products
                // bound it by then, not the loads).
                3 => attend_tile::<S, 3, 2>(s, q, k, v, tile, &mut scores, out),
                _ => attend_tile::<S, TILE, 2>(s, q, k, v, tile, &mut scores, out),
            }
        }
    }
}

/// Rows `first..first + R` of head `head`, among `n` query rows over `total` cached positions.
#[derive(Clone, Copy)]
struct Tile {
    first: usize,
    head: usize,
    n: usize,
    total: usize,
}

/// One tile of `R` rows: the scores of four keys at a time for every row (the keys are loaded
/// once for all rows, and the four horizontal sums share one set of shuffles), a vectorised
/// softmax per row over the keys it may see, then the weighted values, `W` vectors of the
/// head at a time for every row, each value loaded once.
///
/// # Safety
/// As [`attend`], for a tile whose `R` rows lie within `0..n`; `scores` holds `TILE * total`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_tile<S: Vector, const R: usize, const W: usize>(
    s: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: Tile,
    scores: &mut [f32],
    out: OutPtr,
) {
    let hd = s.head_dim;
    let (chunks, stride) = (hd / S::LANES, s.kv_heads * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    // Row `r` of the tile sees `seen + r` keys (causality); the pass covers the last row's.
    let seen = t.total - t.n + t.first + 1;
    let span = seen + R - 1;
    // SAFETY: the tile's queries, its key/value head's first `span <= total` rows and its
    // outputs lie inside the buffers `attention` checked; `S::LANES` divides `hd`, so every
    // vector load and store stays within one head's `hd` values; `scores` holds `R` rows of
    // `total`. The outputs are this call's alone (the contract). Plain loops, no closures or
    // iterator folds: those become functions of their own, compiled without the caller's
    // target features, where the intrinsics behind `S` are calls rather than instructions.
    unsafe {
        let mut query = [std::ptr::null::<f32>(); R];
        for (r, query) in query.iter_mut().enumerate() {
            *query = q.as_ptr().add(((t.first + r) * s.heads + t.head) * hd);
        }
        let kvh = t.head / (s.heads / s.kv_heads);
        let keys = k.as_ptr().add(kvh * hd);
        let values = v.as_ptr().add(kvh * hd);
        let mut j = 0;
        while j + 4 <= span {
            let mut acc = [[S::zero(); 4]; R];
            for c in 0..chunks {
                let mut key = [S::zero(); 4];
                for (u, key) in key.iter_mut().enumerate() {
                    *key = S::load(keys.add((j + u) * stride + c * S::LANES));
                }
                for r in 0..R {
                    let qc = S::load(query[r].add(c * S::LANES));
                    for u in 0..4 {
                        acc[r][u] = S::fmadd(qc, key[u], acc[r][u]);
                    }
                }
            }
            for r in 0..R {
                for (u, sum) in S::sum4(acc[r]).into_iter().enumerate() {
                    scores[r * t.total + j + u] = sum * scale;
                }
            }
            j += 4;
        }
        while j < span {
            for r in 0..R {
                let mut acc = S::zero();
                for c in 0..chunks {
                    acc = S::fmadd(
                        S::load(query[r].add(c * S::LANES)),
                        S::load(keys.add(j * stride + c * S::LANES)),
                        acc,
                    );
                }
                scores[r * t.total + j] = S::sum(acc) * scale;
            }
            j += 1;
        }
        let mut inverse = [0f32; R];
        for (r, inverse) in inverse.iter_mut().enumerate() {
            let row = &mut scores[r * t.total..][..span];
            *inverse = 1.0 / softmax::<S>(&mut row[..seen + r]);
            // Keys past this row's position weigh nothing in the shared pass over the values.
            row[seen + r..].fill(0.0);
        }
        for first in (0..chunks).step_by(W) {
            let width = W.min(chunks - first);
            let mut acc = [[S::zero(); W]; R];
            for j in 0..span {
                let value = values.add(j * stride + first * S::LANES);
                // A constant trip count keeps `acc` in registers; lanes past `width` are never
                // loaded or stored.
                let mut loaded = [S::zero(); W];
                for (c, loaded) in loaded.iter_mut().enumerate() {
                    if c < width {
                        *loaded = S::load(value.add(c * S::LANES));
                    }
                }
                for r in 0..R {
                    let weight = S::splat(scores[r * t.total + j]);
                    for c in 0..W {
                        if c < width {
                            acc[r][c] = S::fmadd(weight, loaded[c], acc[r][c]);
                        }
                    }
                }
            }
            for r in 0..R {
                let output = out.0.add(((t.first + r) * s.heads + t.head) * hd + first * S::LANES);
                let inv = S::splat(inverse[r]);
                for (c, acc) in acc[r].iter().enumerate().take(width) {
                    S::store(output.add(c * S::LANES), S::mul(*acc, inv));
                }
            }
        }
    }
}

/// Replaces `scores` by e^(score - max) and returns their sum.
///
/// # Safety
/// The CPU must have `S`'s features.
#[inline(always)]
unsafe fn softmax<S: Vector>(scores: &mut [f32]) -> f32 {
    let whole = scores.len() / S::LANES * S::LANES;
    let row = scores.as_mut_ptr();
    // SAFETY: every vector access covers `j..j + LANES <= whole <= len`; the CPU has `S`'s
    // features (the contract).
    unsafe {
        let mut max = S::splat(f32::NEG_INFINITY);
        for j in (0..whole).step_by(S::LANES) {
            max = S::max(max, S::load(row.add(j)));
        }
        let mut max = S::max_lane(max);
        for &score in &scores[whole..] {
            max = max.max(score);
        }
        let mut sum = S::zero();
        for j in (0..whole).step_by(S::LANES) {
            let weight = S::exp(S::add(S::load(row.add(j)), S::splat(-max)));
            S::store(row.add(j), weight);
            sum = S::add(sum, weight);
        }
        let mut sum = S::sum(sum);
        for score in &mut scores[whole..] {
            *score = (*score - max).exp();
            sum += *score;
        }
        sum
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
