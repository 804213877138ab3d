//! Training sequences: sampled from the base model itself, or cut from text files.
use crate::TrainError;
use recyclegpt_engine::{generate, DecodeMode, SamplingParams, StopCriteria};
use recyclegpt_model::{RecycleGpt, TextTokenizer};
use std::path::PathBuf;

pub struct Corpus {
    sequences: Vec<Vec<u32>>,
}

impl Corpus {
    /// `count` continuations of BOS that the model samples from itself (temperature 1), each
    /// up to `length` tokens.
    pub fn self_distilled(
        model: &RecycleGpt,
        tokenizer: &TextTokenizer,
        count: usize,
        length: usize,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let bos = tokenizer.bos_id().unwrap_or(1);
        let mut sequences = Vec::with_capacity(count);
        for i in 0..count {
            let params = SamplingParams {
                seed: Some(seed.wrapping_mul(1_000_003).wrapping_add(i as u64)),
                ..SamplingParams::default()
            };
            let stop = StopCriteria { max_tokens: length.saturating_sub(1).max(1), eos_ids: Vec::new() };
            let generation = generate(model, vec![bos], DecodeMode::Off, params, stop)?;
            let mut sequence = vec![bos];
            sequence.extend(generation.ids);
            sequences.push(sequence);
        }
        Ok(Self { sequences })
    }

    /// Text files, tokenized and cut into windows of `length` tokens.
    pub fn from_files(paths: &[PathBuf], tokenizer: &TextTokenizer, length: usize) -> Result<Self, TrainError> {
        let sequences = windows(paths, tokenizer, length, 2)?;
        if sequences.is_empty() {
            return Err(TrainError::Data("the text files hold no tokens to train on".into()));
        }
        Ok(Self { sequences })
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
