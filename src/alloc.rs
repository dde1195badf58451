//! Keeps freed memory in the process. candle allocates a fresh buffer for
//! every op; glibc hands large ones back to the kernel at once and the
//! kernel zeroes every page of the next, which cost a quarter to two
//! fifths of a CPU training step (see PERF-NOTES). Raising glibc's mmap
//! and trim thresholds keeps those buffers for reuse.

/// Sets the allocator's thresholds; call once, first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        // SAFETY: mallopt only adjusts glibc's malloc parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    }
}
