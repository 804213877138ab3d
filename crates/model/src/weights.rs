//! Where tensors come from: safetensors files (one or sharded) or a seeded random initialisation.
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::hf_layout::HfLayout;
use crate::quantize::Quantization;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use recyclegpt_kernels::{LowBitFormat, LowBitMatrix, QuantMatrix};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How a tensor is initialised when weights are random.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Ones,
    Normal(f32),
}

/// Safetensors files, with the file that holds each tensor remembered for error messages.
pub struct SafetensorFiles {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, usize>,
}

impl SafetensorFiles {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            if !path.exists() {
                return Err(ModelError::file(path, "file not found"));
            }
            // SAFETY: the file is mapped read-only and not modified while the model lives.
            let mapped = unsafe { MmapedSafetensors::new(path) }
                .map_err(|e| ModelError::file(path, format!("not a valid safetensors file: {e}")))?;
            for (name, _) in mapped.tensors() {
                index.insert(name, files.len());
            }
            files.push((path.clone(), mapped));
        }
        Ok(Self { files, index })
    }

    /// `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open_model_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::file(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::file(&index_path, format!("invalid JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::file(&index_path, "missing `weight_map` object"))?;
            let mut shards: Vec<PathBuf> = Vec::new();
            for file in map.values() {
                let file = file
                    .as_str()
                    .ok_or_else(|| ModelError::file(&index_path, "`weight_map` values must be file names"))?;
                let path = dir.join(file);
                if !shards.contains(&path) {
                    shards.push(path);
                }
            }
            return Self::open(&shards);
        }
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(ModelError::file(
                dir,
                "no model.safetensors or model.safetensors.index.json in the model directory",
            ));
        }
        Self::open(&[single])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Rows `first..first + count` of the stored matrix `name`, which must then have `shape`.
    fn load_rows(
        &self,
        name: &str,
        first: usize,
        count: usize,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (path, mapped) = self.file_of(name)?;
        let err = |message: String| ModelError::Tensor { path: path.clone(), name: name.to_string(), message };
        let tensor = mapped.load(name, device).map_err(|e| err(e.to_string()))?;
        let stored = tensor.dims().first().copied().unwrap_or(0);
        if first + count > stored {
            return Err(err(format!("{stored} rows, but rows {first}..{} were expected", first + count)));
        }
        let rows = tensor.narrow(0, first, count).map_err(|e| err(e.to_string()))?;
        if rows.dims() != shape {
            return Err(err(format!("expected rows of shape {shape:?}, found {:?}", rows.dims())));
        }
        rows.to_dtype(dtype).map_err(|e| err(e.to_string()))
    }

    /// The 16-bit float format `name` is stored in, if it is F16 or BF16.
    fn stored_half(&self, name: &str) -> Option<Quantization> {
        let (_, mapped) = self.file_of(name).ok()?;
        match DType::try_from(mapped.get(name).ok()?.dtype()).ok()? {
            DType::F16 => Some(Quantization::F16),
            DType::BF16 => Some(Quantization::BF16),
            _ => None,
        }
    }

    /// The file that holds `name`, and its mapping.
    fn file_of(&self, name: &str) -> Result<&(PathBuf, MmapedSafetensors)> {
        let Some(&file) = self.index.get(name) else {
            let paths: Vec<String> = self.files.iter().map(|(p, _)| p.display().to_string()).collect();
            return Err(ModelError::Tensor {
                path: PathBuf::from(paths.join(", ")),
                name: name.to_string(),
                message: "missing".into(),
            });
        };
        Ok(&self.files[file])
    }

    fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let (path, mapped) = self.file_of(name)?;
        let err = |message: String| ModelError::Tensor { path: path.clone(), name: name.to_string(), message };
        let tensor = mapped.load(name, device).map_err(|e| err(e.to_string()))?;
        if tensor.dims() != shape {
            return Err(err(format!("expected shape {shape:?}, found {:?}", tensor.dims())));
        }
        tensor.to_dtype(dtype).map_err(|e| err(e.to_string()))
    }
}

enum Source {
    Files(SafetensorFiles),
    /// A GGUF file, read under HF names; the configuration says how Q/K rows are ordered.
    Gguf(Box<(GgufFile, LlamaConfig)>),
    Random(Box<RefCell<StdRng>>),
}

/// Hands out named tensors of a known shape, with a name prefix like candle's `VarBuilder`.
pub struct Weights {
    source: std::rc::Rc<Source>,
    prefix: String,
    dtype: DType,
    device: Device,
    /// The format linear layers built from these weights keep them in, if quantized.
    quantization: Option<Quantization>,
    /// Where safetensors files keep each tensor (a family's HF layout).
    layout: HfLayout,
}

impl Weights {
    pub fn from_files(files: SafetensorFiles, dtype: DType, device: &Device) -> Self {
        Self {
            source: std::rc::Rc::new(Source::Files(files)),
            prefix: String::new(),
            dtype,
            device: device.clone(),
            quantization: None,
            layout: HfLayout::Llama,
        }
    }

    pub fn from_gguf(gguf: GgufFile, config: LlamaConfig, dtype: DType, device: &Device) -> Self {
        Self {
            source: std::rc::Rc::new(Source::Gguf(Box::new((gguf, config)))),
            prefix: String::new(),
            dtype,
            device: device.clone(),
            quantization: None,
            layout: HfLayout::Llama,
        }
    }

    pub fn random(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            source: std::rc::Rc::new(Source::Random(Box::new(RefCell::new(StdRng::seed_from_u64(seed))))),
            prefix: String::new(),
            dtype,
            device: device.clone(),
            quantization: None,
            layout: HfLayout::Llama,
        }
    }

    /// The same safetensors weights read in `layout`.
    pub(crate) fn in_layout(mut self, layout: HfLayout) -> Self {
        self.layout = layout;
        self
    }

    /// The same weights, with linear layers kept quantized.
    pub fn with_quantization(mut self, quantization: Option<Quantization>) -> Self {
        self.quantization = quantization;
        self
    }

    /// The format a linear layer built from the tensors `names` is kept in. A GGUF file's
    /// tensors keep the type they are stored in (`AsStored`), or a low-bit format asked for,
    /// only where the file stores them all in it (kept exactly); a tensor the file stores in
    /// another type (often the embedding, a K-quant or Q8_0) is kept in Q8_0 rather than losing
    /// precision. Safetensors files' tensors, as stored, keep F16 or BF16 where all of them are
    /// in it, and stay unquantized otherwise.
    pub fn quantization_for(&self, names: &[&str]) -> Option<Quantization> {
        let format = self.quantization?;
        let gguf = match &*self.source {
            Source::Gguf(gguf) => gguf,
            Source::Files(files) if format == Quantization::AsStored => {
                let stored_name = |name: &str| self.layout.locate(&self.full_name(name)).name;
                let mut stored = names.iter().map(|name| files.stored_half(&stored_name(name)));
                let first = stored.next().flatten();
                return first.filter(|&first| stored.all(|other| other == Some(first)));
            }
            _ => return Some(format),
        };
        let mut stored = names.iter().map(|name| gguf.0.stored_type(&self.full_name(name)));
        let first = stored.next().flatten();
        let shared = first.filter(|&first| stored.all(|other| other == Some(first)));
        Some(match (format, shared.and_then(Quantization::of_stored)) {
            (Quantization::Q8_0, _) => Quantization::Q8_0,
            (Quantization::AsStored, Some(kept)) => kept,
            (format, Some(kept)) if kept == format => format,
            _ => Quantization::Q8_0,
        })
    }

    /// The matrix that stacks the tensors `names` (rows in the model's order), read from the
    /// blocks a GGUF file stores them in when each is a K-quant of `format`; `None` otherwise.
    pub(crate) fn stored_blocks(&self, names: &[&str], format: LowBitFormat) -> Result<Option<QuantMatrix>> {
        let Source::Gguf(gguf) = &*self.source else { return Ok(None) };
        let mut parts = Vec::with_capacity(names.len());
        for name in names {
            let stored = gguf.0.stored_rows(&self.full_name(name), &gguf.1)?;
            if Quantization::of_stored(stored.dtype).and_then(Quantization::k_quant) != Some(format) {
                return Ok(None);
            }
            parts.push(stored);
        }
        let Some(cols) = parts.first().and_then(|p| Some(p.row_bytes / format.ggml_block_bytes()? * 256)) else {
            return Ok(None);
        };
        let rows: Option<Vec<&[u8]>> = parts
            .iter()
            .flat_map(|part| {
                part.order.iter().map(|&row| part.bytes.get(row * part.row_bytes..(row + 1) * part.row_bytes))
            })
            .collect();
        Ok(rows.and_then(|rows| LowBitMatrix::from_ggml(format, cols, &rows)).map(QuantMatrix::LowBit))
    }

    /// Whether the tensors come from a GGUF file (whose blocks a low-bit format keeps exactly).
    pub fn is_gguf(&self) -> bool {
        matches!(&*self.source, Source::Gguf(_))
    }

    /// The same weights, handed out in f32 whatever the load dtype (for values that must stay
    /// exact, like token ids).
    pub fn in_f32(&self) -> Self {
        Self {
            source: self.source.clone(),
            prefix: self.prefix.clone(),
            dtype: DType::F32,
            device: self.device.clone(),
            quantization: self.quantization,
            layout: self.layout,
        }
    }

    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self {
            source: self.source.clone(),
            prefix,
            dtype: self.dtype,
            device: self.device.clone(),
            quantization: self.quantization,
            layout: self.layout,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match &*self.source {
            Source::Files(files) => files.contains(&self.layout.locate(&self.full_name(name)).name),
            Source::Gguf(gguf) => gguf.0.contains(&self.full_name(name)),
            Source::Random(_) => true,
        }
    }

    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        match &*self.source {
            Source::Files(files) => {
                let stored = self.layout.locate(&self.full_name(name));
                // A Gemma norm gains its 1 in f32, as HF computes `1 + w.float()`.
                let dtype = if stored.plus_one { DType::F32 } else { self.dtype };
                let tensor = match stored.rows {
                    None => files.load(&stored.name, shape, dtype, &self.device)?,
                    Some((first, count)) => files.load_rows(&stored.name, first, count, shape, dtype, &self.device)?,
                };
                Ok(if stored.plus_one { (tensor + 1.0)?.to_dtype(self.dtype)? } else { tensor })
            }
            Source::Gguf(gguf) => gguf.0.load(&self.full_name(name), shape, self.dtype, &self.device, &gguf.1),
            Source::Random(rng) => {
                let count: usize = shape.iter().product();
                let values: Vec<f32> = match init {
                    Init::Ones => vec![1.0; count],
                    Init::Normal(std) => {
                        let normal = Normal::new(0.0f32, std)
                            .map_err(|e| ModelError::Config(format!("bad init std {std}: {e}")))?;
                        let mut rng = rng.borrow_mut();
                        (0..count).map(|_| normal.sample(&mut *rng)).collect()
                    }
                };
                Ok(Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?)
            }
        }
    }
}
