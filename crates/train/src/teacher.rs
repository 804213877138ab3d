//! The frozen base model's view of a corpus, computed once before training: for every position
//! t, the states at t-1 of the base layers the module reads, the token x_t, and the top of the
//! base distribution for x_{t+1}.
//! Training steps then run the module alone, instead of a base forward and a full-vocabulary
//! softmax per step (on SmolLM2 that was most of a step's time and 200 MB of targets per batch).
use crate::TrainError;
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use recyclegpt_model::{RecycleGpt, SeqInput};

/// Teacher probabilities kept per position: the mass beyond them is small for a trained model
/// and is left out of the loss (the loss is the cross-entropy against these alone).
pub const TOP_K: usize = 64;

/// Base forwards run this many sequences side by side.
const FORWARD_BATCH: usize = 8;

/// One sequence of `n` tokens as the module sees it: `n - 1` positions.
pub struct Example {
    /// `[n - 1, layers × d]`: the outputs at t-1 of the base layers the module reads (in the
    /// paper's form the last alone: h_{t-1}).
    pub hidden: Tensor,
    /// `[n - 1]`: x_t.
    pub tokens: Tensor,
    /// `[n - 1, K]`: the base model's K likeliest next tokens, likeliest first, and their
    /// probabilities, as indices into the module's output (the vocabulary, or a draft vocabulary).
    pub top_ids: Tensor,
    pub top_probs: Tensor,
    /// `[n - 1]`: the base model's argmax as an index into the module's output, `u32::MAX` when
    /// the output does not hold it.
    pub target: Tensor,
}

impl Example {
    /// The examples stacked on a new first dimension (they share one length): a training
    /// batch, or a file of the teacher cache.
    pub fn stack(examples: &[&Example]) -> Result<Self, TrainError> {
        let stack = |f: fn(&Example) -> &Tensor| Tensor::stack(&examples.iter().map(|e| f(e)).collect::<Vec<_>>(), 0);
        Ok(Self {
            hidden: stack(|e| &e.hidden)?,
            tokens: stack(|e| &e.tokens)?,
            top_ids: stack(|e| &e.top_ids)?,
            top_probs: stack(|e| &e.top_probs)?,
            target: stack(|e| &e.target)?,
        })
    }

    /// The same example for a module that outputs only `draft_vocab` (sorted token ids): top
    /// tokens outside it keep their place with probability 0.
    pub fn restricted(&self, draft_vocab: &[u32]) -> Result<Self, TrainError> {
        let index = |id: u32| draft_vocab.binary_search(&id).ok().map(|i| i as u32);
        let ids = self.top_ids.flatten_all()?.to_vec1::<u32>()?;
        let probs = self.top_probs.flatten_all()?.to_vec1::<f32>()?;
        let (mapped, kept): (Vec<u32>, Vec<f32>) =
            ids.iter().zip(&probs).map(|(&id, &p)| index(id).map_or((0, 0.0), |i| (i, p))).unzip();
        let target: Vec<u32> =
            self.target.to_vec1::<u32>()?.into_iter().map(|id| index(id).unwrap_or(u32::MAX)).collect();
        let device = self.top_ids.device();
        Ok(Self {
            hidden: self.hidden.clone(),
            tokens: self.tokens.clone(),
            top_ids: Tensor::from_vec(mapped, self.top_ids.shape(), device)?,
            top_probs: Tensor::from_vec(kept, self.top_probs.shape(), device)?,
            target: Tensor::from_vec(target, self.target.shape(), device)?,
        })
    }
}

/// The `size` tokens the base model predicts most often along `examples` (its argmax counts,
/// then its second choices, then the lowest ids), sorted: a module's draft vocabulary.
pub fn draft_vocab(examples: &[Example], vocab: usize, size: usize) -> Result<Vec<u32>, TrainError> {
    let mut counts = vec![0u64; vocab];
    for e in examples {
        let top = e.top_ids.narrow(1, 0, 2.min(TOP_K))?.to_vec2::<u32>()?;
        for row in top {
            // The argmax weighs far more than the runner-up, which breaks its ties.
            counts[row[0] as usize] += 1 << 20;
            if let Some(&second) = row.get(1) {
                counts[second as usize] += 1;
            }
        }
    }
    let mut ids: Vec<u32> = (0..vocab as u32).collect();
    ids.sort_by(|a, b| counts[*b as usize].cmp(&counts[*a as usize]).then(a.cmp(b)));
    ids.truncate(size.min(vocab));
    ids.sort_unstable();
    Ok(ids)
}

/// The bar the teacher pass advances by one per sequence (hidden unless `progress`).
pub fn progress_bar(sequences: usize, progress: bool) -> ProgressBar {
    let bar = if progress { ProgressBar::new(sequences as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} sequences through the base model  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Every sequence of `sequences` (each at least 2 tokens) through the base model once, keeping
/// the outputs of the base layers `taps` (counted from 1).
pub fn compute(
    model: &RecycleGpt,
    sequences: &[Vec<u32>],
    taps: &[usize],
    bar: &ProgressBar,
) -> Result<Vec<Example>, TrainError> {
    let mut examples = Vec::with_capacity(sequences.len());
    for chunk in sequences.chunks(FORWARD_BATCH) {
        let mut caches = chunk.iter().map(|s| model.new_cache(s.len())).collect::<Result<Vec<_>, _>>()?;
        let (out, tapped) = {
            let mut inputs: Vec<SeqInput> = chunk
                .iter()
                .zip(caches.iter_mut())
                .map(|(s, cache)| SeqInput { tokens: s, cache, logits_rows: (1..s.len()).collect() })
                .collect();
            model.forward_tapped(&mut inputs, taps)?
        };
        let hidden = Tensor::cat(&tapped, 1)?;
        let mut logits = out.logits.into_iter();
        let mut row = 0;
        for sequence in chunk {
            let n = sequence.len();
            let (mut ids, mut probs) = (Vec::with_capacity((n - 1) * TOP_K), Vec::with_capacity((n - 1) * TOP_K));
            for row_logits in logits.by_ref().take(n - 1) {
                top_k(&row_logits, &mut ids, &mut probs);
            }
            let device = model.device();
            let target: Vec<u32> = ids.iter().step_by(TOP_K).copied().collect();
            examples.push(Example {
                // Its own rows only: `copy()` would clone the whole batch's storage behind the
                // view, eight sequences' states kept for each (the teacher pass over 9,000
                // windows grew to 24 GB and was killed).
                hidden: hidden.narrow(0, row, n - 1)?.force_contiguous()?,
                tokens: Tensor::new(&sequence[1..], device)?,
                top_ids: Tensor::from_vec(ids, (n - 1, TOP_K), device)?,
                top_probs: Tensor::from_vec(probs, (n - 1, TOP_K), device)?,
                target: Tensor::from_vec(target, n - 1, device)?,
            });
            row += n;
        }
        bar.inc(chunk.len() as u64);
    }
    Ok(examples)
}

/// Appends the `TOP_K` likeliest tokens of `logits` (likeliest first) and their softmax
/// probabilities.
fn top_k(logits: &[f32], ids: &mut Vec<u32>, probs: &mut Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = TOP_K.min(order.len());
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_logit);
    }
    order.truncate(k);
    order.sort_unstable_by(by_logit);
    for &id in &order {
        ids.push(id);
        probs.push((logits[id as usize] - max).exp() / total);
    }
    // A vocabulary smaller than K pads with zero-probability copies of the likeliest token.
    for _ in k..TOP_K {
        ids.push(order[0]);
        probs.push(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_the_likeliest_first_with_softmax_probabilities() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect();
        let (mut ids, mut probs) = (Vec::new(), Vec::new());
        top_k(&logits, &mut ids, &mut probs);
        assert_eq!(ids.len(), TOP_K);
        assert!(ids.windows(2).all(|w| logits[w[0] as usize] >= logits[w[1] as usize]));
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        assert_eq!(logits[ids[0] as usize], max);
        let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        assert!((probs[0] - 1.0 / total).abs() < 1e-6);
    }

    /// Each example keeps only its own hidden rows, not the batch's storage behind them: a
    /// teacher pass over thousands of windows must hold what it keeps and no more.
    #[test]
    fn examples_own_only_their_hidden_rows() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shakespeare");
        let loaded = recyclegpt_model::LoadedModel::load(&dir, &recyclegpt_model::LoadOptions::default()).unwrap();
        let sequences: Vec<Vec<u32>> = (0..3u32).map(|s| (0..20).map(|t| 5 + s + t).collect()).collect();
        let layers = loaded.model.config().num_hidden_layers;
        let examples = compute(&loaded.model, &sequences, &[1, layers], &ProgressBar::hidden()).unwrap();
        let width = 2 * loaded.model.config().hidden_size;
        for example in &examples {
            let (storage, _) = example.hidden.storage_and_layout();
            let held = match &*storage {
                candle_core::Storage::Cpu(cpu) => cpu.as_slice::<f32>().unwrap().len(),
                _ => unreachable!("the test runs on the CPU"),
            };
            assert_eq!(held, 19 * width, "one sequence's 19 rows, not the batch's");
        }
    }
}
