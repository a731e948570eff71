//! Peak resident memory, read from the kernel (`getrusage`), so that the
//! drill reports what its own run cost: itbackup's memory must stay bounded
//! at any scale, while the stores' tools (pg_restore, neo4j-admin's JVM) are
//! theirs and reported apart.

use serde::Serialize;

/// itbackup's own peak RSS as it stood at the end of each phase (a peak only
/// grows, so the first phase whose figure jumps is the one that raised it),
/// and the largest peak of any tool it ran and waited for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeakMemory {
    pub populated_mb: u64,
    pub backed_up_mb: u64,
    pub restored_mb: u64,
    pub verified_mb: u64,
    /// The largest child process (and its own children): the stores' tools.
    pub tools_mb: u64,
}

/// Whose peak: this process, or the largest of its finished children.
#[derive(Debug, Clone, Copy)]
pub enum Whose {
    Itbackup,
    Tools,
}

/// Peak resident set size in MiB (0 when the kernel does not say).
pub fn peak_mb(whose: Whose) -> u64 {
    let who = match whose {
        Whose::Itbackup => libc::RUSAGE_SELF,
        Whose::Tools => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: getrusage writes one plain struct that we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0;
    }
    // Linux reports kilobytes.
    u64::try_from(usage.ru_maxrss).unwrap_or(0) / 1024
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
        let peak = peak_mb(Whose::Itbackup);
        assert!((64..1 << 20).contains(&peak), "{peak} MiB");
    }
}
