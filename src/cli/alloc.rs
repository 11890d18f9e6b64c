//! Peak heap bytes, for `xent bench --linear`'s scratch column: a counting wrapper around the
//! system allocator that the `xent` binary installs (`src/bin/xent.rs`). Elsewhere (a library
//! user's program, the tests) nothing is counted and [`Peak::measure`] returns `None`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting live and peak bytes.
#[derive(Debug, Default)]
pub struct PeakAlloc;

impl PeakAlloc {
    fn grew(size: usize) {
        INSTALLED.store(true, Ordering::Relaxed);
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to `System` with the caller's layout; the counters only observe.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::grew(new_size);
        }
        p
    }
}

/// The heap's growth over a stretch of work: [`Peak::start`], then [`Peak::measure`].
#[derive(Debug, Clone, Copy)]
pub struct Peak {
    base: usize,
}

impl Peak {
    /// Resets the peak to the bytes live now.
    pub fn start() -> Peak {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        Peak { base }
    }
    /// The most bytes live at once since `start`, beyond those live then; `None` when the
    /// counting allocator is not installed.
    pub fn measure(self) -> Option<usize> {
        INSTALLED
            .load(Ordering::Relaxed)
            .then(|| PEAK.load(Ordering::Relaxed).saturating_sub(self.base))
    }
}
