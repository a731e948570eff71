//! itbackup's own memory, bounded at any scale: glibc's allocator is told
//! at start to keep fewer arenas and to give large buffers their own
//! mappings, which go back to the system when freed.
//!
//! By default glibc gives threads up to 8 arenas per core and raises its
//! mmap threshold to the largest buffer freed (up to 32 MiB), so the
//! megabyte-sized chunks and batches of a restore end up scattered over
//! several arenas, whose freed pages stay resident. Measured on a 300,000-
//! node Neo4j restore (heaptrack: 41 MiB of live heap at the peak): peak RSS
//! 95 MiB by default, 71 MiB with two arenas and a fixed 512 KiB threshold,
//! at the same speed (bench/RESULTS.md, recovery drill).

/// Arenas: one per tokio worker on this project's 2-core reference machine;
/// more cost memory, fewer cost lock contention between threads.
const ARENAS: i32 = 2;
/// Buffers from this size up get a mapping of their own.
const MMAP_THRESHOLD: i32 = 512 * 1024;

/// Tune the allocator, before any thread starts. An operator's own malloc
/// tuning (`GLIBC_TUNABLES` with malloc settings) is left alone.
pub fn bound_allocator() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc")) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
