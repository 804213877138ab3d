//! Turning a row of logits into a next-token distribution: logit bias, repetition / frequency /
//! presence penalties, then temperature, top-k, top-p and min-p (temperature 0 is greedy).
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// Report each emitted token's log-probability and this many top alternatives.
    pub logprobs: Option<usize>,
    /// Report each prompt token's log-probability (given the tokens before it) and this many
    /// top alternatives: how text is scored (`echo` with `logprobs`).
    pub prompt_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// What the penalties need to know of a sequence: every token seen (prompt and output) and
/// how often each was generated.
#[derive(Debug, Default, Clone)]
pub struct TokenHistory {
    seen: HashMap<u32, u32>,
    generated: HashMap<u32, u32>,
}

impl TokenHistory {
    pub fn from_prompt(prompt: &[u32]) -> Self {
        let mut h = Self::default();
        for &t in prompt {
            *h.seen.entry(t).or_default() += 1;
        }
        h
    }

    pub fn push_generated(&mut self, token: u32) {
        *self.seen.entry(token).or_default() += 1;
        *self.generated.entry(token).or_default() += 1;
    }
}

/// An emitted token's log-probability under the raw logits that produced it (before bias,
/// penalties and temperature), with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    pub fn from_logits(logits: &[f32], token: u32, top_n: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let logprob = |t: u32| logits.get(t as usize).map_or(f32::NEG_INFINITY, |&l| l - log_sum);
        let mut top: Vec<u32> = Vec::with_capacity(top_n + 1);
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < top_n || top.last().is_some_and(|&t| l > logits[t as usize]) {
                let at = top.partition_point(|&t| logits[t as usize] >= l);
                top.insert(at, i as u32);
                top.truncate(top_n);
            }
        }
        Self { token, logprob: logprob(token), top: top.into_iter().map(|t| (t, logprob(t))).collect() }
    }
}

/// A next-token distribution after all warping.
#[derive(Debug, Clone)]
pub enum TokenDist {
    Greedy(u32),
    Probs(Vec<f32>),
}

impl TokenDist {
    pub fn prob(&self, token: u32) -> f32 {
        match self {
            TokenDist::Greedy(t) => f32::from(u8::from(*t == token)),
            TokenDist::Probs(p) => p.get(token as usize).copied().unwrap_or(0.0),
        }
    }

    pub fn sample(&self, rng: &mut StdRng) -> u32 {
        match self {
            TokenDist::Greedy(t) => *t,
            TokenDist::Probs(p) => sample_weights(p, rng),
        }
    }
}

/// Index drawn in proportion to non-negative `weights` (which need not sum to one).
pub fn sample_weights(weights: &[f32], rng: &mut StdRng) -> u32 {
    let total: f32 = weights.iter().sum();
    let mut target = rng.random::<f32>() * total;
    let mut last_positive = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            if target < w {
                return i as u32;
            }
            target -= w;
            last_positive = i;
        }
    }
    // Rounding can leave `target` a hair above the total: take the last candidate.
    last_positive as u32
}

/// The index of the largest value (the first, on ties): the greedy choice.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Bias and penalties, in place.
fn adjust(logits: &mut [f32], params: &SamplingParams, history: &TokenHistory) {
    for &(token, bias) in &params.logit_bias {
        if let Some(l) = logits.get_mut(token as usize) {
            *l += bias;
        }
    }
    if params.repetition_penalty != 1.0 {
        for &token in history.seen.keys() {
            if let Some(l) = logits.get_mut(token as usize) {
                *l = if *l > 0.0 { *l / params.repetition_penalty } else { *l * params.repetition_penalty };
            }
        }
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        for (&token, &count) in &history.generated {
            if let Some(l) = logits.get_mut(token as usize) {
                *l -= params.frequency_penalty * count as f32 + params.presence_penalty;
            }
        }
    }
}

/// For greedy decoding: the token after bias and penalties, and its softmax probability (at
/// temperature 1) among the adjusted logits, which says how sure a draft is.
pub fn greedy_with_confidence(mut logits: Vec<f32>, params: &SamplingParams, history: &TokenHistory) -> (u32, f64) {
    adjust(&mut logits, params, history);
    let token = argmax(&logits);
    let max = logits[token as usize];
    if !max.is_finite() {
        return (token, 0.0);
    }
    // Rows of a draft vocabulary are mostly -inf: they add nothing, and skipping them keeps
    // this to the K draft rows' exponentials.
    let total: f32 = logits.iter().filter(|l| l.is_finite()).map(|&l| (l - max).exp()).sum();
    (token, f64::from(1.0 / total))
}

/// The distribution to sample the next token from.
pub fn distribution(mut logits: Vec<f32>, params: &SamplingParams, history: &TokenHistory) -> TokenDist {
    adjust(&mut logits, params, history);
    if params.is_greedy() {
        return TokenDist::Greedy(argmax(&logits));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<f32> = logits.iter().map(|&l| ((l - max) / params.temperature).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    let cut_k = params.top_k > 0 && params.top_k < probs.len();
    let cut_p = params.top_p < 1.0;
    if cut_k || cut_p {
        let mut order: Vec<u32> = (0..probs.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
        let mut keep = if cut_k { params.top_k } else { order.len() };
        if cut_p {
            let mut cumulative = 0.0;
            for (i, &t) in order.iter().take(keep).enumerate() {
                cumulative += probs[t as usize];
                if cumulative >= params.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        for &t in &order[keep..] {
            probs[t as usize] = 0.0;
        }
    }
    if params.min_p > 0.0 {
        let threshold = params.min_p * probs.iter().copied().fold(0.0, f32::max);
        probs.iter_mut().filter(|p| **p < threshold).for_each(|p| *p = 0.0);
    }
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    TokenDist::Probs(probs)
}

/// Speculative-sampling acceptance of a draft token `d` drawn from `q` against the target `p`:
/// keeps `d` with probability min(1, p(d)/q(d)), otherwise draws from normalise(max(0, p − q)).
/// The result is distributed exactly as a draw from `p`.
pub fn verify_draft(draft: u32, q: &TokenDist, p: &TokenDist, rng: &mut StdRng) -> (u32, bool) {
    match p {
        TokenDist::Greedy(t) => (*t, *t == draft),
        TokenDist::Probs(pp) => {
            let (pd, qd) = (p.prob(draft), q.prob(draft));
            if qd > 0.0 && rng.random::<f32>() < (pd / qd).min(1.0) {
                return (draft, true);
            }
            let residual: Vec<f32> = pp.iter().enumerate().map(|(i, &pi)| (pi - q.prob(i as u32)).max(0.0)).collect();
            if residual.iter().sum::<f32>() > 0.0 {
                (sample_weights(&residual, rng), false)
            } else {
                (p.sample(rng), false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let d = distribution(vec![0.1, 3.0, 3.0, -1.0], &SamplingParams::greedy(), &TokenHistory::default());
        assert!(matches!(d, TokenDist::Greedy(1)));
    }

    #[test]
    fn top_k_and_top_p_and_min_p_cut_the_tail() {
        let logits = vec![4.0, 3.0, 2.0, 1.0, 0.0];
        let history = TokenHistory::default();
        let top_k = SamplingParams { top_k: 2, ..Default::default() };
        let TokenDist::Probs(p) = distribution(logits.clone(), &top_k, &history) else { panic!("expected probs") };
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let top_p = SamplingParams { top_p: 0.5, ..Default::default() };
        let TokenDist::Probs(p) = distribution(logits.clone(), &top_p, &history) else { panic!("expected probs") };
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 1);
        let min_p = SamplingParams { min_p: 0.3, ..Default::default() };
        let TokenDist::Probs(p) = distribution(logits, &min_p, &history) else { panic!("expected probs") };
        assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2);
    }

    #[test]
    fn penalties_and_bias_move_the_argmax() {
        let mut history = TokenHistory::from_prompt(&[0]);
        history.push_generated(0);
        let logits = vec![2.0, 1.5, 0.0];
        let rep = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() };
        assert!(matches!(distribution(logits.clone(), &rep, &history), TokenDist::Greedy(1)));
        let freq = SamplingParams { frequency_penalty: 1.0, ..SamplingParams::greedy() };
        assert!(matches!(distribution(logits.clone(), &freq, &history), TokenDist::Greedy(1)));
        let bias = SamplingParams { logit_bias: vec![(2, 5.0)], ..SamplingParams::greedy() };
        assert!(matches!(distribution(logits, &bias, &TokenHistory::default()), TokenDist::Greedy(2)));
    }

    #[test]
    fn logprobs_are_normalised_and_ranked() {
        let lp = TokenLogprob::from_logits(&[1.0, 3.0, 2.0, 0.5], 2, 2);
        let total: f32 = [1.0f32, 3.0, 2.0, 0.5].iter().map(|l| (l - 3.0f32).exp()).sum();
        assert!((lp.logprob - (2.0 - 3.0 - total.ln())).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(TokenLogprob::from_logits(&[0.0; 5], 0, 0).top.is_empty());
    }

    #[test]
    fn verification_reproduces_the_target_distribution() {
        let p = TokenDist::Probs(vec![0.5, 0.3, 0.2]);
        let q = TokenDist::Probs(vec![0.1, 0.1, 0.8]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0usize; 3];
        let n = 200_000;
        for _ in 0..n {
            let draft = q.sample(&mut rng);
            let (token, _) = verify_draft(draft, &q, &p, &mut rng);
            counts[token as usize] += 1;
        }
        for (i, want) in [0.5, 0.3, 0.2].iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            assert!((got - want).abs() < 0.01, "token {i}: {got} vs {want}");
        }
    }

    /// A draft read from the text is one token for certain (q is a point mass): it is kept
    /// with probability p(d), and a rejection draws from p without d, which again gives p.
    #[test]
    fn verification_of_a_certain_draft_reproduces_the_target_distribution() {
        let want = [0.5f64, 0.3, 0.2];
        let p = TokenDist::Probs(want.iter().map(|&w| w as f32).collect());
        let mut rng = StdRng::seed_from_u64(11);
        let n = 200_000;
        for draft in 0..3u32 {
            let q = TokenDist::Greedy(draft);
            let mut counts = [0usize; 3];
            let mut kept = 0;
            for _ in 0..n {
                let (token, accepted) = verify_draft(draft, &q, &p, &mut rng);
                counts[token as usize] += 1;
                kept += usize::from(accepted);
            }
            let kept = kept as f64 / n as f64;
            assert!((kept - want[draft as usize]).abs() < 0.01, "draft {draft} kept {kept}");
            for (i, &want) in want.iter().enumerate() {
                let got = counts[i] as f64 / n as f64;
                assert!((got - want).abs() < 0.01, "draft {draft}, token {i}: {got} vs {want}");
            }
        }
    }
}
