//! `recyclegpt bench kernels`, second table: the cached-attention kernel for one layer of the
//! embedded model's heads (4 × 32) and SmolLM2's (9 query heads over 3 key/value heads × 64),
//! for 1 query row (a decode step) and 2 or 4 (verify steps), over caches of growing length.
use crate::{median_ms, time};
use recyclegpt_kernels::{attention, AttentionShape, Isa};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct AttentionRow {
    pub shape: &'static str,
    pub rows: usize,
    pub cached: usize,
    pub microseconds: f64,
}

const SHAPES: [(&str, AttentionShape); 2] = [
    ("embedded 4x32", AttentionShape { heads: 4, kv_heads: 4, head_dim: 32, window: None }),
    ("SmolLM2 9/3x64", AttentionShape { heads: 9, kv_heads: 3, head_dim: 64, window: None }),
];

pub fn run(rounds: usize) -> Vec<AttentionRow> {
    let isa = Isa::detect();
    let mut table = Vec::new();
    for (name, s) in SHAPES {
        for cached in [128, 512, 1024] {
            for rows in [1, 2, 4] {
                let total = cached + rows;
                let values = |len: usize, step: f32| (0..len).map(|i| (i as f32 * step).sin()).collect::<Vec<f32>>();
                let q = values(rows * s.heads * s.head_dim, 0.37);
                let (k, v) =
                    (values(total * s.kv_heads * s.head_dim, 0.11), values(total * s.kv_heads * s.head_dim, 0.07));
                let mut out = vec![0f32; q.len()];
                // One untimed call: the first use starts the pool's threads.
                attention(isa, s, &q, &k, &v, total, &mut out);
                // Each timed sample is 100 calls: one call is a few microseconds.
                let mut samples: Vec<f64> = (0..rounds.max(1))
                    .map(|_| time(|| (0..100).for_each(|_| attention(isa, s, &q, &k, &v, total, &mut out))).1 / 100.0)
                    .collect();
                table.push(AttentionRow { shape: name, rows, cached, microseconds: median_ms(&mut samples) * 1e3 });
            }
        }
    }
    table
}
