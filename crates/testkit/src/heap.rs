//! A global allocator that counts live and peak heap bytes, so a test can bound the memory
//! an operation uses. A test crate installs it with
//! `#[global_allocator] static ALLOC: Counting = Counting::new();`.
//!
//! It is not a leak checker or a profiler: it knows only how many bytes are live, and the
//! highest that number reached since [`Counting::peak_during`] started.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// [`System`], counting the bytes it has handed out and not taken back.
pub struct Counting {
    live: AtomicUsize,
    peak: AtomicUsize,
    measuring: Mutex<()>,
}

impl Counting {
    /// A counter at zero; `const` so it can be a `static` global allocator.
    pub const fn new() -> Self {
        Self {
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            measuring: Mutex::new(()),
        }
    }

    /// Held by a test while it allocates what it measures: the counters are process-wide
    /// and the harness runs tests on parallel threads, so another test's allocations, frees
    /// and resets would corrupt the peak.
    pub fn one_at_a_time(&self) -> MutexGuard<'_, ()> {
        self.measuring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` and returns what it returned with the highest heap use during it, in bytes
    /// above what was live when it started (so what it keeps counts as well as what it
    /// frees again).
    pub fn peak_during<T>(&self, f: impl FnOnce() -> T) -> (T, usize) {
        let before = self.live.load(Ordering::Relaxed);
        self.peak.store(before, Ordering::Relaxed);
        let out = f();
        let peak = self.peak.load(Ordering::Relaxed).saturating_sub(before);
        (out, peak)
    }
}

impl Default for Counting {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are only bookkeeping and never affect the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = self.live.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}
