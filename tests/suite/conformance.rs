//! The conformance suite: the same checks for every store and every backup
//! method, through each store's [`StoreFixture`] (common/fixtures.rs):
//!
//! 1. round trip: populate, back up, change the data, restore, and the
//!    fingerprint is the original's again;
//! 2. a damaged artifact (bytes flipped in its middle, nothing else touched)
//!    is refused with exit code 4 (damaged backup) before anything changes;
//!    `verify` needs no server: with the store's address pointing at a
//!    closed port it passes on the backup and refuses the damaged copy;
//! 3. a restore killed (its whole process group) half-way, then run again,
//!    restores exactly and leaves nothing of the killed run in the store;
//! 4. a backup against a closed port fails with exit code 7 (unreachable),
//!    one with a wrong password with exit code 8 (authentication), and
//!    neither leaves a backup.
//!
//! Each store and method is a module of its own (`conformance::neo4j_dump::`)
//! with one test for checks 1–3 (they share a backup) and one for check 4;
//! every message names the store and method. The data sets are small: the
//! per-store modules check details, fault injection checks many kill points.
//! `every_store_and_method_is_in_the_suite` fails when a store or method of
//! itbackup has no line in [`conformance!`] below.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::fixtures::{Neo4jGraph, OsIndex, PgDatabase};
use common::*;

const PG: PgDatabase = PgDatabase {
    database: "itb_conformance",
    rows: 300,
};
const OS: OsIndex = OsIndex {
    index: "itb-conformance",
    docs: 300,
};
const NEO: Neo4jGraph = Neo4jGraph {
    label: "ConformanceNode",
    nodes: 300,
};

/// Every store's fixture: the list a new store joins.
fn fixtures() -> [&'static dyn StoreFixture; 3] {
    [&PG, &OS, &NEO]
}

/// One test module per store and method: `name: FIXTURE, "method";`.
macro_rules! conformance {
    ($($name:ident: $fixture:expr, $method:literal;)*) => {
        /// The modules below, as `<service>_<method>`.
        const COVERED: &[&str] = &[$(stringify!($name)),*];
        $(
            mod $name {
                use super::*;

                #[test]
                fn round_trip_damaged_artifact_and_interrupted_restore() {
                    restore_checks(&$fixture, $method);
                }

                #[test]
                fn unreachable_server_and_wrong_password_fail_with_their_exit_codes() {
                    refusal_checks(&$fixture, $method);
                }
            }
        )*
    };
}

conformance! {
    postgres_custom: PG, "custom";
    postgres_plain: PG, "plain";
    postgres_physical: PG, "physical";
    opensearch_repository: OS, "repository";
    opensearch_snapshot: OS, "snapshot";
    opensearch_logical: OS, "logical";
    neo4j_logical: NEO, "logical";
    neo4j_dump: NEO, "dump";
}

/// "postgres custom": what every message starts with.
fn label(store: &dyn StoreFixture, method: Method) -> String {
    format!("{} {}", store.service(), method.value)
}

/// Checks 1–3 for `store` backed up by `method`.
fn restore_checks(store: &dyn StoreFixture, method: &str) {
    let method = store.method(method);
    let name = label(store, method);
    let _guard = exclusive(&[store.server()]);
    let mut clock = Clock::new(&name);
    store.populate();
    let original = store.fingerprint();
    clock.lap("populate");
    let root = temp_root();
    let out = Cmd::backup(root.path())
        .services(store.service())
        .method(method)
        .run(&[]);
    assert!(out.status.success(), "[{name}] backup\n{}", text(&out));
    let dir = only_backup(root.path());
    clock.lap("backup");
    // verify reads the artifacts alone: with the server out of reach it
    // passes on this backup and refuses the damaged copy below.
    let nowhere = store.address_env(closed_port());
    let verify_offline = |dir: &Path| {
        itbackup(
            &["verify", "--path", dir.to_str().unwrap()],
            &env_refs(&nowhere),
        )
    };
    // (A method whose backup lives in the server, the repository method's
    // snapshot, is verified with the server there.)
    let out = if method.verify_needs_server {
        itbackup(&["verify", "--path", dir.to_str().unwrap()], &[])
    } else {
        verify_offline(&dir)
    };
    assert!(
        out.status.success(),
        "[{name}] verify with the server out of reach\n{}",
        text(&out)
    );
    let restore = Cmd::restore_path(&dir).services(store.service()).yes();

    // 1. Round trip.
    store.change();
    let changed = store.fingerprint();
    assert_ne!(
        changed, original,
        "[{name}] the fixture's change() left its fingerprint as it was: the checks could not fail"
    );
    let started = Instant::now();
    let out = restore.run(&[]);
    let restore_took = started.elapsed();
    assert!(out.status.success(), "[{name}] restore\n{}", text(&out));
    assert_eq!(
        store.fingerprint(),
        original,
        "[{name}] round trip: the restored data differs from the data backed up"
    );
    clock.lap("1. round trip");

    // 2. A damaged artifact, in a copy of the backup.
    store.change();
    let changed = store.fingerprint();
    let copies = temp_root();
    let damaged = copy_dir(&dir, &copies.path().join(dir.file_name().unwrap()));
    let artifact = flip_bytes_in_the_middle(&damaged, store.service());
    let out = Cmd::restore_path(&damaged)
        .services(store.service())
        .yes()
        .run(&[]);
    assert_eq!(
        out.status.code(),
        Some(exit::DAMAGED_BACKUP),
        "[{name}] a restore of a damaged artifact ({}) must be refused as a damaged backup\n{}",
        artifact.display(),
        text(&out)
    );
    assert_eq!(
        store.fingerprint(),
        changed,
        "[{name}] the refused restore of a damaged artifact changed the store"
    );
    let out = verify_offline(&damaged);
    assert_eq!(
        out.status.code(),
        Some(exit::DAMAGED_BACKUP),
        "[{name}] verify of a damaged artifact, the server out of reach\n{}",
        text(&out)
    );
    clock.lap("2. damaged artifact");

    // 3. An interrupted restore, run again. The first restore's time
    // places the kill half-way; a run quicker this time is killed earlier.
    let mut killed_at = None;
    for share in [0.5, 0.25, 0.1] {
        let at = restore_took.mul_f64(share);
        if kill_group_after(&restore.args(), at) {
            killed_at = Some(at);
            break;
        }
        // It ran to its end: the data is back; change it again.
        store.change();
    }
    let killed_at = killed_at.unwrap_or_else(|| {
        panic!(
            "[{name}] no restore was still running at 10 % of {restore_took:?}: nothing was interrupted"
        )
    });
    clock.lap("3. killed restore");
    let out = restore.run(&[]);
    assert!(
        out.status.success(),
        "[{name}] the rerun of a restore killed after {killed_at:?}\n{}",
        text(&out)
    );
    assert_eq!(
        store.fingerprint(),
        original,
        "[{name}] the rerun of a restore killed after {killed_at:?} did not restore the data exactly"
    );
    let left = store.leftovers();
    assert!(
        left.is_empty(),
        "[{name}] the restore killed after {killed_at:?} and its rerun left {left:?}"
    );
    store.cleanup();
    clock.lap("3. rerun");
}

/// Where a check's time goes, on stderr (shown with a failure, or with
/// `--nocapture`).
struct Clock<'a> {
    name: &'a str,
    last: Instant,
}

impl<'a> Clock<'a> {
    fn new(name: &'a str) -> Clock<'a> {
        Clock {
            name,
            last: Instant::now(),
        }
    }

    fn lap(&mut self, phase: &str) {
        eprintln!("[{}] {phase}: {:.1?}", self.name, self.last.elapsed());
        self.last = Instant::now();
    }
}

/// Check 4 for `store` backed up by `method`.
fn refusal_checks(store: &dyn StoreFixture, method: &str) {
    let method = store.method(method);
    let name = label(store, method);
    // The wrong password reaches the real server (and the dump method's
    // stop command is the real server's): whole-server work.
    let _guard = exclusive(&[store.server()]);
    let root = temp_root();
    let backup = Cmd::backup(root.path())
        .services(store.service())
        .method(method);
    let port = closed_port();
    for (what, env, code) in [
        (
            format!("a closed port ({port})"),
            store.address_env(port),
            exit::UNREACHABLE,
        ),
        (
            "a wrong password".to_string(),
            store.wrong_password_env(),
            exit::AUTHENTICATION,
        ),
    ] {
        let out = backup.run(&env_refs(&env));
        assert_eq!(
            out.status.code(),
            Some(code),
            "[{name}] a backup against {what} ({env:?})\n{}",
            text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(store.service()),
            "[{name}] the error about {what} does not name the service\n{stderr}"
        );
        assert!(
            !stderr.contains("not-the-password"),
            "[{name}] the password was shown\n{stderr}"
        );
        assert_no_backup(root.path());
    }
}

/// A port on this host that nothing listens on (one the system just gave
/// out and took back).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A copy of the directory `from` (files and subdirectories) at `to`.
fn copy_dir(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
    to.to_path_buf()
}

/// Invert 16 bytes in the middle of `service`'s artifact in the backup
/// `dir`, and nothing else (the manifest still vouches for the original);
/// the artifact's path.
fn flip_bytes_in_the_middle(dir: &Path, service: &str) -> PathBuf {
    let manifest = manifest_json(dir);
    let file = manifest["artifacts"][service]["file"]
        .as_str()
        .unwrap_or_else(|| panic!("no {service} artifact in {manifest:#}"));
    let path = dir.join(file);
    let mut bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{service} artifact {}: {e}", path.display()));
    assert!(bytes.len() >= 64, "{}: too small to damage", path.display());
    let middle = bytes.len() / 2;
    bytes[middle - 8..middle + 8]
        .iter_mut()
        .for_each(|b| *b = !*b);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The values `itbackup backup -h` lists for `flag` (`help` with its
/// whitespace, line breaks included, made single spaces).
fn possible_values(help: &str, flag: &str) -> Vec<String> {
    let rest = &help[help
        .find(&format!("{flag} <"))
        .unwrap_or_else(|| panic!("backup -h has no {flag}\n{help}"))..];
    let start = rest
        .find("[possible values: ")
        .unwrap_or_else(|| panic!("backup -h lists no values for {flag}\n{rest}"))
        + "[possible values: ".len();
    let end = start + rest[start..].find(']').unwrap();
    rest[start..end]
        .split(',')
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn every_store_and_method_is_in_the_suite() {
    let services: Vec<&str> = fixtures().iter().map(|f| f.service()).collect();
    for service in itbackup::service::Service::ALL {
        assert!(
            services.contains(&service.as_str()),
            "{service} has no fixture in conformance::fixtures()"
        );
    }
    let help = String::from_utf8(ok(&["backup", "-h"], &[]).stdout).unwrap();
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for store in fixtures() {
        let flag = store.methods()[0].flag;
        let mut listed = possible_values(&help, flag);
        let mut known: Vec<String> = store
            .methods()
            .iter()
            .map(|m| m.value.to_string())
            .collect();
        listed.sort();
        known.sort();
        assert_eq!(
            known,
            listed,
            "{}: the fixture's methods are not the ones {flag} offers",
            store.service()
        );
        for method in store.methods() {
            let module = format!("{}_{}", store.service(), method.value);
            assert!(
                COVERED.contains(&module.as_str()),
                "{} {}: no `{module}` line in conformance!",
                store.service(),
                method.value
            );
        }
    }
}

#[test]
fn the_opensearch_gate_admits_the_right_password() {
    // Without this, a gate that refused everyone would pass check 4.
    let _guard = exclusive(&[Opensearch]);
    let url = auth_gate::opensearch_behind_basic_auth();
    let refused = reqwest::blocking::Client::new()
        .get(format!("{url}/"))
        .basic_auth(auth_gate::USER, Some("not-the-password"))
        .send()
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    OS.populate();
    let root = temp_root();
    Cmd::backup(root.path())
        .services("opensearch")
        .method(OS.method("logical"))
        .ok(&[
            ("OPENSEARCH_URL", url.as_str()),
            ("OPENSEARCH_USER", auth_gate::USER),
            ("OPENSEARCH_PASSWORD", auth_gate::PASSWORD),
        ]);
    only_backup(root.path());
    OS.cleanup();
}
