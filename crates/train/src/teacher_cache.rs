//! The teacher pass kept on disk. On 2 cores the base model's view of a few thousand chat
//! windows takes most of an hour, longer than training on it, so a run that changes only how
//! the module trains (steps, noise, draft vocabulary, layers) reads it back instead.
//!
//! A file holds the examples of [`FILE_SEQUENCES`] consecutive sequences, stacked (they share
//! one length), and is named by a hash of what they depend on: the base model (its file and how
//! it computes, `model_key`), the base layers kept, the teacher's K and every token. A file with another name is
//! never read, so a changed corpus or model recomputes rather than trains on stale targets,
//! while a corpus that grows by another text file reuses the files of the windows it keeps.
use crate::teacher::{self, Example, TOP_K};
use crate::TrainError;
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use recyclegpt_model::RecycleGpt;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

/// Sequences per file.
const FILE_SEQUENCES: usize = 256;

/// Part of every file's name: raise it when what the teacher pass computes changes, so that no
/// file from before is read. (The name's hash is std's, which may change with the toolchain;
/// that costs a recomputation, never a stale read.)
const FORMAT: u32 = 2;

/// The tensors of a file, each the examples' own stacked on a first dimension.
const NAMES: [&str; 5] = ["hidden", "tokens", "top_ids", "top_probs", "target"];

#[derive(Debug, Clone)]
pub struct TeacherCache {
    dir: PathBuf,
    model_key: String,
}

impl TeacherCache {
    /// A cache in `dir` (created when first written) for the base model `model_key` names.
    pub fn new(dir: impl Into<PathBuf>, model_key: impl Into<String>) -> Self {
        Self { dir: dir.into(), model_key: model_key.into() }
    }

    /// The examples of `sequences` with the outputs of base layers `taps`: read back where
    /// this cache holds them, otherwise computed and saved.
    pub fn examples(
        &self,
        model: &RecycleGpt,
        sequences: &[Vec<u32>],
        taps: &[usize],
        bar: &ProgressBar,
    ) -> Result<Vec<Example>, TrainError> {
        let mut examples = Vec::with_capacity(sequences.len());
        for part in sequences.chunks(FILE_SEQUENCES) {
            let path = self.path(part, taps);
            if path.is_file() {
                match load(&path, model.device()).and_then(|read| matches(read, part)) {
                    Ok(read) => {
                        bar.inc(part.len() as u64);
                        examples.extend(read);
                        continue;
                    }
                    Err(error) => tracing::warn!(path = %path.display(), %error, "recomputing a cached teacher pass"),
                }
            }
            let computed = teacher::compute(model, part, taps, bar)?;
            save(&path, &computed)?;
            examples.extend(computed);
        }
        Ok(examples)
    }

    fn path(&self, sequences: &[Vec<u32>], taps: &[usize]) -> PathBuf {
        let mut hasher = DefaultHasher::new();
        (FORMAT, &self.model_key, taps, TOP_K, sequences).hash(&mut hasher);
        self.dir.join(format!("teacher-{:016x}.safetensors", hasher.finish()))
    }
}

/// `read` when it holds the examples of `part` (its tokens are theirs), an error otherwise.
fn matches(read: Vec<Example>, part: &[Vec<u32>]) -> Result<Vec<Example>, TrainError> {
    let same = |(e, s): (&Example, &Vec<u32>)| e.tokens.to_vec1::<u32>().is_ok_and(|t| t[..] == s[1..]);
    if read.len() == part.len() && read.iter().zip(part).all(same) {
        Ok(read)
    } else {
        Err(TrainError::Data("its tokens are not the corpus'".into()))
    }
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("teacher cache {}: {error}", path.display()))
}

/// Writes `examples` stacked; through a temporary file, so that an interrupted run leaves no
/// partial file under the final name.
fn save(path: &Path, examples: &[Example]) -> Result<(), TrainError> {
    let Some(dir) = path.parent() else { return Err(io_error(path, "no parent directory")) };
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let all = Example::stack(&examples.iter().collect::<Vec<_>>())?;
    let tensors: HashMap<String, Tensor> = NAMES
        .iter()
        .map(|n| n.to_string())
        .zip([all.hidden, all.tokens, all.top_ids, all.top_probs, all.target])
        .collect();
    // Named by process as well: two runs sharing the directory may write the same file.
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    candle_core::safetensors::save(&tensors, &partial)?;
    std::fs::rename(&partial, path).map_err(|e| io_error(path, e))?;
    Ok(())
}

fn load(path: &Path, device: &Device) -> Result<Vec<Example>, TrainError> {
    let mut tensors = candle_core::safetensors::load(path, device)?;
    let mut take = |name: &str| tensors.remove(name).ok_or_else(|| io_error(path, format!("no `{name}` tensor")));
    let [hidden, tokens, top_ids, top_probs, target] = NAMES.map(&mut take);
    let (hidden, tokens, top_ids, top_probs, target) = (hidden?, tokens?, top_ids?, top_probs?, target?);
    let count = hidden.dim(0)?;
    (0..count)
        .map(|i| {
            Ok(Example {
                hidden: hidden.get(i)?,
                tokens: tokens.get(i)?,
                top_ids: top_ids.get(i)?,
                top_probs: top_probs.get(i)?,
                target: target.get(i)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(seed: u32) -> Result<Example, TrainError> {
        let device = Device::Cpu;
        let (n, d) = (5, 3);
        let values = |len: usize| (0..len).map(|i| (i as f32 + seed as f32) * 0.37).collect::<Vec<f32>>();
        let ids = |len: usize| (0..len as u32).map(|i| i * 7 + seed).collect::<Vec<u32>>();
        Ok(Example {
            hidden: Tensor::from_vec(values(n * d), (n, d), &device)?,
            tokens: Tensor::from_vec(ids(n), n, &device)?,
            top_ids: Tensor::from_vec(ids(n * TOP_K), (n, TOP_K), &device)?,
            top_probs: Tensor::from_vec(values(n * TOP_K), (n, TOP_K), &device)?,
            target: Tensor::from_vec(ids(n), n, &device)?,
        })
    }

    #[test]
    fn examples_read_back_as_they_were_saved() -> Result<(), TrainError> {
        let dir = std::env::temp_dir().join(format!("recyclegpt-teacher-cache-{}", std::process::id()));
        let path = dir.join("teacher.safetensors");
        let saved = vec![example(1)?, example(2)?];
        save(&path, &saved)?;
        let loaded = load(&path, &Device::Cpu)?;
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(loaded.len(), saved.len());
        for (a, b) in saved.iter().zip(&loaded) {
            assert_eq!(a.hidden.to_vec2::<f32>()?, b.hidden.to_vec2::<f32>()?);
            assert_eq!(a.tokens.to_vec1::<u32>()?, b.tokens.to_vec1::<u32>()?);
            assert_eq!(a.top_ids.to_vec2::<u32>()?, b.top_ids.to_vec2::<u32>()?);
            assert_eq!(a.top_probs.to_vec2::<f32>()?, b.top_probs.to_vec2::<f32>()?);
            assert_eq!(a.target.to_vec1::<u32>()?, b.target.to_vec1::<u32>()?);
        }
        Ok(())
    }

    #[test]
    fn another_corpus_or_model_is_another_file() {
        let cache = TeacherCache::new("/cache", "model A");
        let corpus = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let mut changed = corpus.clone();
        changed[1][2] = 7;
        assert_eq!(cache.path(&corpus, &[30]), cache.path(&corpus.clone(), &[30]));
        assert_ne!(cache.path(&corpus, &[30]), cache.path(&changed, &[30]));
        assert_ne!(cache.path(&corpus, &[30]), cache.path(&corpus, &[2, 15, 30]));
        assert_ne!(cache.path(&corpus, &[30]), TeacherCache::new("/cache", "model B").path(&corpus, &[30]));
    }
}
