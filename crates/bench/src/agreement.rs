//! How often the recyclable module guesses what the full model would say: the quantity that
//! bounds what verify can gain (greedy verify emits 1 + agreement tokens per full forward).
use candle_core::Tensor;
use recyclegpt_engine::{argmax, EngineError};
use recyclegpt_model::{ModelError, RecycleGpt, SeqInput};

/// Share of positions `t >= from` in `tokens` where the module's guess for x_{t+1}, made from
/// (h_{t-1}, x_t), equals the full model's own argmax for x_{t+1}; `None` without a module.
pub fn module_agreement(model: &RecycleGpt, tokens: &[u32], from: usize) -> Result<Option<f64>, EngineError> {
    let from = from.max(1);
    if !model.has_recycle() || tokens.len() < from + 2 {
        return Ok(None);
    }
    let positions: Vec<usize> = (from..tokens.len() - 1).collect();
    let mut cache = model.new_cache(tokens.len())?;
    let full = model.forward(&mut [SeqInput { tokens, cache: &mut cache, logits_rows: positions.clone() }])?;
    let Some(mut module_cache) = model.new_recycle_cache(tokens.len())? else {
        return Ok(None);
    };
    // Module row j pairs h_j with x_{j+1}, so position t is row t - 1.
    let pairs: Tensor = full.hidden.narrow(0, 0, tokens.len() - 1).map_err(ModelError::from)?;
    let rows: Vec<usize> = positions.iter().map(|t| t - 1).collect();
    let guesses = model.recycle_forward(
        &pairs,
        &mut [SeqInput { tokens: &tokens[1..], cache: &mut module_cache, logits_rows: rows }],
    )?;
    let agree = guesses.iter().zip(&full.logits).filter(|(g, f)| argmax(g) == argmax(f)).count();
    Ok(Some(agree as f64 / positions.len() as f64))
}
