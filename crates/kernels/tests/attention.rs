//! The cached-attention kernel agrees with a direct computation of causal grouped-query
//! attention, for every instruction set this CPU has.
use proptest::prelude::*;
use recyclegpt_kernels::{attention, AttentionShape, Isa};

fn random(len: usize, seed: u64) -> Vec<f32> {
    random_in(len, seed, 1.0)
}

fn random_in(len: usize, seed: u64, range: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-range..range)).collect()
}

/// Softmax(q·kᵀ/√d) v, one query row and head at a time, in f64, over the keys each query sees
/// (up to its own position, within the window if there is one).
fn reference(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], total: usize) -> Vec<f32> {
    let (hd, n) = (s.head_dim, q.len() / (s.heads * s.head_dim));
    let mut out = vec![0f32; q.len()];
    for i in 0..n {
        let visible = total - n + i + 1;
        let first = s.window.map_or(0, |w| visible.saturating_sub(w));
        for h in 0..s.heads {
            let kvh = h / (s.heads / s.kv_heads);
            let qh = &q[(i * s.heads + h) * hd..][..hd];
            let scores: Vec<f64> = (first..visible)
                .map(|j| {
                    let kj = &k[(j * s.kv_heads + kvh) * hd..][..hd];
                    qh.iter().zip(kj).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for d in 0..hd {
                let value: f64 =
                    (first..visible).map(|j| weights[j - first] * f64::from(v[(j * s.kv_heads + kvh) * hd + d])).sum();
                out[(i * s.heads + h) * hd + d] = (value / sum) as f32;
            }
        }
    }
    out
}

fn check(heads: usize, kv_heads: usize, head_dim: usize, n: usize, total: usize, seed: u64) -> Result<(), String> {
    check_window(AttentionShape { heads, kv_heads, head_dim, window: None }, n, total, seed)
}

fn check_window(s: AttentionShape, n: usize, total: usize, seed: u64) -> Result<(), String> {
    let (heads, kv_heads, head_dim) = (s.heads, s.kv_heads, s.head_dim);
    let q = random(n * heads * head_dim, seed);
    let k = random(total * kv_heads * head_dim, seed + 1);
    let v = random(total * kv_heads * head_dim, seed + 2);
    let want = reference(s, &q, &k, &v, total);
    for isa in Isa::supported() {
        let mut got = vec![0f32; q.len()];
        attention(isa, s, &q, &k, &v, total, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if (g - w).abs() > 1e-5 {
                return Err(format!("{isa:?} {s:?} n={n} total={total}: element {i}: {g} vs {w}"));
            }
        }
    }
    Ok(())
}

/// Keys and queries as large as trained models' (scores in the tens, a peaked softmax): the
/// kernel's sums and exponentials stay within a few f32 roundings of the f64 reference.
#[test]
fn peaked_softmax_stays_accurate() {
    for (heads, kv_heads, head_dim, total) in [(9, 3, 64, 700), (4, 4, 32, 300), (6, 2, 16, 64)] {
        let s = AttentionShape { heads, kv_heads, head_dim, window: None };
        let n = 3;
        let q = random_in(n * heads * head_dim, 11, 3.0);
        let k = random_in(total * kv_heads * head_dim, 12, 3.0);
        let v = random_in(total * kv_heads * head_dim, 13, 1.0);
        let want = reference(s, &q, &k, &v, total);
        for isa in Isa::supported() {
            let mut got = vec![0f32; q.len()];
            attention(isa, s, &q, &k, &v, total, &mut got);
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            assert!(worst < 2e-5, "{isa:?} {s:?}: worst error {worst}");
        }
    }
}

#[test]
fn decode_and_chunk_shapes() {
    for (heads, kv_heads, head_dim) in [(1, 1, 8), (8, 4, 8), (12, 12, 64), (32, 4, 64), (6, 2, 20)] {
        for (n, total) in [(1, 1), (1, 129), (2, 130), (5, 5), (7, 40), (8, 8), (20, 53)] {
            check(heads, kv_heads, head_dim, n, total, (heads * 100 + n * 10 + total) as u64).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_shapes(kv_heads in 1usize..5, group in 1usize..5, half_dim in 1usize..40, n in 1usize..20, past in 0usize..70, seed in 0u64..1000) {
        let r = check(kv_heads * group, kv_heads, half_dim * 2, n, n + past, seed);
        prop_assert!(r.is_ok(), "{:?}", r);
    }

    /// A sliding window (Gemma 3's local layers) narrower or wider than the keys, the queries'
    /// windows starting anywhere within a block of four keys.
    #[test]
    fn random_windows(group in 1usize..4, n in 1usize..12, past in 0usize..60, window in 1usize..40, seed in 0u64..1000) {
        let s = AttentionShape { heads: 2 * group, kv_heads: 2, head_dim: 16, window: Some(window) };
        let r = check_window(s, n, n + past, seed);
        prop_assert!(r.is_ok(), "{:?}", r);
    }
}

/// Rows attended together (a verifying forward, a prefill chunk) give, bit for bit, what each
/// row gives alone over the keys it sees: sharing the pass over the cache never changes a
/// score's rounding, so it never moves a greedy near-tie.
#[test]
fn rows_together_equal_rows_alone_bit_for_bit() {
    let shapes = [(9, 3, 64, None), (5, 5, 32, None), (4, 2, 16, None), (4, 1, 32, Some(5)), (4, 2, 16, Some(17))];
    for (heads, kv_heads, head_dim, window) in shapes {
        let s = AttentionShape { heads, kv_heads, head_dim, window };
        // From an empty cache too (`total == n`: a first prefill chunk, fewer than 4 keys seen).
        // (9, 300): seven tiles per key/value head of SmolLM2's shape over a longer cache.
        for (n, total) in [(2, 130), (3, 3), (3, 7), (4, 4), (4, 64), (5, 131), (6, 6), (7, 40), (9, 300)] {
            let width = heads * head_dim;
            let q = random_in(n * width, 21, 3.0);
            let k = random_in(total * kv_heads * head_dim, 22, 3.0);
            let v = random_in(total * kv_heads * head_dim, 23, 1.0);
            for isa in Isa::supported() {
                let mut together = vec![0f32; n * width];
                attention(isa, s, &q, &k, &v, total, &mut together);
                for i in 0..n {
                    let seen = total - n + i + 1;
                    let mut alone = vec![0f32; width];
                    attention(isa, s, &q[i * width..][..width], &k, &v, seen, &mut alone);
                    let same = alone.iter().zip(&together[i * width..]).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa:?} {s:?} n={n} total={total}: row {i} differs from the row alone");
                }
            }
        }
    }
}
