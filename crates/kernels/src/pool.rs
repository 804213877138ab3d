//! How a kernel splits its output rows across threads.
//!
//! A decode step runs a few hundred small kernels, each tens of microseconds long. Rayon parks
//! idle workers and wakes them through the OS, which costs about as much as the work itself at
//! that size. candle's barrier pool (`candle_core::utils::barrier_pool`) keeps its workers
//! spinning for a while after each call, so back-to-back kernels start on warm threads; the
//! calling thread takes a share of the work too. Calls from the pool's own workers (named
//! `candle-bp-N`) run inline, but the calling thread's share is not marked: a kernel must never
//! call [`split`] from inside its closure (that thread would wait on the pool's lock it already
//! holds). A panic inside the closure poisons the pool for the process, so kernels check their
//! inputs before splitting.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A raw output pointer shared by threads that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every kernel that shares an `OutPtr` hands each thread its own range of weight rows,
// and a thread writes only the output elements of its rows, so no element is written by two
// threads or read while another writes it.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: the threads sharing the pointer write disjoint elements.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `at` elements on (a method, so that a closure captures the whole `OutPtr`,
    /// which is `Sync`, not its raw pointer).
    ///
    /// # Safety
    /// As [`pointer::add`]: the result must stay within the output.
    pub(crate) unsafe fn add(self, at: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(at) }
    }
}

/// Below this many multiply-adds a call runs on the calling thread alone: waking a worker and
/// waiting for it would cost more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// The share of a call's items that each thread takes as one contiguous range before the
/// rest is handed out from a shared cursor. candle's `execute_chunked` hands out everything
/// from the cursor, 8 ranges per thread: on 2 cores the cursor's cache line went back and forth
/// some 2,400 times a forward, and a SmolLM2 forward took 4-16% longer than with this split
/// (at 1-16 tokens); the cursor still evens out a thread that starts late or a range that costs
/// more (attention's last tile, a stacked matrix's slower part).
const OWNED_SHARE: (usize, usize) = (3, 4);

/// Ranges per thread of the cursor's rest.
const CURSOR_RANGES: usize = 4;

/// Runs `f` over `0..items` in contiguous ranges, spread across the pool's threads when `work`
/// (multiply-adds in all) is large enough to pay for it.
pub(crate) fn split(items: usize, work: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    if items == 0 {
        return;
    }
    // A pool worker waiting on the pool would never return (see above).
    let on_worker = || std::thread::current().name().is_some_and(|name| name.starts_with("candle-bp-"));
    if work < PARALLEL_MIN_WORK || items == 1 || on_worker() {
        f(0..items);
        return;
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let Shares { owned, chunk } = Shares::of(items, threads);
    let cursor = AtomicUsize::new(owned * threads);
    pool.execute(|thread| {
        if owned > 0 {
            f(thread * owned..(thread + 1) * owned);
        }
        loop {
            let start = cursor.fetch_add(chunk, Ordering::Relaxed);
            if start >= items {
                break;
            }
            f(start..items.min(start + chunk));
        }
    });
}

/// How `split` deals a call's items out to `threads` threads: `owned` to each as one range (thread
/// `t` takes `t * owned..(t + 1) * owned`), then the rest from a cursor, `chunk` at a time.
#[derive(Debug, PartialEq, Eq)]
struct Shares {
    owned: usize,
    chunk: usize,
}

impl Shares {
    fn of(items: usize, threads: usize) -> Shares {
        let owned = items * OWNED_SHARE.0 / OWNED_SHARE.1 / threads;
        let chunk = (items - owned * threads).div_ceil(threads * CURSOR_RANGES).max(1);
        Shares { owned, chunk }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item of any call goes to exactly one range, for any number of threads.
    #[test]
    fn shares_cover_every_item_once() {
        for threads in 1..=9 {
            for items in 1..=200 {
                let Shares { owned, chunk } = Shares::of(items, threads);
                let mut seen = vec![0u8; items];
                let cursor_ranges =
                    (owned * threads..items).step_by(chunk).map(|start| start..items.min(start + chunk));
                for range in (0..threads).map(|t| t * owned..(t + 1) * owned).chain(cursor_ranges) {
                    range.for_each(|item| seen[item] += 1);
                }
                assert!(seen.iter().all(|&n| n == 1), "{items} items on {threads} threads: {seen:?}");
                assert!(owned * threads <= items * OWNED_SHARE.0 / OWNED_SHARE.1);
            }
        }
    }

    /// Through the real pool: each item once, and a call made on one of the pool's own workers
    /// runs inline instead of waiting on the pool forever (it would hang here if candle renamed
    /// its workers).
    #[test]
    fn split_runs_every_item_once_and_inline_on_a_worker() {
        let counts: Vec<AtomicUsize> = (0..300).map(|_| AtomicUsize::new(0)).collect();
        split(counts.len(), usize::MAX, |range| {
            range.for_each(|item| {
                counts[item].fetch_add(1, Ordering::Relaxed);
            })
        });
        assert!(counts.iter().all(|n| n.load(Ordering::Relaxed) == 1));
        let pool = candle_core::utils::barrier_pool();
        let nested = AtomicUsize::new(0);
        pool.execute(|thread| {
            if thread < pool.n_workers() {
                split(64, usize::MAX, |range| {
                    nested.fetch_add(range.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(nested.load(Ordering::Relaxed), 64 * pool.n_workers());
    }
}
