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
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn points() -> u32 {
    std::env::var("IT_FAULT_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Run itbackup in a process group of its own and kill the group with
/// SIGKILL after `after`; true when the run was still going (it was killed).
fn kill_group_after(args: &[&str], after: Duration) -> bool {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start itbackup");
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    child.wait().unwrap();
    true
}

/// How long an uninterrupted run takes (it must succeed).
/// How long a run takes once warm: the shorter of two. The first run on a
/// cold server, or while the machine is busy, can take several times as
/// long, and kill points spread over it then fall after the later, quicker
/// runs have ended (a 10-point Neo4j logical run interrupted 2 backups of 10).
fn timed(args: &[&str]) -> Duration {
    let run = || {
        let started = Instant::now();
        ok(args, &[]);
        started.elapsed()
    };
    run().min(run())
}

/// The content of one store, compared before and after.
trait Subject {
    fn service(&self) -> &'static str;
    fn extra(&self) -> Vec<&'static str>;
    fn populate(&self);
    fn fingerprint(&self) -> String;
    /// What killed runs may have left in the store: must be empty.
    fn leftovers(&self) -> Vec<String>;
    fn cleanup(&self);
}

struct Pg(&'static str);

impl Subject for Pg {
    fn service(&self) -> &'static str {
        "postgres"
    }
    fn extra(&self) -> Vec<&'static str> {
        vec!["--postgres-format", self.0]
    }
    fn populate(&self) {
        self.cleanup();
        psql("postgres", "CREATE DATABASE itb_faults");
        psql(
            "itb_faults",
            "CREATE TABLE t (id int PRIMARY KEY, v text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200000) g; \
             SELECT lo_from_bytea(0, 'fault injection')",
        );
    }
    fn fingerprint(&self) -> String {
        psql(
            "itb_faults",
            "SELECT count(*) || ' ' || sum(hashtext(v)) || ' ' || (SELECT count(*) FROM pg_largeobject_metadata) FROM t",
        )
    }
    fn leftovers(&self) -> Vec<String> {
        let names = psql(
            "postgres",
            "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'itbackup\\_%'",
        );
        names
            .split(',')
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect()
    }
    fn cleanup(&self) {
        psql(
            "postgres",
            "DROP DATABASE IF EXISTS itb_faults WITH (FORCE)",
        );
    }
}

struct Os(&'static str);

impl Os {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        opensearch(method, path, body)
    }
}

impl Subject for Os {
    fn service(&self) -> &'static str {
        "opensearch"
    }
    fn extra(&self) -> Vec<&'static str> {
        vec!["--opensearch-method", self.0]
    }
    fn populate(&self) {
        self.cleanup();
        let mut bulk = String::new();
        for i in 0..20000 {
            bulk.push_str(&format!(
                "{{\"index\":{{\"_index\":\"itb-faults\",\"_id\":\"{i}\"}}}}\n{}\n",
                json!({"n": i, "text": format!("document {i}")})
            ));
        }
        let url = format!("{}/_bulk?refresh=true", required_env("OPENSEARCH_URL"));
        let resp = reqwest::blocking::Client::new()
            .post(url)
            .header("Content-Type", "application/x-ndjson")
            .body(bulk)
            .send()
            .unwrap();
        assert!(resp.status().is_success());
    }
    fn fingerprint(&self) -> String {
        self.call(reqwest::Method::POST, "itb-faults/_refresh", None);
        let v = self.call(
            reqwest::Method::POST,
            "itb-faults/_search",
            Some(json!({"size": 0, "track_total_hits": true, "aggs": {"s": {"sum": {"field": "n"}}}})),
        );
        format!(
            "{} {}",
            v["hits"]["total"]["value"], v["aggregations"]["s"]["value"]
        )
    }
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let repos = self.call(reqwest::Method::GET, "_snapshot/_all", None);
        if let Some(repos) = repos.as_object() {
            left.extend(
                repos
                    .keys()
                    .filter(|k| k.starts_with("itbackup"))
                    .map(|k| format!("repository {k}")),
            );
        }
        let indices = self.call(
            reqwest::Method::GET,
            "_cat/indices/itbackup*?format=json&expand_wildcards=all",
            None,
        );
        if let Some(indices) = indices.as_array() {
            left.extend(
                indices
                    .iter()
                    .map(|i| format!("index {}", i["index"].as_str().unwrap_or("?"))),
            );
        }
        // The definition check's temporary pipelines, templates and streams.
        for (listing, key) in [
            ("_data_stream/itbackup*", Some("data_streams")),
            ("_index_template/itbackup*", Some("index_templates")),
            ("_component_template/itbackup*", Some("component_templates")),
            ("_template/itbackup*", None),
            ("_ingest/pipeline/itbackup*", None),
        ] {
            let found = self.call(reqwest::Method::GET, listing, None);
            let names: Vec<String> = match key {
                Some(key) => found[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| i["name"].as_str().unwrap_or("?").to_string())
                    .collect(),
                None => found
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.clone())
                    .collect(),
            };
            left.extend(names.into_iter().map(|n| format!("{listing}: {n}")));
        }
        if let Ok(repo) = std::env::var("IT_OPENSEARCH_REPO") {
            if let Ok(entries) = fs::read_dir(&repo) {
                left.extend(
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("itbackup"))
                        .map(|n| format!("{repo}/{n}")),
                );
            }
        }
        left
    }
    fn cleanup(&self) {
        self.call(reqwest::Method::DELETE, "itb-faults", None);
    }
}

struct Neo {
    rt: tokio::runtime::Runtime,
    graph: neo4rs::Graph,
}

impl Neo {
    fn connect() -> Neo {
        Neo::try_connect().expect("the testenv Neo4j answers over Bolt")
    }
    /// A server that a killed run left down is a failed point, not a panic
    /// that would hide the tally.
    fn try_connect() -> Result<Neo, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let graph = rt
            .block_on(neo4rs::Graph::new(
                required_env("NEO4J_URI"),
                required_env("NEO4J_USER"),
                required_env("NEO4J_PASSWORD"),
            ))
            .map_err(|e| format!("Neo4j does not answer over Bolt: {e}"))?;
        Ok(Neo { rt, graph })
    }
    fn single(&self, cypher: &str) -> String {
        self.try_single(cypher).unwrap()
    }
    fn try_single(&self, cypher: &str) -> Result<String, String> {
        self.rt.block_on(async {
            let mut rows = self
                .graph
                .execute(neo4rs::query(cypher))
                .await
                .map_err(|e| format!("{cypher}: {e}"))?;
            let row = rows
                .next()
                .await
                .map_err(|e| format!("{cypher}: {e}"))?
                .ok_or_else(|| format!("{cypher}: no row"))?;
            row.get::<String>("r").map_err(|e| format!("{cypher}: {e}"))
        })
    }
    /// What the graph holds, or why it cannot be read.
    fn state(&self) -> String {
        self.try_single(
            "MATCH (n) OPTIONAL MATCH (n)-[r]->() \
             RETURN toString(count(DISTINCT n)) + ' ' + toString(count(r)) + ' ' + toString(sum(n.i)) AS r",
        )
        .unwrap_or_else(|e| format!("unreadable: {e}"))
    }
    /// Labels and property keys other than the fixture's, or why they
    /// cannot be read (itself a failed point).
    fn debris(&self) -> Vec<String> {
        // The logical load keeps its id map in scratch files, not in the
        // graph: any label or property other than the fixture's is debris.
        let found = self.try_single(
            "MATCH (n) UNWIND labels(n) AS l WITH DISTINCT l WHERE l <> 'FaultNode' \
             RETURN reduce(s = '', x IN collect(l) | s + x + ',') AS r",
        );
        let keys = self.try_single(
            "MATCH (n) UNWIND keys(n) AS k WITH DISTINCT k WHERE NOT k IN ['i', 'name'] \
             RETURN reduce(s = '', x IN collect(k) | s + x + ',') AS r",
        );
        match (found, keys) {
            (Ok(labels), Ok(keys)) => labels
                .split(',')
                .chain(keys.split(','))
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            (Err(e), _) | (_, Err(e)) => vec![format!("unreadable: {e}")],
        }
    }
}

impl Subject for Neo {
    fn service(&self) -> &'static str {
        "neo4j"
    }
    fn extra(&self) -> Vec<&'static str> {
        vec!["--neo4j-method", "logical"]
    }
    fn populate(&self) {
        self.cleanup();
        self.single(
            "UNWIND range(1, 20000) AS i CREATE (:FaultNode {i: i, name: 'n' + i}) \
             WITH count(*) AS c RETURN toString(c) AS r",
        );
        self.single(
            "MATCH (a:FaultNode), (b:FaultNode) WHERE b.i = a.i + 1 CREATE (a)-[:NEXT {w: a.i}]->(b) \
             WITH count(*) AS c RETURN toString(c) AS r",
        );
    }
    fn fingerprint(&self) -> String {
        self.state()
    }
    fn leftovers(&self) -> Vec<String> {
        self.debris()
    }
    fn cleanup(&self) {
        self.single("OPTIONAL MATCH (n) DETACH DELETE n WITH count(*) AS c RETURN 'ok' AS r");
    }
}

/// The dump method stops and starts the server: every look at the graph
/// opens a new connection (the previous one died with the server).
struct NeoDump;

impl Subject for NeoDump {
    fn service(&self) -> &'static str {
        "neo4j"
    }
    fn extra(&self) -> Vec<&'static str> {
        vec!["--neo4j-method", "dump"]
    }
    fn populate(&self) {
        Neo::connect().populate()
    }
    fn fingerprint(&self) -> String {
        Neo::try_connect().map_or_else(|e| format!("unreadable: {e}"), |neo| neo.state())
    }
    fn leftovers(&self) -> Vec<String> {
        Neo::try_connect().map_or_else(|e| vec![format!("unreadable: {e}")], |neo| neo.debris())
    }
    fn cleanup(&self) {
        Neo::connect().cleanup()
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

/// kill -9 a backup and a restore of `subject` at `points()` points each,
/// rerun after every kill, and check data and leftovers.
fn torture(subject: &dyn Subject) -> (Tally, Tally) {
    // Only the server under test: the others' tests run meanwhile.
    let _guard = exclusive(&[match subject.service() {
        "postgres" => Postgres,
        "opensearch" => Opensearch,
        _ => Neo4j,
    }]);
    subject.populate();
    let original = subject.fingerprint();
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap().to_string();
    let mut backup: Vec<&str> = vec![
        "--root",
        &root_arg,
        "backup",
        "--services",
        subject.service(),
    ];
    let extra = subject.extra();
    backup.extend(extra.iter().copied());
    let full = timed(&backup);
    let n = points();

    let mut backups = Tally::default();
    for i in 1..=n {
        // A backup needs a new second for its default name.
        std::thread::sleep(Duration::from_millis(1100));
        // Spread over the first 85 %: a rerun of a warm server is quicker than the timed run.
        let at = full.mul_f64(0.85 * f64::from(i) / f64::from(n + 1));
        backups.tried += 1;
        backups.killed += u32::from(kill_group_after(&backup, at));
        std::thread::sleep(Duration::from_millis(1100));
        let rerun = itbackup(&backup, &[]);
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

    let restore = [
        "--root",
        &root_arg,
        "restore",
        "--services",
        subject.service(),
        "--yes",
    ];
    let full = timed(&restore);
    let mut restores = Tally::default();
    for i in 1..=n {
        let at = full.mul_f64(0.85 * f64::from(i) / f64::from(n + 1));
        restores.tried += 1;
        restores.killed += u32::from(kill_group_after(&restore, at));
        let rerun = itbackup(&restore, &[]);
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
        "fault injection {} {:?}: backup tried {} killed {} held {}; restore tried {} killed {} held {}",
        subject.service(),
        subject.extra(),
        backups.tried,
        backups.killed,
        backups.held,
        restores.tried,
        restores.killed,
        restores.held
    );
    (backups, restores)
}

fn every_point_held(subject: &dyn Subject) {
    let (backups, restores) = torture(subject);
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

#[test]
fn postgres_custom_survives_kill_9_anywhere() {
    every_point_held(&Pg("custom"));
}

#[test]
fn postgres_plain_survives_kill_9_anywhere() {
    every_point_held(&Pg("plain"));
}

#[test]
fn opensearch_logical_survives_kill_9_anywhere() {
    every_point_held(&Os("logical"));
}

#[test]
fn opensearch_snapshot_survives_kill_9_anywhere() {
    every_point_held(&Os("snapshot"));
}

#[test]
fn neo4j_logical_survives_kill_9_anywhere() {
    every_point_held(&Neo::connect());
}

#[test]
fn neo4j_dump_survives_kill_9_anywhere() {
    every_point_held(&NeoDump);
}
