//! The llama2.c "legacy v0" checkpoint: a 7-int header, then f32 arrays stacked over layers.
use crate::error::{ModelError, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    dim: usize,
    hidden_dim: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab_size: usize,
    seq_len: usize,
    shared_head: bool,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// Reads consecutive little-endian values, naming the file when it runs short.
struct Reader {
    path: PathBuf,
    bytes: Vec<u8>,
    at: usize,
}

impl Reader {
    fn i32(&mut self) -> Result<i32> {
        let b = self.take(4, "header")?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        if self.at + n > self.bytes.len() {
            return Err(ModelError::file(
                &self.path,
                format!("file ends inside `{what}` (needs {} bytes, has {})", self.at + n, self.bytes.len()),
            ));
        }
        self.at += n;
        Ok(&self.bytes[self.at - n..self.at])
    }

    fn floats(&mut self, count: usize, what: &str) -> Result<Vec<f32>> {
        let b = self.take(count * 4, what)?;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// llama2.c rotates adjacent pairs (2j, 2j+1); HF rotates halves (j, j + hs/2). Meta row
/// `h*hs + 2j + t` becomes HF row `h*hs + t*hs/2 + j`.
fn permute_rotary(rows: &[f32], heads: usize, head_size: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows.len()];
    let half = head_size / 2;
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let src = (h * head_size + 2 * j + t) * cols;
                let dst = (h * head_size + t * half + j) * cols;
                out[dst..dst + cols].copy_from_slice(&rows[src..src + cols]);
            }
        }
    }
    out
}

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::file(path, e))?;
        let mut r = Reader { path: path.to_path_buf(), bytes, at: 0 };
        let mut header = [0i32; 7];
        for h in header.iter_mut() {
            *h = r.i32()?;
        }
        let [dim, hidden_dim, layers, heads, kv_heads, vocab, seq_len] = header;
        if [dim, hidden_dim, layers, heads, kv_heads, seq_len].iter().any(|&v| v <= 0)
            || vocab == 0
            || dim % heads != 0
            || heads % kv_heads != 0
        {
            return Err(ModelError::file(path, format!("not a llama2.c checkpoint: header {header:?}")));
        }
        let (d, h, l, v, s) =
            (dim as usize, hidden_dim as usize, layers as usize, vocab.unsigned_abs() as usize, seq_len as usize);
        let (nh, nkv) = (heads as usize, kv_heads as usize);
        let hs = d / nh;
        let kv_dim = nkv * hs;
        let tok_emb = r.floats(v * d, "tok_emb")?;
        let rms_att = r.floats(l * d, "rms_att")?;
        let wq = r.floats(l * d * d, "wq")?;
        let wk = r.floats(l * kv_dim * d, "wk")?;
        let wv = r.floats(l * kv_dim * d, "wv")?;
        let wo = r.floats(l * d * d, "wo")?;
        let rms_ffn = r.floats(l * d, "rms_ffn")?;
        let w1 = r.floats(l * h * d, "w1")?;
        let w2 = r.floats(l * d * h, "w2")?;
        let w3 = r.floats(l * h * d, "w3")?;
        let rms_final = r.floats(d, "rms_final")?;
        r.floats(s * hs, "legacy rope tables")?;
        let shared_head = vocab > 0;
        let wcls = if shared_head { None } else { Some(r.floats(v * d, "wcls")?) };

        let mut tensors = vec![("model.embed_tokens.weight".to_string(), vec![v, d], tok_emb)];
        let slice = |all: &[f32], i: usize, n: usize| all[i * n..(i + 1) * n].to_vec();
        for i in 0..l {
            let p = format!("model.layers.{i}");
            let q = permute_rotary(&slice(&wq, i, d * d), nh, hs, d);
            let k = permute_rotary(&slice(&wk, i, kv_dim * d), nkv, hs, d);
            tensors.extend([
                (format!("{p}.input_layernorm.weight"), vec![d], slice(&rms_att, i, d)),
                (format!("{p}.self_attn.q_proj.weight"), vec![d, d], q),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv_dim, d], k),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv_dim, d], slice(&wv, i, kv_dim * d)),
                (format!("{p}.self_attn.o_proj.weight"), vec![d, d], slice(&wo, i, d * d)),
                (format!("{p}.post_attention_layernorm.weight"), vec![d], slice(&rms_ffn, i, d)),
                (format!("{p}.mlp.gate_proj.weight"), vec![h, d], slice(&w1, i, h * d)),
                (format!("{p}.mlp.down_proj.weight"), vec![d, h], slice(&w2, i, d * h)),
                (format!("{p}.mlp.up_proj.weight"), vec![h, d], slice(&w3, i, h * d)),
            ]);
        }
        tensors.push(("model.norm.weight".to_string(), vec![d], rms_final));
        if let Some(wcls) = wcls {
            tensors.push(("lm_head.weight".to_string(), vec![v, d], wcls));
        }
        Ok(Self {
            dim: d,
            hidden_dim: h,
            layers: l,
            heads: nh,
            kv_heads: nkv,
            vocab_size: v,
            seq_len: s,
            shared_head,
            tensors,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    pub fn hf_config(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "intermediate_size": self.hidden_dim,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.dim / self.heads,
            "max_position_embeddings": self.seq_len,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": self.shared_head,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        })
    }

    pub fn write_safetensors(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for (name, shape, data) in &self.tensors {
            map.insert(name.clone(), Tensor::from_slice(data, shape.as_slice(), &Device::Cpu)?);
        }
        candle_core::safetensors::save(&map, path).map_err(|e| ModelError::file(path, e))
    }
}
