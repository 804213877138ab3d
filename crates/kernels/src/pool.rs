//! How a kernel splits its output rows across threads.
//!
//! A decode step runs a few hundred small kernels, each tens of microseconds long. Rayon parks
//! idle workers and wakes them through the OS, which costs about as much as the work itself at
//! that size. candle's barrier pool (`candle_core::utils::barrier_pool`) keeps its workers
//! spinning for a while after each call, so back-to-back kernels start on warm threads; the
//! calling thread takes a share of the work too. Calls from the pool's own workers run inline,
//! but the calling thread's share is not marked: a kernel must never call [`split`] from inside
//! its closure (that thread would wait on the pool's lock it already holds). A panic inside the
//! closure poisons the pool for the process, so kernels check their inputs before splitting.

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

/// Runs `f` over `0..items` in contiguous ranges, spread across the pool's threads when `work`
/// (multiply-adds in all) is large enough to pay for it.
pub(crate) fn split(items: usize, work: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    if items == 0 {
        return;
    }
    if work < PARALLEL_MIN_WORK || items == 1 {
        f(0..items);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items, f);
    }
}
