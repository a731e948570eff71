//! The recovery drill against the real servers: the runbook's synthetic test
//! script passes and writes its validation file; a deliberately incomplete
//! restore makes the drill fail and name the difference; stores holding other
//! data are not rewound without consent.

use crate::common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| {
        panic!("read {}: {e}", path.display());
    }))
    .unwrap()
}

#[test]
fn synthetic_script_passes_and_writes_the_validation_file() {
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    let root = temp_root();
    let file = root.path().join("synthetic-validation.json");
    let out = Command::new(repo_root().join("tests/backup_restore_synthetic.sh"))
        .args(["--yes", "--scale", "3000"])
        .env("ITBACKUP_BIN", bin())
        .env("IT_BACKUP_ROOT", root.path().join("backups"))
        .env("SYNTHETIC_VALIDATION_FILE", &file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v = read_json(&file);
    assert_eq!(v["ok"], true, "{v:#}");
    // The runbook's keys, with the restored counts of the synthetic data.
    assert_eq!(v["postgres_rows"], 3000, "{v:#}");
    assert_eq!(v["opensearch_doc"], 3000, "{v:#}");
    assert_eq!(v["neo4j_nodes"], 3000, "{v:#}");
    for service in ["postgres", "opensearch", "neo4j"] {
        let s = &v["services"][service];
        assert_eq!(s["ok"], true, "{service}: {s:#}");
        assert_eq!(s["expected"], s["restored"], "{service}: {s:#}");
        assert!(s["restore_seconds"].as_f64().unwrap() > 0.0, "{s:#}");
        assert!(s["artifact_bytes"].as_u64().unwrap() > 0, "{s:#}");
    }
    let rto = v["rto_seconds"].as_f64().unwrap();
    assert!(rto > 0.0 && rto < v["rto_objective_seconds"].as_f64().unwrap());
    assert_eq!(v["rto_ok"], true);
    // The consistency window of the drill's backup (docs/consistency.md).
    let window = &v["consistency"];
    assert!(window["window_seconds"].as_f64().unwrap() >= 0.0, "{v:#}");
    assert_eq!(window["stores"].as_object().unwrap().len(), 3, "{v:#}");
    // The backup directory keeps its copy next to a complete manifest.
    let dir = std::path::PathBuf::from(v["backup_dir"].as_str().unwrap());
    assert_eq!(read_json(&dir.join("synthetic-validation.json")), v);
    ok(&["verify", "--path", dir.to_str().unwrap()], &[]);
    // The drill removed its data afterwards.
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'itbackup_drill'"
        ),
        "0"
    );
}

#[test]
fn drill_fails_and_names_the_difference_when_a_restore_is_incomplete() {
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    for service in ["postgres", "opensearch", "neo4j"] {
        let root = temp_root();
        let root_arg = root.path().to_str().unwrap();
        let out = itbackup(
            &[
                "--root",
                root_arg,
                "--json",
                "drill",
                "--yes",
                "--scale",
                "500",
                "--services",
                service,
            ],
            &[("IT_DRILL_SABOTAGE", service)],
        );
        assert_eq!(
            out.status.code(),
            Some(exit::VERIFICATION_MISMATCH),
            "{service}: {}",
            text(&out)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(v["ok"], false, "{v:#}");
        let differences = v["services"][service]["differences"].to_string();
        assert!(
            differences.contains("500 records expected, 499 restored"),
            "{service}: {v:#}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{service}: 500 records expected")),
            "{stderr}"
        );
        let dir = std::path::PathBuf::from(v["backup_dir"].as_str().unwrap());
        assert_eq!(
            read_json(&dir.join("synthetic-validation.json"))["ok"],
            false
        );
    }
}

#[test]
fn drill_needs_consent_before_rewinding_stores_that_hold_other_data() {
    // No drill may run meanwhile: it checks that none left its database.
    let _guard = exclusive(&[Postgres]);
    psql("postgres", "DROP DATABASE IF EXISTS drill_canary");
    psql("postgres", "CREATE DATABASE drill_canary");
    psql(
        "drill_canary",
        "CREATE TABLE alive (x int); INSERT INTO alive VALUES (1)",
    );
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let stderr = fails(
        &["--root", root_arg, "drill", "--services", "postgres"],
        &[],
        2,
    );
    assert!(
        stderr.contains("--yes") && stderr.contains("rewinds"),
        "{stderr}"
    );
    assert_eq!(psql("drill_canary", "SELECT count(*) FROM alive"), "1");
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'itbackup_drill'"
        ),
        "0"
    );
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    psql("postgres", "DROP DATABASE drill_canary");
}

#[test]
fn a_drill_whose_backup_fails_removes_its_synthetic_data() {
    let _guard = exclusive(&[Postgres]);
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    // The backup cannot create its directory under a regular file.
    let blocker = root.path().join("not-a-directory");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("backup");
    let stderr = fails(
        &[
            "--root",
            root_arg,
            "drill",
            "--yes",
            "--scale",
            "50",
            "--services",
            "postgres",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
        1,
    );
    assert!(stderr.contains("not-a-directory"), "{stderr}");
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'itbackup_drill'"
        ),
        "0",
        "the synthetic database outlived the failed drill"
    );
}

/// Scales beyond 2^31 / 7919 once overflowed the synthetic rows' arithmetic
/// (found by the reference-scale benchmark); PostgreSQL alone keeps it quick.
#[test]
fn drill_populates_large_scales() {
    let _guard = exclusive(&[Postgres]);
    let root = temp_root();
    let out = ok(
        &[
            "--root",
            root.path().to_str().unwrap(),
            "--json",
            "drill",
            "--yes",
            "--services",
            "postgres",
            "--scale",
            "300000",
        ],
        &[],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["postgres_rows"], 300000, "{v:#}");
    // itbackup's own memory stays bounded at scale (its peak only grows
    // through the phases), whatever the size of the process that started it
    // (this suite's is larger than 100 MB).
    let mb = |phase: &str| v["peak_memory"][phase].as_u64().unwrap();
    let phases = ["populated_mb", "backed_up_mb", "restored_mb", "verified_mb"];
    assert!(mb(phases[0]) > 0, "{v:#}");
    assert!(phases.windows(2).all(|w| mb(w[0]) <= mb(w[1])), "{v:#}");
    assert!(mb("verified_mb") <= 100, "{v:#}");
}

/// `--parallel auto` (the default) does not restore every store at once when
/// their servers share this machine's few cores: the longest restore runs
/// beside the others, which run one after the other (two lanes on up to 5
/// cores); `--parallel all` restores them at once, `none` one after the
/// other. The drill reports the plan and why.
#[test]
fn the_restore_schedule_follows_the_machine_unless_told() {
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    let cores = std::thread::available_parallelism().unwrap().get();
    let drill = |extra: &[&str]| {
        let root = temp_root();
        let mut args = vec![
            "--root",
            root.path().to_str().unwrap(),
            "--json",
            "drill",
            "--yes",
            "--scale",
            "200",
        ];
        args.extend_from_slice(extra);
        let v = json_of(&ok(&args, &[]));
        assert_eq!(v["ok"], true, "{v:#}");
        v["restore_plan"].clone()
    };
    let lanes = |plan: &Value| -> Vec<usize> {
        let lanes = plan["lanes"].as_array().unwrap();
        let mut stores: Vec<&Value> = lanes.iter().flat_map(|l| l.as_array().unwrap()).collect();
        stores.sort_by_key(|s| s.as_str().unwrap().to_string());
        stores.dedup();
        assert_eq!(stores.len(), 3, "every store once: {plan:#}");
        lanes.iter().map(|l| l.as_array().unwrap().len()).collect()
    };
    let auto = drill(&[]);
    // The three servers are on this machine: at once only with 2 cores each.
    assert_eq!(auto["parallel"], cores >= 6, "{cores} cores: {auto:#}");
    if cores < 6 {
        let mut sizes = lanes(&auto);
        sizes.sort();
        assert_eq!(
            sizes,
            [1, 2],
            "the longest alone, the others beside it: {auto:#}"
        );
        let reason = auto["reason"].as_str().unwrap();
        assert!(
            reason.contains("3 of the servers run on this machine")
                && reason.contains("the longest restore"),
            "{auto:#}"
        );
    }
    let all = drill(&["--parallel", "all"]);
    assert_eq!(all["parallel"], true, "{all:#}");
    assert_eq!(lanes(&all), [1, 1, 1], "{all:#}");
    assert_eq!(all["reason"], "--parallel all");
    let none = drill(&["--sequential"]);
    assert_eq!(none["parallel"], false, "{none:#}");
    assert_eq!(lanes(&none), [3], "{none:#}");
}

/// The event ids the drill's cross-store writer left in each store (after
/// a `drill --keep`).
fn drill_events_in_stores(
) -> std::collections::BTreeMap<&'static str, std::collections::BTreeSet<u64>> {
    common::writer::ids_in(&common::writer::DRILL_EVENTS)
        .into_iter()
        .collect()
}

/// `drill --cross-store`: a writer puts every event into all three stores
/// during the drill's backup. Without --consistent the report says, per
/// store, how many events came back and which ones it lacks, exactly as the
/// stores hold them; with --consistent (hooks pausing the writer) the three
/// id sets agree and the drill passes.
#[test]
fn a_cross_store_drill_reports_what_each_store_came_back_with() {
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    for consistent in [false, true] {
        let root = temp_root();
        let root_arg = root.path().to_str().unwrap();
        let mut args = vec![
            "--root",
            root_arg,
            "--json",
            "drill",
            "--yes",
            "--keep",
            "--scale",
            "200",
            "--cross-store",
        ];
        if consistent {
            args.push("--consistent");
        }
        let out = itbackup(&args, &[]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("JSON on stdout: {}", text(&out)));
        let report = &v["cross_store"];
        let held = drill_events_in_stores();
        let any: std::collections::BTreeSet<u64> = held.values().flatten().copied().collect();
        assert!(!any.is_empty(), "{report:#}");
        assert_eq!(report["in_any_store"], any.len() as u64, "{report:#}");
        for (store, ids) in &held {
            let lacks: Vec<u64> = any.difference(ids).copied().collect();
            assert_eq!(
                report["stores"][store]["restored"],
                ids.len() as u64,
                "{store}: {report:#}"
            );
            assert_eq!(
                report["stores"][store]["missing"],
                lacks.len() as u64,
                "{store}: {report:#}"
            );
            assert_eq!(
                report["stores"][store]["missing_ids"],
                serde_json::json!(lacks.iter().take(100).collect::<Vec<_>>()),
                "{store}: {report:#}"
            );
        }
        assert_eq!(
            report["agree"],
            held.values().all(|ids| *ids == any),
            "{report:#}"
        );
        assert!(
            report["written"].as_u64().unwrap() >= any.len() as u64,
            "{report:#}"
        );
        assert_eq!(report["consistent"], consistent, "{report:#}");
        // Beside the ids, the window the manifest recorded.
        assert!(v["consistency"]["window_seconds"].is_number(), "{v:#}");
        if consistent {
            assert!(out.status.success(), "{}", text(&out));
            assert_eq!(report["agree"], true, "{report:#}");
            assert_eq!(v["consistency"]["freeze"]["outcome"], "held", "{v:#}");
            // The writer went on after the thaw: events written after the
            // moment are not in the backup.
            assert!(
                report["written"].as_u64().unwrap() > report["in_every_store"].as_u64().unwrap(),
                "{report:#}"
            );
        }
        // The kept drill data goes with the next drill's wipe; remove it now.
        psql(
            "postgres",
            "DROP DATABASE IF EXISTS itbackup_drill WITH (FORCE)",
        );
        for index in ["itbackup-drill-docs", "itbackup-drill-events"] {
            opensearch(reqwest::Method::DELETE, index, None);
        }
        Neo::connect()
            .run("MATCH (n) WHERE n:ItbackupDrill OR n:ItbackupDrillEvent DETACH DELETE n");
    }
}
