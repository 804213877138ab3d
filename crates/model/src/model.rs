//! A RecycleGPT model: the base Llama plus an optional recyclable module, loaded from a
//! HuggingFace-layout directory or initialised at random.
use crate::config::{LlamaConfig, RecycleConfig};
use crate::device::device_name;
use crate::error::{ModelError, Result};
use crate::gguf::{is_gguf, GgufFile};
use crate::hf_layout::HfLayout;
use crate::kv_cache::KvCache;
use crate::llama::{ForwardOutput, Llama, SeqInput};
use crate::quantize::Quantization;
use crate::recycle::RecycleModule;
use crate::tokenizer::TextTokenizer;
use crate::weights::{SafetensorFiles, Weights};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// Where the recyclable module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecycleInit {
    /// `recycle.safetensors` + the `recycle` block of `config.json` beside the model, if present.
    FromFiles,
    /// The module in another directory (`--recycle DIR`): its `config.json` (the base's
    /// configuration with the `recycle` block, as `train-recycle` writes it) and
    /// `recycle.safetensors`. This is how a GGUF file gets a trained module.
    FromDir(PathBuf),
    /// A randomly initialised module (benchmarks and tests only: it rarely agrees with the model).
    Random { seed: u64, layers: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecycleSource {
    None,
    Trained,
    Random,
}

pub struct LoadOptions {
    pub recycle_init: RecycleInit,
    pub device: Device,
    /// Weights, activations and KV caches; checkpoints in another dtype are converted on load.
    pub dtype: DType,
    /// Keep the linear layers of the base model and of its module quantized (CPU only).
    pub quantize: Option<Quantization>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { recycle_init: RecycleInit::FromFiles, device: Device::Cpu, dtype: DType::F32, quantize: None }
    }
}

pub struct RecycleGpt {
    config: LlamaConfig,
    llama: Llama,
    recycle: Option<RecycleModule>,
    recycle_source: RecycleSource,
    device: Device,
    dtype: DType,
    /// How the base model's linear layers are also kept, if quantized.
    quantization: Option<Quantization>,
}

/// A model directory loaded whole: weights, tokenizer and where it came from.
pub struct LoadedModel {
    pub model: RecycleGpt,
    pub tokenizer: TextTokenizer,
    pub dir: PathBuf,
}

impl LoadedModel {
    /// A model directory (HF layout) or a GGUF file.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        if is_gguf(dir) {
            let gguf = GgufFile::open(dir)?;
            let tokenizer = gguf.tokenizer()?;
            let model = RecycleGpt::from_gguf(gguf, options)?;
            return Ok(Self { model, tokenizer, dir: dir.to_path_buf() });
        }
        if !dir.is_dir() {
            return Err(ModelError::file(dir, "model directory not found (and not a .gguf file)"));
        }
        let model = RecycleGpt::load(dir, options)?;
        let tokenizer = TextTokenizer::load(dir, model.config())?;
        Ok(Self { model, tokenizer, dir: dir.to_path_buf() })
    }
}

/// How a model's module (a safetensors file, or random) keeps its linear layers: where the base
/// keeps each tensor as stored, in the format of the base's layers (unquantized beside f32
/// layers), so that a module step reads as little as they do (a Q4_1 module beside a Q4_1 file
/// stepped in 0.30 ms, in Q8_0 in 0.38-0.41, for the same acceptance); otherwise as asked.
fn module_quantization(quantize: Option<Quantization>, base: &Llama) -> Option<Quantization> {
    match quantize {
        Some(Quantization::AsStored) => base.layer_quantization(),
        other => other,
    }
}

/// A random recyclable module of `layers` layers (or the shape `config` names), for tests and
/// benchmarks; `quantize`: how its linear layers are kept.
fn random_module(
    config: &mut LlamaConfig,
    seed: u64,
    layers: usize,
    options: &LoadOptions,
    quantize: Option<Quantization>,
) -> Result<(Option<RecycleModule>, RecycleSource)> {
    let recycle_config = config.recycle.clone().unwrap_or_else(|| config.default_recycle(layers));
    config.recycle = Some(recycle_config);
    config.validate()?;
    let weights = Weights::random(seed, options.dtype, &options.device).with_quantization(quantize);
    let module = RecycleModule::load(&weights, config)?;
    Ok((Some(module), RecycleSource::Random))
}

/// The trained module in `dir` for a base configured as `config` (which gets its `recycle`
/// block); refused with what differs when it was trained for another base.
fn module_from_dir(
    dir: &Path,
    config: &mut LlamaConfig,
    options: &LoadOptions,
    quantize: Option<Quantization>,
) -> Result<(Option<RecycleModule>, RecycleSource)> {
    let config_path = dir.join("config.json");
    let trained_for = LlamaConfig::from_file(&config_path)?;
    let recycle = trained_for
        .recycle
        .clone()
        .ok_or_else(|| ModelError::file(&config_path, "has no `recycle` block: not a recyclable module"))?;
    let differences: Vec<String> = [
        ("hidden_size", trained_for.hidden_size, config.hidden_size),
        ("vocab_size", trained_for.vocab_size, config.vocab_size),
        ("num_attention_heads", trained_for.num_attention_heads, config.num_attention_heads),
    ]
    .into_iter()
    .filter(|(_, theirs, ours)| theirs != ours)
    .map(|(key, theirs, ours)| format!("{key} {theirs} (this model: {ours})"))
    .collect();
    if !differences.is_empty() {
        return Err(ModelError::file(
            dir,
            format!("the module was trained for another base model: {}", differences.join(", ")),
        ));
    }
    config.recycle = Some(recycle);
    config.validate()?;
    let files = SafetensorFiles::open(&[dir.join("recycle.safetensors")])?;
    let weights = Weights::from_files(files, options.dtype, &options.device).with_quantization(quantize);
    let module = RecycleModule::load(&weights, config)
        .map_err(|e| ModelError::file(dir, format!("the module does not fit this model: {e}")))?;
    Ok((Some(module), RecycleSource::Trained))
}

fn log_loaded(source: &dyn std::fmt::Display, config: &LlamaConfig, recycle: RecycleSource, options: &LoadOptions) {
    tracing::info!(
        %source,
        layers = config.num_hidden_layers,
        hidden = config.hidden_size,
        ?recycle,
        device = %device_name(&options.device),
        dtype = ?options.dtype,
        quantize = ?options.quantize,
        "model loaded"
    );
}

impl RecycleGpt {
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let config_path = dir.join("config.json");
        let mut config = LlamaConfig::from_file(&config_path)?;
        let dtype = options.dtype;
        let files = SafetensorFiles::open_model_dir(dir)?;
        let weights = Weights::from_files(files, dtype, &options.device)
            .with_quantization(options.quantize)
            .in_layout(HfLayout::of(&config));
        let llama = Llama::load(&weights, &config)?;
        let recycle_path = dir.join("recycle.safetensors");
        let quantize = module_quantization(options.quantize, &llama);
        let (recycle, recycle_source) = match &options.recycle_init {
            &RecycleInit::Random { seed, layers } => random_module(&mut config, seed, layers, options, quantize)?,
            RecycleInit::FromDir(module_dir) => module_from_dir(module_dir, &mut config, options, quantize)?,
            RecycleInit::FromFiles => match (&config.recycle, recycle_path.exists()) {
                (Some(_), true) => {
                    let files = SafetensorFiles::open(std::slice::from_ref(&recycle_path))?;
                    let weights = Weights::from_files(files, dtype, &options.device).with_quantization(quantize);
                    let module = RecycleModule::load(&weights, &config)?;
                    (Some(module), RecycleSource::Trained)
                }
                (Some(_), false) => {
                    return Err(ModelError::file(
                        &recycle_path,
                        "config.json has a `recycle` block but its weights file is missing",
                    ))
                }
                (None, true) => {
                    return Err(ModelError::file(
                        &config_path,
                        "recycle.safetensors is present but config.json has no `recycle` block",
                    ))
                }
                (None, false) => (None, RecycleSource::None),
            },
        };
        log_loaded(&dir.display(), &config, recycle_source, options);
        Self::loaded(config, llama, (recycle, recycle_source), options)
    }

    fn loaded(
        config: LlamaConfig,
        llama: Llama,
        module: (Option<RecycleModule>, RecycleSource),
        options: &LoadOptions,
    ) -> Result<Self> {
        let (recycle, recycle_source) = module;
        let recycle = recycle.map(|m| m.with_draft_head(&llama)).transpose()?;
        Ok(Self {
            config,
            llama,
            recycle,
            recycle_source,
            device: options.device.clone(),
            dtype: options.dtype,
            quantization: options.quantize,
        })
    }

    /// The base model of a GGUF file. A trained module comes from a directory
    /// (`RecycleInit::FromDir`); `FromFiles` means none.
    pub fn from_gguf(gguf: GgufFile, options: &LoadOptions) -> Result<Self> {
        let mut config = gguf.config()?;
        let dtype = options.dtype;
        let path = gguf.path().to_path_buf();
        let weights =
            Weights::from_gguf(gguf, config.clone(), dtype, &options.device).with_quantization(options.quantize);
        let llama = Llama::load(&weights, &config)?;
        let quantize = module_quantization(options.quantize, &llama);
        let (recycle, recycle_source) = match &options.recycle_init {
            &RecycleInit::Random { seed, layers } => random_module(&mut config, seed, layers, options, quantize)?,
            RecycleInit::FromDir(module_dir) => module_from_dir(module_dir, &mut config, options, quantize)?,
            RecycleInit::FromFiles => (None, RecycleSource::None),
        };
        log_loaded(&format!("{} (GGUF)", path.display()), &config, recycle_source, options);
        Self::loaded(config, llama, (recycle, recycle_source), options)
    }

    /// A whole model with random weights (benchmark shapes); the module gets `recycle`'s shape.
    pub fn random(
        mut config: LlamaConfig,
        recycle: Option<RecycleConfig>,
        seed: u64,
        device: &Device,
        dtype: DType,
        quantize: Option<Quantization>,
    ) -> Result<Self> {
        config.recycle = recycle;
        config.validate()?;
        let llama = Llama::load(&Weights::random(seed, dtype, device).with_quantization(quantize), &config)?;
        let module = match config.recycle {
            Some(_) => Some(RecycleModule::load(
                &Weights::random(seed ^ 0x5eed, dtype, device).with_quantization(quantize),
                &config,
            )?),
            None => None,
        };
        let recycle_source = if module.is_some() { RecycleSource::Random } else { RecycleSource::None };
        Ok(Self {
            config,
            llama,
            recycle: module,
            recycle_source,
            device: device.clone(),
            dtype,
            quantization: quantize,
        })
    }

    /// Bytes of weights a 1-token forward of the base model reads, in the formats they are kept in.
    pub fn weight_bytes(&self) -> usize {
        self.llama.matrix_bytes()
    }

    /// The part of [`Self::weight_bytes`] that the decoder layers read (the rest is the head).
    pub fn layer_bytes(&self) -> usize {
        self.llama.stack().matrix_bytes()
    }

    pub fn quantization(&self) -> Option<Quantization> {
        self.quantization
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn context_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    pub fn has_recycle(&self) -> bool {
        self.recycle.is_some()
    }

    pub fn recycle_source(&self) -> RecycleSource {
        self.recycle_source
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.llama.stack().new_cache(capacity, self.dtype, &self.device)
    }

    /// The module's own cache, or `None` for a standard-only model.
    pub fn new_recycle_cache(&self, capacity: usize) -> Result<Option<KvCache>> {
        self.recycle.as_ref().map(|m| m.stack().new_cache(capacity, self.dtype, &self.device)).transpose()
    }

    /// One ragged forward of the full model; its `features` are what this model's module reads.
    pub fn forward(&self, inputs: &mut [SeqInput]) -> Result<ForwardOutput> {
        match self.recycle.as_ref().and_then(|m| m.feature_layers().map(|layers| (m, layers))) {
            Some((module, layers)) => {
                let (mut output, taps) = self.llama.forward_tapped(inputs, layers)?;
                output.features = module.fuse(&taps)?;
                Ok(output)
            }
            None => Ok(self.llama.forward_tapped(inputs, &[])?.0),
        }
    }

    /// One ragged forward of the base model, also returning the output of each layer in `taps`
    /// (counted from 1), `[T, d]` each: what training a module reads.
    pub fn forward_tapped(&self, inputs: &mut [SeqInput], taps: &[usize]) -> Result<(ForwardOutput, Vec<Tensor>)> {
        self.llama.forward_tapped(inputs, taps)
    }

    /// The token embedding and output head, shared with the recyclable module.
    pub fn embedding_and_head(&self) -> Result<(Tensor, Tensor)> {
        self.llama.embedding_and_head()
    }

    /// Final norm and output head over rows of hidden states (`[n, d]`).
    pub fn head_logits(&self, hidden: &Tensor) -> Result<Vec<Vec<f32>>> {
        let rows: Vec<u32> = (0..hidden.dim(0)? as u32).collect();
        self.llama.logits(hidden, &rows)
    }

    /// One ragged forward of the recyclable module; `hidden` holds the feature at t-1 for each
    /// x_t (see [`ForwardOutput::features`]).
    pub fn recycle_forward(&self, hidden: &Tensor, inputs: &mut [SeqInput]) -> Result<Vec<Vec<f32>>> {
        Ok(self.recycle_forward_features(hidden, inputs)?.logits)
    }

    /// `recycle_forward`, also returning the module's output features for every new token.
    pub fn recycle_forward_features(&self, hidden: &Tensor, inputs: &mut [SeqInput]) -> Result<ForwardOutput> {
        let module =
            self.recycle.as_ref().ok_or_else(|| ModelError::Input("this model has no recyclable module".into()))?;
        module.forward(&self.llama, hidden, inputs)
    }
}
