//! Process-wide settings that make CPU training fast, applied once, first
//! thing in `main`, before any thread starts.

/// Applies [`keep_freed_memory`] and [`quiet_elementwise_pool`].
pub fn configure() {
    keep_freed_memory();
    quiet_elementwise_pool();
}

/// Keeps freed memory in the process. candle allocates a fresh buffer for
/// every op; glibc hands large ones back to the kernel at once and the
/// kernel zeroes every page of the next, which cost a quarter to two
/// fifths of a CPU training step (see PERF-NOTES). Raising glibc's mmap
/// and trim thresholds keeps those buffers for reuse.
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

/// candle runs its elementwise ops on a pool of its own whose threads
/// spin while they wait, beside the rayon threads that run the matmuls
/// and this crate's fused kernels. On a small machine the spinning threads
/// take the cores the matmuls need: a tiny-T5 step took 1.4 s with one
/// candle pool thread and 1.8–3.1 s with two while another build ran
/// (about even on an idle machine). One thread (the caller's) turns the
/// pool off; rayon keeps every core. `CANDLE_NUM_THREADS`, when set, wins.
pub fn quiet_elementwise_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Called before any other thread exists, so nothing reads the
        // environment concurrently.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
