//! How the C allocator that libtorch's CPU tensors come from hands memory back.
//!
//! By default glibc serves every block above its mmap threshold (at most 32 MB) with a fresh
//! `mmap` and unmaps it on free, and trims the heap's top as soon as it is free: a UNet forward
//! then faults in (and the kernel zeroes) every page of its large temporaries again — oneDNN's
//! reordered copy of each big convolution weight, the VAE decoder's activations. Measured on
//! an SD 2.1-shaped model at 256 px (2 threads, fp32, CPU): about 480,000 page faults (1.9 GB)
//! per guided UNet forward and 440,000 per VAE decode, against 12,000 and 49,000 with
//! [`keep_freed_memory`]'s two settings (given through `GLIBC_TUNABLES` in that measurement;
//! diffusers in the same libtorch: 144,000 and 434,000).
//! See docs/benchmarks.md#generation-speed.

/// Bytes the heap's free top may hold before glibc gives them back to the system: freed
/// tensors are reused by the next step instead of being faulted in again.
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// Makes glibc serve large blocks from its heap (no per-block `mmap`) and keep up to
/// [`TRIM_THRESHOLD`] of freed memory for reuse. Call it first thing in `main`, before any
/// large allocation. Memory freed after a peak is returned only past the threshold, so the peak
/// RSS grows (SD 2.1-shaped, 256 px: 8298 MB against 7902 MB without it). Left alone when the user sets `GLIBC_TUNABLES` with a malloc setting
/// (theirs win), and off glibc.
pub fn keep_freed_memory() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}
