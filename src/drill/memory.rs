//! itbackup's own peak resident memory, read from the kernel, so that the
//! drill reports what its run cost: itbackup's memory must stay bounded at
//! any scale. The stores' tools (pg_restore, neo4j-admin's JVM) are theirs;
//! a benchmark measures the whole process tree around the drill.
//!
//! `/proc/self/status`'s `VmHWM`, not `getrusage`: Linux carries the peak
//! of the image a process replaced by `exec` into `ru_maxrss`, so a drill
//! started by a large process (the test suite: 150 MB) reported that
//! process's peak as its own, and a tool started by itbackup would report
//! itbackup's.

use serde::Serialize;

/// itbackup's own peak RSS as it stood at the end of each phase (a peak only
/// grows, so the first phase whose figure jumps is the one that raised it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeakMemory {
    pub populated_mb: u64,
    pub backed_up_mb: u64,
    pub restored_mb: u64,
    pub verified_mb: u64,
}

/// This process's peak resident set size in MiB (0 when the kernel does not say).
pub fn peak_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| vm_hwm_kib(&status))
        .map_or(0, |kib| kib / 1024)
}

/// `VmHWM:   123456 kB` → 123456.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_counts_memory_touched_in_mib() {
        // 64 MiB written, so every page is resident. (Other tests share the
        // process, so only a lower bound holds.)
        let block = vec![1u8; 64 << 20];
        assert!(std::hint::black_box(&block).iter().all(|b| *b == 1));
        let peak = peak_mb();
        assert!((64..1 << 20).contains(&peak), "{peak} MiB");
        assert_eq!(
            vm_hwm_kib("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS: 1 kB"),
            Some(2048)
        );
    }
}
