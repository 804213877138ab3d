//! Which waiting sequences start now: a pure function of the budget and the reservations, so
//! that the policy can be tested without a model.

/// The limits the running batch must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Sequences stepped together.
    pub max_running: usize,
    /// KV-cache tokens that running sequences may reserve together.
    pub kv_tokens: usize,
}

/// How many of `waiting` (in arrival order) start now, given what `running` reserves.
/// Each entry is a sequence's reservation: its prompt plus `max_tokens`, capped by the context,
/// because a sequence may grow to that and is never preempted.
///
/// First come, first served: a sequence that does not fit holds back those behind it, so a long
/// prompt is never starved by a stream of short ones. A sequence larger than the whole budget
/// runs alone rather than never.
pub fn admit(budget: Budget, running: &[usize], waiting: &[usize]) -> usize {
    let slots = budget.max_running.max(1).saturating_sub(running.len());
    let mut reserved: usize = running.iter().sum();
    let mut admitted = 0;
    for &need in waiting.iter().take(slots) {
        let alone = running.is_empty() && admitted == 0;
        if !alone && reserved.saturating_add(need) > budget.kv_tokens {
            break;
        }
        reserved = reserved.saturating_add(need);
        admitted += 1;
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget { max_running: 3, kv_tokens: 100 };

    #[test]
    fn admits_in_order_while_the_budget_allows() {
        assert_eq!(admit(BUDGET, &[], &[30, 30, 30]), 3);
        assert_eq!(admit(BUDGET, &[], &[30, 30, 50, 10]), 2);
        assert_eq!(admit(BUDGET, &[60], &[40, 1]), 1);
    }

    #[test]
    fn never_more_than_max_running() {
        assert_eq!(admit(BUDGET, &[1, 1], &[1, 1, 1]), 1);
        assert_eq!(admit(BUDGET, &[1, 1, 1], &[1]), 0);
    }

    #[test]
    fn a_sequence_that_does_not_fit_holds_back_later_ones() {
        // 70 does not fit beside 40; the 5 behind it waits too (no overtaking).
        assert_eq!(admit(BUDGET, &[40], &[70, 5]), 0);
    }

    #[test]
    fn an_oversized_sequence_runs_alone() {
        assert_eq!(admit(BUDGET, &[], &[500, 1]), 1);
        assert_eq!(admit(BUDGET, &[1], &[500]), 0);
    }

    #[test]
    fn nothing_waiting_admits_nothing() {
        assert_eq!(admit(BUDGET, &[10], &[]), 0);
    }

    #[test]
    fn a_zero_max_running_still_runs_one_at_a_time() {
        let budget = Budget { max_running: 0, kv_tokens: 100 };
        assert_eq!(admit(budget, &[], &[10, 10]), 1);
    }
}
