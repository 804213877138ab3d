//! Causal attention of a few query rows against one sequence's token-major KV cache, without
//! copying or transposing the cache (decode and verify steps, the module's steps, prefill
//! chunks of up to `SMALL_M_MAX` rows).
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
    /// A sliding window (Gemma 3's local layers): a query sees only the keys of its own position
    /// and the `window - 1` before it.
    pub window: Option<usize>,
}

/// `q [n, heads, hd]` holds positions `total - n ..total`; `k`, `v` are `[total, kv_heads, hd]`;
/// writes `out [n, heads * hd]`. Query head `h` reads key/value head `h / (heads / kv_heads)`.
/// With a window (of at least 1), each query reads only the keys inside it.
pub fn attention(isa: Isa, s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], total: usize, out: &mut [f32]) {
    assert!(
        s.kv_heads > 0 && s.head_dim > 0 && s.heads.is_multiple_of(s.kv_heads) && s.window != Some(0),
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
    // Each tile of up to `TILE` queries of one key/value head is one item; the pool spreads
    // them over the threads.
    let tiles = s.kv_heads * (n * s.heads / s.kv_heads).div_ceil(TILE);
    pool::split(tiles, n * s.heads * total * s.head_dim, |items| {
        // SAFETY: the buffer sizes were checked above, the items lie within `0..tiles`, and the
        // pool hands each range to one thread, so the outputs of these items are its alone.
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

/// A range of tiles, numbered `kv_head * tiles_per_kv_head + tile`.
type Items = std::ops::Range<usize>;

/// Queries that one pass over a key/value head's cache serves: the rows of a verifying
/// forward and the query heads that share the key/value head (grouped-query attention) read
/// the same keys and values, so a tile of them loads each once. The second row of a forward
/// then costs its products, not another pass over the cache, which is what decides whether a
/// draft pays; and one decode row of SmolLM2's three heads per key/value head loads the cache
/// once rather than three times.
const TILE: usize = 4;

/// Output vectors one pass over the values accumulates in registers for a tile of one query;
/// a tile of more takes fewer per pass (see `attend`).
const OUT_VECTORS: usize = 8;

/// The kernel, once for every instruction set: each item's tile goes to the body compiled for
/// its query count.
///
/// # Safety
/// The CPU must have `S`'s features and `S::LANES` must divide the head size; `q`, `k`, `v`
/// and `out` must have the sizes `attention` checks, `items` must lie within the tiles
/// `attention` counts, and no one else may read or write those items' outputs during the call.
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
    let group = s.heads / s.kv_heads;
    // A key/value head's queries, numbered `row * group + head within the group`.
    let queries = n * group;
    let per_kv_head = queries.div_ceil(TILE);
    let mut scores = vec![0f32; TILE.min(queries) * total];
    for item in items {
        let first = item % per_kv_head * TILE;
        let tile = Tile { kv_head: item / per_kv_head, first, group, n, total };
        // SAFETY: forwarded from this function's contract; the tile's queries lie within
        // `0..queries`, and there are at most `TILE.min(queries)` of them, so `scores` holds
        // a row of `total` for each.
        unsafe {
            match queries - first {
                1 => attend_tile::<S, 1, OUT_VECTORS>(s, q, k, v, tile, &mut scores, out),
                2 => attend_tile::<S, 2, { OUT_VECTORS / 2 }>(s, q, k, v, tile, &mut scores, out),
                // Three or four queries: two vectors each per pass keep the accumulators within
                // AVX2's 16 registers (AVX-512 with four measured no faster: the products
                // bound it by then, not the loads).
                3 => attend_tile::<S, 3, 2>(s, q, k, v, tile, &mut scores, out),
                _ => attend_tile::<S, TILE, 2>(s, q, k, v, tile, &mut scores, out),
            }
        }
    }
}

/// Queries `first..` of key/value head `kv_head` (`group` query heads per key/value head), among
/// `n` query rows over `total` cached positions.
#[derive(Clone, Copy)]
struct Tile {
    kv_head: usize,
    first: usize,
    group: usize,
    n: usize,
    total: usize,
}

/// One tile of `R` queries: the scores of four keys at a time for every query
/// ([`four_scores`]), a vectorised softmax per query over the keys its row may see, then
/// the weighted values, `W` vectors of the head at a time for every query, each value loaded
/// once.
///
/// # Safety
/// As [`attend`], for a tile whose `R` queries lie within the key/value head's `n * group`;
/// `scores` holds at least `R * total`.
#[inline(always)]
// Indexing keeps the loops shaped like the queries × keys (or × vectors) tiles they fill.
#[allow(clippy::needless_range_loop)]
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
    // Query `r` sees the keys up to its row's position (causality); the passes cover the last
    // query's, which has the latest row.
    let mut seen = [0usize; R];
    // The first key inside each query's window (0 without one).
    let mut from = [0usize; R];
    let mut query = [std::ptr::null::<f32>(); R];
    // Where each query sits in `q`, and its output in `out`.
    let mut offset = [0usize; R];
    for r in 0..R {
        let (row, head) = ((t.first + r) / t.group, t.kv_head * t.group + (t.first + r) % t.group);
        seen[r] = t.total - t.n + row + 1;
        from[r] = s.window.map_or(0, |w| seen[r].saturating_sub(w));
        offset[r] = (row * s.heads + head) * hd;
    }
    let span = seen[R - 1];
    // The passes start at the block of four that holds the first query's first key: blocks stay
    // where a query alone would have them (multiples of four), so scores keep their bits.
    let start = from[0] / 4 * 4;
    // SAFETY: the tile's queries, its key/value head's first `span <= total` rows and its
    // outputs lie inside the buffers `attention` checked; `S::LANES` divides `hd`, so every
    // vector load and store stays within one head's `hd` values; `scores` holds `R` rows of
    // `total`. The outputs are this call's alone (the contract). Plain loops, no closures or
    // iterator folds: those become functions of their own, compiled without the caller's
    // target features, where the intrinsics behind `S` are calls rather than instructions.
    unsafe {
        for r in 0..R {
            query[r] = q.as_ptr().add(offset[r]);
        }
        let keys = k.as_ptr().add(t.kv_head * hd);
        let values = v.as_ptr().add(t.kv_head * hd);
        // Keys in blocks of four for every query as far as the first query sees, then each
        // query's own remainder as a query alone would take it (blocks of four, then single
        // keys): every score is the sum it would be without the tile, bit for bit, so tiling
        // never moves a greedy near-tie.
        let shared = seen[0] / 4 * 4;
        let rows = scores.as_mut_ptr();
        let mut j = start;
        while j < shared {
            let sums = four_scores::<S, R>(&query, keys.add(j * stride), stride, chunks);
            for r in 0..R {
                for (u, sum) in sums[r].into_iter().enumerate() {
                    *rows.add(r * t.total + j + u) = sum * scale;
                }
            }
            j += 4;
        }
        for r in 0..R {
            let row = rows.add(r * t.total);
            let mut j = shared;
            while j + 4 <= seen[r] {
                let [sums] = four_scores::<S, 1>(&[query[r]], keys.add(j * stride), stride, chunks);
                for (u, sum) in sums.into_iter().enumerate() {
                    *row.add(j + u) = sum * scale;
                }
                j += 4;
            }
            while j < seen[r] {
                let mut acc = S::zero();
                for c in 0..chunks {
                    acc = S::fmadd(
                        S::load(query[r].add(c * S::LANES)),
                        S::load(keys.add(j * stride + c * S::LANES)),
                        acc,
                    );
                }
                *row.add(j) = S::sum(acc) * scale;
                j += 1;
            }
        }
        let mut inverse = [0f32; R];
        for (r, inverse) in inverse.iter_mut().enumerate() {
            let row = &mut scores[r * t.total..][..span];
            *inverse = 1.0 / softmax::<S>(&mut row[from[r]..seen[r]]);
            // Keys outside this query's window or past its position weigh nothing in the shared
            // pass over the values.
            row[start..from[r]].fill(0.0);
            row[seen[r]..].fill(0.0);
        }
        let weights = scores.as_ptr();
        for first in (0..chunks).step_by(W) {
            let width = W.min(chunks - first);
            let mut acc = [[S::zero(); W]; R];
            for j in start..span {
                let value = values.add(j * stride + first * S::LANES);
                // Raw reads: a bounds check per query and key costs as much as the products
                // for small heads (32 dimensions: two vectors).
                let mut weight = [S::zero(); R];
                for (r, weight) in weight.iter_mut().enumerate() {
                    *weight = S::splat(*weights.add(r * t.total + j));
                }
                // A constant trip count keeps `acc` in registers; lanes past `width` are never
                // loaded or stored. Each value vector is loaded once, for every query.
                for c in 0..W {
                    if c < width {
                        let loaded = S::load(value.add(c * S::LANES));
                        for r in 0..R {
                            acc[r][c] = S::fmadd(weight[r], loaded, acc[r][c]);
                        }
                    }
                }
            }
            for r in 0..R {
                let output = out.0.add(offset[r] + first * S::LANES);
                let inv = S::splat(inverse[r]);
                for (c, acc) in acc[r].iter().enumerate().take(width) {
                    S::store(output.add(c * S::LANES), S::mul(*acc, inv));
                }
            }
        }
    }
}

/// The dot products of `N` queries with four consecutive keys (the first at `keys`, the next
/// `stride` apart), unscaled: for each query, its four sums share one set of shuffles, and the
/// keys' vectors stay in the L1 cache from one query to the next.
///
/// # Safety
/// The CPU must have `S`'s features; each query must be readable for `chunks * S::LANES`
/// values, and `keys` for four rows `stride` apart of as many.
#[inline(always)]
// Indexing keeps the loops shaped like the queries × keys tile they fill.
#[allow(clippy::needless_range_loop)]
unsafe fn four_scores<S: Vector, const N: usize>(
    queries: &[*const f32; N],
    keys: *const f32,
    stride: usize,
    chunks: usize,
) -> [[f32; 4]; N] {
    let mut sums = [[0f32; 4]; N];
    // SAFETY: every load lies within the rows the caller vouches for; the CPU has `S`'s
    // features (the contract).
    unsafe {
        let mut acc = [[S::zero(); 4]; N];
        for c in 0..chunks {
            for r in 0..N {
                let qc = S::load(queries[r].add(c * S::LANES));
                for u in 0..4 {
                    acc[r][u] = S::fmadd(qc, S::load(keys.add(u * stride + c * S::LANES)), acc[r][u]);
                }
            }
        }
        for r in 0..N {
            sums[r] = S::sum4(acc[r]);
        }
    }
    sums
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
