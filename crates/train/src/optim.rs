//! AdamW whose moments can be saved and restored, so that a resumed run continues exactly.
use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
    weight_decay: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.95;
const EPS: f64 = 1e-8;

impl AdamW {
    /// `params` in a fixed order (sorted by name).
    pub fn new(params: Vec<(String, Var)>, weight_decay: f64) -> Result<Self> {
        let zeros = |p: &(String, Var)| p.1.as_tensor().zeros_like();
        Ok(Self {
            m: params.iter().map(zeros).collect::<Result<_>>()?,
            v: params.iter().map(zeros).collect::<Result<_>>()?,
            params,
            step: 0,
            weight_decay,
        })
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let (c1, c2) = (1.0 - BETA1.powi(self.step as i32), 1.0 - BETA2.powi(self.step as i32));
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            self.m[i] = ((&self.m[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
            self.v[i] = ((&self.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + EPS)?)?;
            // Decoupled weight decay, for matrices only (not norm gains).
            let decay = if var.rank() >= 2 { 1.0 - lr * self.weight_decay } else { 1.0 };
            var.set(&((var.as_tensor() * decay)? - (update * lr)?)?)?;
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            tensors.insert(format!("m.{name}"), self.m[i].clone());
            tensors.insert(format!("v.{name}"), self.v[i].clone());
        }
        tensors.insert("step".into(), Tensor::new(&[self.step as u32], &Device::Cpu)?);
        candle_core::safetensors::save(&tensors, path)
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        for (i, (name, _)) in self.params.iter().enumerate() {
            let missing = |k: &str| candle_core::Error::Msg(format!("{}: no `{k}`", path.display()));
            self.m[i] = tensors.remove(&format!("m.{name}")).ok_or_else(|| missing(&format!("m.{name}")))?;
            self.v[i] = tensors.remove(&format!("v.{name}")).ok_or_else(|| missing(&format!("v.{name}")))?;
        }
        let step =
            tensors.remove("step").ok_or_else(|| candle_core::Error::Msg(format!("{}: no `step`", path.display())))?;
        self.step = step.to_vec1::<u32>()?.first().copied().unwrap_or(0) as usize;
        Ok(())
    }
}
