//! Positions and the consistency window (docs/consistency.md), on the real
//! servers: every store's artifact records where its data stands, checked
//! against what the servers themselves report around the backup.

use crate::common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// `X/Y` as a number, for comparing LSNs.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn server_lsn() -> u64 {
    lsn(&psql("postgres", "SELECT pg_current_wal_lsn()"))
}

fn time(value: &Value) -> jiff::Timestamp {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap()
}

/// An index of one primary with `docs` documents written one by one, so
/// that its max_seq_no is known: `docs − 1`.
fn index_with(name: &str, docs: u64) {
    opensearch(Method::DELETE, name, None);
    opensearch(
        Method::PUT,
        name,
        Some(json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}})),
    );
    for i in 0..docs {
        opensearch(
            Method::PUT,
            &format!("{name}/_doc/{i}"),
            Some(json!({"n": i})),
        );
    }
    opensearch(Method::POST, &format!("{name}/_refresh"), None);
}

/// The primary's max_seq_no as the server reports it now.
fn server_max_seq_no(index: &str) -> i64 {
    let stats = opensearch(Method::GET, &format!("{index}/_stats?level=shards"), None);
    let copies = stats["indices"][index]["shards"]["0"]
        .as_array()
        .unwrap()
        .clone();
    let primary = copies
        .iter()
        .find(|c| c["routing"]["primary"] == true)
        .expect("a primary");
    primary["seq_no"]["max_seq_no"].as_i64().unwrap()
}

fn validate_schema(manifest: &Value) {
    let schema: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("docs/manifest.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(manifest)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "manifest does not match the schema: {errors:#?}"
    );
}

/// The window in the manifest spans exactly the stores' points and spans.
fn check_window(manifest: &Value, services: &[&str]) {
    let c = &manifest["consistency"];
    let (earliest, latest) = (time(&c["earliest"]), time(&c["latest"]));
    let mut lowest = None::<jiff::Timestamp>;
    let mut highest = None::<jiff::Timestamp>;
    for service in services {
        let store = &c["stores"][service];
        let (from, until) = (time(&store["from"]), time(&store["until"]));
        assert!(from <= until, "{service}: {store}");
        lowest = Some(lowest.map_or(from, |l| l.min(from)));
        highest = Some(highest.map_or(until, |h| h.max(until)));
    }
    assert_eq!(Some(earliest), lowest, "{c}");
    assert_eq!(Some(latest), highest, "{c}");
    let millis = latest.duration_since(earliest).as_millis() as f64;
    assert_eq!(
        c["window_seconds"].as_f64().unwrap(),
        millis / 1000.0,
        "{c}"
    );
}

#[test]
fn a_backup_of_all_three_stores_records_a_position_per_store_and_the_window() {
    const DOCS: u64 = 7;
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    let index = format!("itb-consistency-{}", std::process::id());
    index_with(&index, DOCS);
    let root = temp_root();
    let lsn_before = server_lsn();
    let dir = backup_into(
        root.path(),
        "postgres,opensearch,neo4j",
        &["--indices", &index, "--opensearch-method", "snapshot"],
        &[],
    );
    let lsn_after = server_lsn();
    let server_seq_no = server_max_seq_no(&index);
    opensearch(Method::DELETE, &index, None);

    let manifest = manifest_json(&dir);
    validate_schema(&manifest);
    let artifacts = &manifest["artifacts"];

    // PostgreSQL (custom): the LSN of each exported snapshot lies between
    // the server's before and after the backup.
    let pg = &artifacts["postgres"]["position"];
    assert_eq!(pg["basis"], "exported_snapshot", "{pg}");
    for key in ["lsn", "lsn_until"] {
        if let Some(text) = pg["postgres"][key].as_str() {
            let recorded = lsn(text);
            assert!(
                (lsn_before..=lsn_after).contains(&recorded),
                "{key} {text} not within {lsn_before:X}..={lsn_after:X}"
            );
        }
    }
    assert!(pg["postgres"]["lsn"].is_string(), "{pg}");
    assert!(pg["postgres"]["timeline"].as_u64().unwrap() >= 1, "{pg}");

    // OpenSearch (snapshot): the snapshot's start and the index's sequence numbers.
    let os = &artifacts["opensearch"]["position"];
    assert_eq!(os["basis"], "snapshot_start", "{os}");
    let started = time(&artifacts["opensearch"]["started_at"]);
    let finished = time(&artifacts["opensearch"]["finished_at"]);
    let taken = time(&os["taken_at"]);
    // The cluster's clock, to the millisecond, against ours to the microsecond.
    let slack = jiff::SignedDuration::from_millis(1);
    assert!(started - slack <= taken && taken <= finished, "{os}");
    let seq = &os["opensearch"]["indices"][&index];
    assert_eq!(seq["primaries"], 1, "{seq}");
    assert_eq!(seq["max_seq_no"], DOCS as i64 - 1, "{seq}");
    assert_eq!(seq["max_seq_no"], server_seq_no, "{seq}");
    assert_eq!(seq["global_checkpoint"], DOCS as i64 - 1, "{seq}");
    assert_eq!(seq["shards"][0]["max_seq_no"], server_seq_no, "{seq}");

    // Neo4j (logical): a span inside the store's backup.
    let neo = &artifacts["neo4j"]["position"];
    assert_eq!(neo["basis"], "export_span", "{neo}");
    let (from, until) = if neo["taken_at"].is_string() {
        (time(&neo["taken_at"]), time(&neo["taken_at"]))
    } else {
        (time(&neo["from"]), time(&neo["until"]))
    };
    assert!(time(&artifacts["neo4j"]["started_at"]) <= from, "{neo}");
    assert!(until <= time(&artifacts["neo4j"]["finished_at"]), "{neo}");

    check_window(&manifest, &["postgres", "opensearch", "neo4j"]);

    // `list` shows the window, in JSON and as text.
    let root_arg = root.path().to_str().unwrap();
    let listed = json_of(&ok(&["--root", root_arg, "--json", "list"], &[]));
    assert_eq!(listed["backups"][0]["consistency"], manifest["consistency"]);
    let text = String::from_utf8_lossy(&ok(&["--root", root_arg, "list"], &[]).stdout).into_owned();
    assert!(text.contains("consistency window "), "{text}");

    // `status` shows the newest backup's.
    let out = itbackup(&["--root", root_arg, "--json", "status", "--offline"], &[]);
    let status = json_of(&out);
    assert_eq!(
        status["consistency"]["window_seconds"],
        manifest["consistency"]["window_seconds"]
    );
    assert_eq!(
        status["consistency"]["backup"],
        dir.file_name().unwrap().to_str().unwrap()
    );
}

#[test]
fn a_logical_opensearch_export_records_its_point_in_time_and_sequence_numbers() {
    const DOCS: u64 = 5;
    let _guard = exclusive(&[Opensearch]);
    let index = format!("itb-consistency-pit-{}", std::process::id());
    index_with(&index, DOCS);
    let root = temp_root();
    let dir = backup_into(
        root.path(),
        "opensearch",
        &["--indices", &index, "--opensearch-method", "logical"],
        &[],
    );
    let server_seq_no = server_max_seq_no(&index);
    opensearch(Method::DELETE, &index, None);

    let manifest = manifest_json(&dir);
    validate_schema(&manifest);
    let os = &manifest["artifacts"]["opensearch"]["position"];
    assert_eq!(os["basis"], "pit_created", "{os}");
    assert!(
        os["taken_at"].is_string(),
        "one index, one point in time: {os}"
    );
    let seq = &os["opensearch"]["indices"][&index];
    assert_eq!(seq["max_seq_no"], DOCS as i64 - 1, "{seq}");
    assert_eq!(seq["max_seq_no"], server_seq_no, "{seq}");
    check_window(&manifest, &["opensearch"]);
    assert_eq!(manifest["consistency"]["window_seconds"], 0.0);
}

/// The PostgreSQL position of one backup by `method`, checked against the
/// server's LSN before and after it.
fn postgres_position(method: &str) -> (Value, Value) {
    let _guard = exclusive(&[Postgres]);
    let root = temp_root();
    let before = server_lsn();
    let dir = backup_into(root.path(), "postgres", &["--postgres-method", method], &[]);
    let after = server_lsn();
    let manifest = manifest_json(&dir);
    validate_schema(&manifest);
    check_window(&manifest, &["postgres"]);
    let record = manifest["artifacts"]["postgres"].clone();
    let position = record["position"].clone();
    for key in ["lsn", "lsn_until"] {
        if let Some(text) = position["postgres"][key].as_str() {
            assert!(
                (before..=after).contains(&lsn(text)),
                "{method}: {key} {text} not within {before:X}..={after:X}"
            );
        }
    }
    (position, record)
}

#[test]
fn a_base_backup_stands_at_its_stop_lsn_and_a_plain_dump_spans_its_run() {
    let (position, record) = postgres_position("physical");
    let physical = &record["details"]["physical"];
    assert_eq!(position["basis"], "base_backup_stop", "{position}");
    assert_eq!(
        position["postgres"]["lsn"], physical["stop_lsn"],
        "{position}"
    );
    assert_eq!(
        position["postgres"]["timeline"], physical["timeline"],
        "{position}"
    );
    assert_eq!(
        position["taken_at"], physical["consistent_at"],
        "{position}"
    );

    let (position, _) = postgres_position("plain");
    assert_eq!(position["basis"], "dump_span", "{position}");
    let pg = &position["postgres"];
    assert!(
        position["from"].is_string() && position["until"].is_string(),
        "{position}"
    );
    assert!(
        lsn(pg["lsn"].as_str().unwrap()) <= lsn(pg["lsn_until"].as_str().unwrap()),
        "{pg}"
    );
}

/// The ids the three stores hold are one set, none empty.
fn assert_one_set(stores: &[(&str, std::collections::BTreeSet<u64>); 3], what: &str) {
    let (_, postgres) = &stores[0];
    assert!(!postgres.is_empty(), "{what}: no event restored");
    for (name, ids) in &stores[1..] {
        let only_pg: Vec<_> = postgres.difference(ids).collect();
        let only_here: Vec<_> = ids.difference(postgres).collect();
        assert!(
            only_pg.is_empty() && only_here.is_empty(),
            "{what}: postgres and {name} disagree: only in postgres {only_pg:?}, only in {name} {only_here:?}"
        );
    }
}

/// The Done-when of the coordinated moment: a writer puts every event into
/// all three stores while `backup --consistent` runs with freeze and thaw
/// hooks that pause it; after the restore the three id sets are identical,
/// for OpenSearch's snapshot and logical methods alike, and the writer was
/// writing before and after the freeze.
#[test]
fn a_consistent_backup_under_a_live_writer_restores_one_moment_of_all_three_stores() {
    use common::writer::{create_event_stores, drop_event_stores, ids_in_stores};
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    create_event_stores();
    let work = tempfile::tempdir().unwrap();
    let writer = CrossStoreWriter::start(work.path());
    let (freeze, thaw) = (writer.freeze_hook(), writer.thaw_hook());
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let mut backups = Vec::new();
    for method in ["snapshot", "logical"] {
        writer.wait_for(writer.written() + 20);
        let before = writer.written();
        let name = format!("consistent-{method}");
        let hooks = [
            "--consistent",
            "--freeze-hook",
            &freeze,
            "--thaw-hook",
            &thaw,
            "--max-freeze",
            "60s",
            "--opensearch-method",
            method,
            "--timestamp",
            &name,
        ];
        let mut args = vec!["--root", root_arg, "backup"];
        args.extend(hooks);
        ok(&args, &[]);
        // The writer went on after the thaw.
        writer.wait_for(writer.written() + 20);
        let dir = root.path().join(&name);
        let manifest = manifest_json(&dir);
        validate_schema(&manifest);
        let freeze = &manifest["consistency"]["freeze"];
        assert_eq!(freeze["outcome"], "held", "{freeze}");
        assert_eq!(freeze["hooks"], true, "{freeze}");
        assert!(freeze["seconds"].as_f64().unwrap() <= 60.0, "{freeze}");
        backups.push((method, dir, before));
    }
    let written = writer.stop();
    let listed =
        String::from_utf8_lossy(&ok(&["--root", root_arg, "list"], &[]).stdout).into_owned();
    assert!(listed.contains("writers paused"), "{listed}");

    for (method, dir, before) in backups {
        ok(
            &[&["--root", root_arg][..], &restore_args(&dir, None)].concat(),
            &[],
        );
        let stores = ids_in_stores();
        assert_one_set(&stores, method);
        let restored = stores[0].1.len() as u64;
        // Every event up to the freeze is there and none after it: the ids are 1..=n.
        assert_eq!(
            stores[0].1.iter().max(),
            Some(&restored),
            "{method}: ids are not 1..=n"
        );
        assert!(
            restored >= before && restored < written,
            "{method}: {restored} events restored; the writer had written {before} when the backup started and {written} in all"
        );
        // Each restored event is linked to the one before it.
        let links =
            Neo::connect().count("MATCH (:ItbEvent)-[r:NEXT]->(:ItbEvent) RETURN count(r) AS n");
        assert_eq!(links as u64, restored - 1, "{method}");
    }
    drop_event_stores();
}

/// A freeze hook that never returns is killed at --max-freeze, the writers
/// are thawed, and the run fails with nothing kept, or (`continue`) keeps
/// the backup and records that the freeze was exceeded.
#[test]
fn a_freeze_past_max_freeze_is_ended_thawed_and_fails_or_continues_as_chosen() {
    let _guard = exclusive(&[Postgres]);
    let work = tempfile::tempdir().unwrap();
    let thawed = work.path().join("thawed");
    let thaw = format!("echo x >> {}", thawed.display());
    let freeze = "sleep 600";
    let backup = |root: &str, on_timeout: &str| {
        let started = std::time::Instant::now();
        let out = itbackup(
            &[
                "--root",
                root,
                "backup",
                "--services",
                "postgres",
                "--consistent",
                "--freeze-hook",
                freeze,
                "--thaw-hook",
                &thaw,
                "--max-freeze",
                "2s",
                "--on-freeze-timeout",
                on_timeout,
            ],
            &[],
        );
        (out, started.elapsed())
    };

    let root = temp_root();
    let (out, took) = backup(root.path().to_str().unwrap(), "fail");
    assert_eq!(out.status.code(), Some(exit::FAILURE), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not return within --max-freeze"), "{err}");
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
    assert_eq!(
        std::fs::read_to_string(&thawed).unwrap(),
        "x\n",
        "thawed once"
    );
    assert_no_backup(root.path());

    let root = temp_root();
    let (out, _) = backup(root.path().to_str().unwrap(), "continue");
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WITHOUT a consistent moment"), "{err}");
    let manifest = manifest_json(&only_backup(root.path()));
    validate_schema(&manifest);
    let record = &manifest["consistency"]["freeze"];
    assert_eq!(record["outcome"], "exceeded", "{record}");
    assert_eq!(record["outside"], json!(["postgres"]), "{record}");
    assert_eq!(std::fs::read_to_string(&thawed).unwrap(), "x\nx\n");
}

/// A thaw hook that fails is said loudly and run again; one that keeps
/// failing fails the run, telling the operator the writers may be paused.
#[test]
fn a_failing_thaw_hook_is_retried_and_reported_loudly() {
    let _guard = exclusive(&[Postgres]);
    let work = tempfile::tempdir().unwrap();
    let tries = work.path().join("tries");
    // Fails on its first run, succeeds on the second.
    let flaky = format!("echo x >> {0}; [ $(wc -l < {0}) -ge 2 ]", tries.display());
    // A coordinated PostgreSQL backup into a root of its own, with `thaw`.
    let backup = |root: &tempfile::TempDir, thaw: &str| {
        itbackup(
            &[
                "--root",
                root.path().to_str().unwrap(),
                "backup",
                "--services",
                "postgres",
                "--consistent",
                "--freeze-hook",
                "true",
                "--thaw-hook",
                thaw,
            ],
            &[],
        )
    };
    let root = temp_root();
    let out = backup(&root, &flaky);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("THE THAW HOOK FAILED"), "{err}");
    assert_eq!(std::fs::read_to_string(&tries).unwrap().lines().count(), 2);
    assert_eq!(
        manifest_json(&only_backup(root.path()))["consistency"]["freeze"]["outcome"],
        "held"
    );

    let root = temp_root();
    let out = backup(&root, "exit 3");
    assert_eq!(out.status.code(), Some(exit::FAILURE), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed 3 times") && err.contains("WRITERS MAY STILL BE PAUSED"),
        "{err}"
    );
    assert!(
        err.contains("exit 3"),
        "the hint names the command to run by hand: {err}"
    );
    assert_no_backup(root.path());
}
