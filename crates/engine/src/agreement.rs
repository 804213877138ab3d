//! How often the recyclable module guesses what the full model would say: the quantity that
//! bounds what verify can gain (greedy verify emits about 1 + agreement tokens per full forward).
use crate::sampling::argmax;
use crate::EngineError;
use candle_core::Tensor;
use recyclegpt_model::{RecycleGpt, SeqInput};

/// (agreeing, compared) over positions `t` in `from..n-1` of `tokens` (`n` of them, `from >= 1`):
/// the module's guess for x_{t+1}, made from (h_{t-1}, x_t), against the full model's argmax.
/// `hidden` is the full model's `[n, d]` output along `tokens` and `full_logits` its logits at
/// positions `from..n-1`, in order. `None` without a module.
pub fn module_agreement(
    model: &RecycleGpt,
    tokens: &[u32],
    hidden: &Tensor,
    full_logits: &[Vec<f32>],
    from: usize,
) -> Result<Option<(usize, usize)>, EngineError> {
    if from == 0 {
        return Err(EngineError::Invalid("agreement starts at position 1: position 0 has no h_{t-1}".into()));
    }
    let n = tokens.len();
    let Some(mut module_cache) = model.new_recycle_cache(n)? else {
        return Ok(None);
    };
    if n < from + 2 {
        return Ok(Some((0, 0)));
    }
    // Module row j pairs h_j with x_{j+1}, so position t is row t - 1.
    let guesses = model.recycle_forward(
        &hidden.narrow(0, 0, n - 1)?,
        &mut [SeqInput { tokens: &tokens[1..], cache: &mut module_cache, logits_rows: (from - 1..n - 2).collect() }],
    )?;
    let same = guesses.iter().zip(full_logits).filter(|(g, f)| argmax(g) == argmax(f)).count();
    Ok(Some((same, guesses.len())))
}
