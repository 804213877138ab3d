//! Training sequences: sampled from the base model itself, or cut from text files.
use crate::TrainError;
use indicatif::{ProgressBar, ProgressStyle};
use recyclegpt_engine::{step, DecodeMode, SamplingParams, Sequence, StopCriteria};
use recyclegpt_model::{RecycleGpt, TextTokenizer};
use std::path::PathBuf;

/// Sequences sampled side by side: enough for the batched step to read each weight once for
/// many tokens, few enough that their KV caches stay small.
pub const SAMPLING_BATCH: usize = 32;

/// A progress bar over `len` items (hidden when stderr is not a terminal).
fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what}  eta {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub struct Corpus {
    sequences: Vec<Vec<u32>>,
}

impl Corpus {
    /// `count` continuations of BOS that the model samples from itself (temperature 1), each
    /// up to `length` tokens. They are sampled in batches of [`SAMPLING_BATCH`] through the
    /// engine's batched step, so a decode step reads the weights once for the whole batch.
    pub fn self_distilled(
        model: &RecycleGpt,
        tokenizer: &TextTokenizer,
        count: usize,
        length: usize,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let bos = tokenizer.bos_id().unwrap_or(1);
        let stop = StopCriteria { max_tokens: length.saturating_sub(1).max(1), eos_ids: Vec::new() };
        let mut sequences = Vec::with_capacity(count);
        let bar = progress_bar(count, "sampled");
        for first in (0..count).step_by(SAMPLING_BATCH) {
            let mut batch = (first..count.min(first + SAMPLING_BATCH))
                .map(|i| {
                    let params = SamplingParams {
                        seed: Some(seed.wrapping_mul(1_000_003).wrapping_add(i as u64)),
                        ..SamplingParams::default()
                    };
                    Sequence::new(i as u64, model, vec![bos], DecodeMode::Off, params, stop.clone())
                })
                .collect::<Result<Vec<_>, _>>()?;
            while batch.iter().any(|s| !s.is_finished()) {
                let mut refs: Vec<&mut Sequence> = batch.iter_mut().collect();
                step(model, &mut refs, length, None)?;
            }
            for seq in &batch {
                let mut sequence = vec![bos];
                sequence.extend_from_slice(seq.generated());
                sequences.push(sequence);
            }
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        Ok(Self { sequences })
    }

    /// Text files, tokenized and cut into windows of `length` tokens.
    pub fn from_files(paths: &[PathBuf], tokenizer: &TextTokenizer, length: usize) -> Result<Self, TrainError> {
        // Whole windows only: training stacks sequences into batches, so they share one length
        // (each file's shorter tail is left out).
        let sequences = windows(paths, tokenizer, length, length)?;
        if sequences.is_empty() {
            return Err(TrainError::Data(format!("the text files hold no window of {length} tokens to train on")));
        }
        Ok(Self { sequences })
    }

    /// Tokens in the shortest sequence.
    pub fn shortest(&self) -> usize {
        self.sequences.iter().map(Vec::len).min().unwrap_or(0)
    }

    /// (training, held-out): the last `fraction` of sequences (at least one) is held out.
    pub fn split(&self, fraction: f64) -> (&[Vec<u32>], &[Vec<u32>]) {
        let held = ((self.sequences.len() as f64 * fraction).ceil() as usize).clamp(1, self.sequences.len());
        self.sequences.split_at(self.sequences.len() - held)
    }
}

/// Each file tokenized and cut into windows of `length` tokens, keeping those of at least
/// `min_len` tokens.
pub fn windows(
    paths: &[PathBuf],
    tokenizer: &TextTokenizer,
    length: usize,
    min_len: usize,
) -> Result<Vec<Vec<u32>>, TrainError> {
    let mut windows = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
        let ids = tokenizer.encode(&text)?;
        windows.extend(ids.chunks(length).filter(|c| c.len() >= min_len).map(<[u32]>::to_vec));
    }
    Ok(windows)
}
