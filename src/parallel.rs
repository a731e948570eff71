//! How a restore schedules its stores (`--parallel auto|all|none`): all at
//! once, or one after the other. The stores are separate servers, so all at
//! once is always safe; it is faster only when their servers do not share
//! this machine's cores with each other and with itbackup. Measured on this
//! project's 2-core machine with the three servers on it (bench/RESULTS.md,
//! recovery drill, reference set): 154 s all at once against 83 s one after
//! the other.

use serde::Serialize;

use crate::stores::Store;
use crate::target::Target;

/// `--parallel`: how stores are scheduled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Parallel {
    /// Decide from where the servers run and the cores this machine has.
    #[default]
    Auto,
    /// Every store at once.
    All,
    /// One store after the other.
    None,
}

/// The schedule a run follows, and why (the drill and `restore --json` report it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// All at once (true) or one after the other.
    pub parallel: bool,
    pub reason: String,
}

/// Cores one restore on this machine keeps busy: its server's work and
/// itbackup's beside it (decoding, hashing, sending).
const CORES_PER_LOCAL_RESTORE: usize = 2;

/// The plan for `stores` stores of which `local` have their server on this
/// machine, which has `cores` cores.
pub fn decide(choice: Parallel, stores: usize, local: usize, cores: usize) -> Plan {
    let plan = |parallel: bool, reason: String| Plan { parallel, reason };
    match choice {
        Parallel::All => plan(true, "--parallel all".into()),
        Parallel::None => plan(false, "--parallel none".into()),
        Parallel::Auto if stores <= 1 => plan(false, "one store".into()),
        Parallel::Auto if local >= 2 && cores < CORES_PER_LOCAL_RESTORE * local => plan(
            false,
            format!(
                "{local} of the servers run on this machine, whose {cores} core(s) they would share with each other and with itbackup: one after the other is faster"
            ),
        ),
        Parallel::Auto => plan(
            true,
            match local {
                0 | 1 => format!("{} of the {stores} servers run elsewhere: at once, the restore takes as long as the slowest", stores - local),
                _ => format!("{cores} cores are enough for the {local} servers on this machine to restore at once"),
            },
        ),
    }
}

/// The plan for restoring `stores` (whose tools run as `target` says).
pub async fn plan(choice: Parallel, stores: &[Box<dyn Store>], target: &Target) -> Plan {
    let mut local = 0;
    if choice == Parallel::Auto {
        for store in stores {
            // Compose containers run on this host, whatever address they publish.
            if matches!(target, Target::Compose(_))
                || crate::address::on_this_machine(&store.address()).await
            {
                local += 1;
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    decide(choice, stores.len(), local, cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_servers_on_two_cores_restore_one_after_the_other() {
        assert!(!decide(Parallel::Auto, 3, 3, 2).parallel);
        assert!(decide(Parallel::All, 3, 3, 2).parallel, "unless told");
        assert!(!decide(Parallel::None, 3, 0, 64).parallel);
        assert!(decide(Parallel::Auto, 3, 3, 8).parallel, "enough cores");
        assert!(
            decide(Parallel::Auto, 3, 1, 2).parallel,
            "two servers elsewhere"
        );
        assert!(decide(Parallel::Auto, 2, 0, 1).parallel, "all elsewhere");
        assert!(!decide(Parallel::Auto, 1, 1, 64).parallel);
        assert!(decide(Parallel::Auto, 3, 3, 2)
            .reason
            .contains("3 of the servers run on this machine"),);
    }
}
