//! kill -9 at many points of every store's backup and restore, each followed
//! by a rerun: the rerun succeeds, the data equals the original, and nothing
//! of the killed runs is left behind — no temporary repository, index,
//! database or scratch directory in the stores, nothing under the backup root
//! but complete backups once `prune --grace 1s` has swept the debris.
//!
//! Points are spread over the time an uninterrupted run of the same command
//! takes; `IT_FAULT_POINTS` sets how many (default 3, to keep `make test`
//! short; `IT_FAULT_POINTS=10 cargo test --test suite fault_injection::` is the full run). Each kill hits the
//! whole process group, so pg_dump, psql and pg_restore die with itbackup.

use crate::common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fixtures::{Neo4jGraph, OsIndex, PgDatabase};
use common::*;

fn points() -> u32 {
    std::env::var("IT_FAULT_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// How long a run takes once warm: the shortest run seen so far. The first
/// run on a cold server, or while the machine is busy, can take several
/// times as long, and kill points spread over it then fall after the later,
/// quicker runs have ended (a 10-point Neo4j logical run interrupted 2
/// backups of 10). One uninterrupted run (it must succeed) starts the
/// measure; every successful rerun after a kill, a whole run of the same
/// command, shortens it for the next points. (Two uninterrupted runs, the
/// shorter one taken, cost a Neo4j dump test two more stops and starts of
/// the server.)
struct RunTime(Duration);

impl RunTime {
    fn of_one_run(args: &[&str]) -> RunTime {
        let started = Instant::now();
        ok(args, &[]);
        RunTime(started.elapsed())
    }

    /// Run `args` (a rerun after a kill), counting its time when it succeeded.
    fn rerun(&mut self, args: &[&str]) -> std::process::Output {
        let started = Instant::now();
        let out = itbackup(args, &[]);
        if out.status.success() {
            self.0 = self.0.min(started.elapsed());
        }
        out
    }

    /// Point `i` of `n`, spread over the first 85 % of the run: a rerun of
    /// a warm server is quicker than the timed run.
    fn point(&self, i: u32, n: u32) -> Duration {
        self.0.mul_f64(0.85 * f64::from(i) / f64::from(n + 1))
    }
}

/// Everything under the root but complete backups and the lock, after the
/// debris of killed runs was swept.
fn debris(root: &Path) -> Vec<String> {
    // The last killed run may have touched its debris less than the grace
    // period before (a quick rerun): let that second pass.
    std::thread::sleep(Duration::from_millis(1500));
    ok(
        &[
            "--root",
            root.to_str().unwrap(),
            "prune",
            "--grace",
            "1s",
            "--keep-last",
            "1000",
        ],
        &[],
    );
    fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name != ".itbackup.lock" && !e.path().join("backup-manifest.json").is_file()
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

#[derive(Default)]
struct Tally {
    tried: u32,
    killed: u32,
    held: u32,
}

/// kill -9 a backup and a restore of `subject` by `method` at `points()`
/// points each, rerun after every kill, and check data and leftovers.
fn torture(subject: &dyn StoreFixture, method: &str) -> (Tally, Tally) {
    // Only the server under test: the others' tests run meanwhile.
    let _guard = exclusive(&[subject.server()]);
    let method = subject.method(method);
    subject.populate();
    let original = subject.fingerprint();
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap().to_string();
    let backup_cmd = Cmd::backup(root.path())
        .services(subject.service())
        .method(method);
    let backup = backup_cmd.args();
    let mut full = RunTime::of_one_run(&backup);
    let n = points();

    let mut backups = Tally::default();
    for i in 1..=n {
        // A backup needs a new second for its default name.
        std::thread::sleep(Duration::from_millis(1100));
        let at = full.point(i, n);
        backups.tried += 1;
        backups.killed += u32::from(kill_group_after(&backup, at));
        std::thread::sleep(Duration::from_millis(1100));
        let rerun = full.rerun(&backup);
        let verified = itbackup(&["--root", &root_arg, "verify"], &[]);
        if rerun.status.success() && verified.status.success() && subject.leftovers().is_empty() {
            backups.held += 1;
        } else {
            eprintln!(
                "backup killed at {at:?}: rerun {}\nverify {}\nleftovers {:?}",
                text(&rerun),
                text(&verified),
                subject.leftovers()
            );
        }
    }

    let restore_cmd = Cmd::restore(root.path()).services(subject.service()).yes();
    let restore = restore_cmd.args();
    let mut full = RunTime::of_one_run(&restore);
    let mut restores = Tally::default();
    for i in 1..=n {
        let at = full.point(i, n);
        restores.tried += 1;
        restores.killed += u32::from(kill_group_after(&restore, at));
        let rerun = full.rerun(&restore);
        let now = subject.fingerprint();
        let left = subject.leftovers();
        if rerun.status.success() && now == original && left.is_empty() {
            restores.held += 1;
        } else {
            eprintln!(
                "restore killed at {at:?}: rerun {}\ndata {now} (expected {original}), leftovers {left:?}",
                text(&rerun)
            );
        }
    }
    let left = debris(root.path());
    assert!(left.is_empty(), "debris under the root: {left:?}");
    subject.cleanup();
    eprintln!(
        "fault injection {} {}: backup tried {} killed {} held {}; restore tried {} killed {} held {}",
        subject.service(),
        method.value,
        backups.tried,
        backups.killed,
        backups.held,
        restores.tried,
        restores.killed,
        restores.held
    );
    (backups, restores)
}

fn every_point_held(subject: &dyn StoreFixture, method: &str) {
    let (backups, restores) = torture(subject, method);
    assert_eq!(backups.held, backups.tried, "backups that did not hold");
    assert_eq!(restores.held, restores.tried, "restores that did not hold");
    assert!(
        backups.killed + restores.killed >= backups.tried,
        "too few runs were really interrupted ({} + {} of {}): the points are too late",
        backups.killed,
        restores.killed,
        backups.tried + restores.tried
    );
}

/// The fixtures, large enough for a kill to land in the middle of a run.
const PG: PgDatabase = PgDatabase {
    database: "itb_faults",
    rows: 200_000,
};
const OS: OsIndex = OsIndex {
    index: "itb-faults",
    docs: 20_000,
};
const NEO: Neo4jGraph = Neo4jGraph {
    label: "FaultNode",
    nodes: 20_000,
};

#[test]
fn postgres_custom_survives_kill_9_anywhere() {
    every_point_held(&PG, "custom");
}

#[test]
fn postgres_plain_survives_kill_9_anywhere() {
    every_point_held(&PG, "plain");
}

#[test]
fn opensearch_logical_survives_kill_9_anywhere() {
    every_point_held(&OS, "logical");
}

#[test]
fn opensearch_snapshot_survives_kill_9_anywhere() {
    every_point_held(&OS, "snapshot");
}

#[test]
fn neo4j_logical_survives_kill_9_anywhere() {
    every_point_held(&NEO, "logical");
}

#[test]
fn neo4j_dump_survives_kill_9_anywhere() {
    every_point_held(&NEO, "dump");
}
