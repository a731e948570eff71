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
