//! The RecycleGPT model core: a Llama decoder and its recyclable module in candle, loaded from
//! HuggingFace-layout checkpoints, run as ragged batches over per-sequence KV caches.
pub mod config;
mod decoder;
pub mod detokenize;
pub mod device;
pub mod error;
pub mod gguf;
mod hf_layout;
pub mod kv_cache;
mod layers;
mod llama;
pub mod llama2c;
mod model;
mod quantize;
mod recycle;
mod rope;
pub mod tokenizer;
mod weights;

pub use config::{LlamaConfig, RecycleConfig, RopeParams};
pub use device::{device_name, DTypeSpec, DeviceSpec};
pub use error::{ModelError, Result};
pub use kv_cache::KvCache;
pub use llama::{ForwardOutput, SeqInput};
pub use model::{LoadOptions, LoadedModel, RecycleGpt, RecycleInit, RecycleSource};
pub use quantize::{Quantization, QuantizeSpec};
pub use rope::inverse_frequencies;
pub use tokenizer::TextTokenizer;
