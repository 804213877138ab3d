//! Learning-rate schedule and gradient clipping.
use candle_core::backprop::GradStore;
use candle_core::Result;
use candle_nn::VarMap;

/// Linear warm-up, then cosine decay to a tenth of the peak.
pub fn learning_rate(step: usize, steps: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (steps.saturating_sub(warmup)).max(1) as f64;
    let floor = peak / 10.0;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// Scales all gradients down together when their global norm exceeds `max_norm`.
pub fn clip_gradients(varmap: &VarMap, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    clip_gradients_all(&[varmap], grads, max_norm)
}

/// The same over the variables of several maps.
pub fn clip_gradients_all(maps: &[&VarMap], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let vars: Vec<_> = maps.iter().flat_map(|m| m.all_vars()).collect();
    let mut total = 0f64;
    for var in &vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = total.sqrt();
    if norm > max_norm && norm.is_finite() {
        let scale = max_norm / norm;
        for var in &vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_a_tenth() {
        assert!((learning_rate(0, 100, 10, 1.0) - 0.1).abs() < 1e-9);
        assert!((learning_rate(9, 100, 10, 1.0) - 1.0).abs() < 1e-9);
        assert!((learning_rate(10, 100, 10, 1.0) - 1.0).abs() < 1e-9);
        assert!((learning_rate(99, 100, 10, 1.0) - 0.1).abs() < 0.01);
        assert!(learning_rate(50, 100, 10, 1.0) < learning_rate(20, 100, 10, 1.0));
    }
}
