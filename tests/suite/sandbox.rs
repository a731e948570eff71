//! The sandbox drill: a real backup of the development stack restored into
//! the sandbox stack (`make test` starts it: testenv's sandbox profile, its
//! target config in `IT_SANDBOX_TARGET_CONFIG`), every table and index
//! checked by count and content digest, the RTO reported; refused before
//! anything changes when the target config names the backed-up servers or a
//! server holding data no drill put there; a backup forged so that its
//! checksums still hold fails the drill by its content check.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixtures::{Neo4jGraph, OsIndex, PgDatabase, StoreFixture};
use common::*;
use serde_json::Value;

const PG: PgDatabase = PgDatabase {
    database: "sbx_pg",
    rows: 3000,
};
const OS: OsIndex = OsIndex {
    index: "sbx-os",
    docs: 400,
};
const NEO: Neo4jGraph = Neo4jGraph {
    label: "SbxNode",
    nodes: 300,
};

/// The sandbox stack, as its target config names it.
struct SandboxStack {
    config: PathBuf,
    pg_port: String,
    os_url: String,
}

impl SandboxStack {
    fn from_env() -> SandboxStack {
        let config = PathBuf::from(required_env("IT_SANDBOX_TARGET_CONFIG"));
        let text = fs::read_to_string(&config).unwrap_or_else(|e| {
            panic!("read the sandbox's target config {}: {e}", config.display())
        });
        let toml: toml::Value = toml::from_str(&text).unwrap();
        SandboxStack {
            pg_port: toml["postgres"]["port"].to_string(),
            os_url: toml["opensearch"]["url"].as_str().unwrap().to_string(),
            config,
        }
    }

    fn psql(&self, database: &str, sql: &str) -> String {
        psql_with(&[("PGPORT", self.pg_port.as_str())], database, sql)
    }

    fn databases(&self) -> String {
        self.psql(
            "postgres",
            "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE NOT datistemplate",
        )
    }

    /// Empty the sandbox's PostgreSQL and OpenSearch of what an earlier,
    /// failed run may have left (Neo4j's graph is replaced by the restore).
    fn reset(&self) {
        let databases = self.databases();
        for database in databases
            .split(',')
            .filter(|d| !d.is_empty() && *d != "postgres")
        {
            self.psql(
                "postgres",
                &format!("DROP DATABASE \"{database}\" WITH (FORCE)"),
            );
        }
        let indices = self.indices();
        if !indices.is_empty() {
            let url = format!("{}/{indices}", self.os_url);
            let answer = reqwest::blocking::Client::new().delete(url).send().unwrap();
            assert!(answer.status().is_success(), "{}", answer.text().unwrap());
        }
    }

    fn indices(&self) -> String {
        let url = format!("{}/_cat/indices?h=index&s=index", self.os_url);
        let text = reqwest::blocking::get(url).unwrap().text().unwrap();
        text.split_whitespace()
            .filter(|i| !i.starts_with('.'))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn drill_args<'a>(root: &'a str, backup: &'a str, config: &'a Path) -> Vec<&'a str> {
    vec![
        "--root",
        root,
        "drill",
        "--backup",
        backup,
        "--target-config",
        config.to_str().unwrap(),
    ]
}

/// The development stack's own target config (`testenv/target-config` of
/// the default profile), with `pg_host` for PostgreSQL's host.
fn source_config(dir: &Path, pg_host: &str) -> PathBuf {
    let out = Command::new(repo_root().join("testenv/target-config"))
        .env_remove("IT_TESTENV_PROFILE")
        .env_remove("IT_TESTENV_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let toml = String::from_utf8(out.stdout).unwrap().replacen(
        "host = '127.0.0.1'",
        &format!("host = '{pg_host}'"),
        1,
    );
    let file = dir.join(format!("source-{pg_host}.toml"));
    fs::write(&file, toml).unwrap();
    file
}

/// Remove one document of `index` from a logical OpenSearch export and make
/// everything that counts agree (the index's and the export's end records,
/// the manifest's count, checksum and size), as a careful forger would:
/// only the content digest still tells.
fn remove_one_document(dir: &Path, index: &str) {
    let export = dir.join(
        manifest_json(dir)["services"]["opensearch"]
            .as_str()
            .unwrap(),
    );
    let text =
        String::from_utf8(zstd::decode_all(fs::File::open(&export).unwrap()).unwrap()).unwrap();
    let mut removed = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        let mut value: Value = serde_json::from_str(line).unwrap();
        let kind = value["type"].as_str().unwrap_or_default().to_string();
        if kind == "doc" && value["index"] == index && !removed {
            removed = true;
            continue;
        }
        if (kind == "index_end" && value["name"] == index) || kind == "end" {
            let docs = value["docs"]
                .as_u64()
                .unwrap_or_else(|| panic!("no document count in {line}"));
            value["docs"] = (docs - 1).into();
        }
        lines.push(serde_json::to_string(&value).unwrap());
    }
    assert!(removed, "no document of {index} in the export:\n{text}");
    fs::write(
        &export,
        zstd::encode_all((lines.join("\n") + "\n").as_bytes(), 3).unwrap(),
    )
    .unwrap();
    let mut manifest = itbackup::manifest::Manifest::read_dir(dir).unwrap();
    let record = manifest
        .artifacts
        .get_mut(&itbackup::service::Service::Opensearch)
        .unwrap();
    *record.counts.get_mut(index).unwrap() -= 1;
    manifest.write(dir).unwrap();
    reseal(dir, itbackup::service::Service::Opensearch, &export);
}

#[test]
fn a_real_backup_restores_into_the_sandbox_checked_by_counts_and_digests() {
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j, Sandbox]);
    let sandbox = SandboxStack::from_env();
    sandbox.reset();
    PG.populate();
    OS.populate();
    NEO.populate();
    let fingerprints = || (PG.fingerprint(), OS.fingerprint(), NEO.fingerprint());
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    ok(
        &[
            "--root",
            root_arg,
            "backup",
            "--opensearch-method",
            "logical",
        ],
        &[],
    );
    let dir = only_backup(root.path());
    let before = fingerprints();

    // Never the servers backed up: by the same address, or another name of it.
    for host in ["127.0.0.1", "localhost"] {
        let config = source_config(root.path(), host);
        let err = fails(&drill_args(root_arg, "latest", &config), &[], exit::USAGE);
        assert!(
            err.contains("which is the server the backups come from"),
            "{err}"
        );
    }
    assert_eq!(fingerprints(), before, "a refused drill changed the source");

    // Never a server that holds data no drill put there.
    for sql in [
        "DROP DATABASE IF EXISTS itbackup_sandbox",
        "DROP DATABASE IF EXISTS precious",
        "CREATE DATABASE precious",
    ] {
        sandbox.psql("postgres", sql);
    }
    sandbox.psql(
        "precious",
        "CREATE TABLE keep (x int); INSERT INTO keep VALUES (1)",
    );
    let err = fails(
        &drill_args(root_arg, "latest", &sandbox.config),
        &[],
        exit::USAGE,
    );
    assert!(
        err.contains("holds data that no drill put there") && err.contains("database precious"),
        "{err}"
    );
    assert_eq!(sandbox.psql("precious", "SELECT count(*) FROM keep"), "1");
    assert!(
        !sandbox.databases().contains("sbx_pg"),
        "{}",
        sandbox.databases()
    );
    sandbox.psql("postgres", "DROP DATABASE precious");

    // The drill: restored, every count and digest equal, RTO measured; kept.
    let mut args = drill_args(root_arg, "latest", &sandbox.config);
    args.extend(["--keep", "--json"]);
    let v = json_of(&ok(&args, &[]));
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["drill"], "sandbox");
    let rto = v["rto_seconds"].as_f64().unwrap();
    assert!(
        rto > 0.0 && rto < v["rto_objective_seconds"].as_f64().unwrap(),
        "{v:#}"
    );
    for service in ["postgres", "opensearch", "neo4j"] {
        let s = &v["services"][service];
        assert_eq!(s["ok"], true, "{service}: {s:#}");
        assert!(
            s["counts_checked"].as_u64().unwrap() > 0,
            "{service}: {s:#}"
        );
    }
    for service in ["postgres", "opensearch"] {
        let s = &v["services"][service];
        assert!(
            s["digests_checked"].as_u64().unwrap() > 0,
            "{service}: {s:#}"
        );
    }
    assert_eq!(
        serde_json::from_slice::<Value>(&fs::read(dir.join("drill-validation.json")).unwrap())
            .unwrap(),
        v
    );
    assert!(
        sandbox.databases().contains("sbx_pg"),
        "{}",
        sandbox.databases()
    );
    assert_eq!(sandbox.psql("sbx_pg", "SELECT count(*) FROM t"), "3000");
    assert!(
        sandbox.indices().contains("sbx-os"),
        "{}",
        sandbox.indices()
    );
    assert!(sandbox.databases().contains("itbackup_sandbox"));
    assert_eq!(fingerprints(), before, "the drill changed the source");
    // status reports the sandbox drill as the last drill.
    let status = json_of(&itbackup(
        &["--root", root_arg, "--json", "status", "--offline"],
        &[],
    ));
    assert_eq!(status["last_drill"]["ok"], true, "{status:#}");

    // A backup missing one document, its checksums and counts made to agree:
    // it verifies, restores, and the content digest fails the drill. The
    // sandbox, marked by the drill before, is taken again, then emptied.
    remove_one_document(&dir, OS.index);
    ok(&["verify", "--path", dir.to_str().unwrap()], &[]);
    let err = fails(
        &drill_args(root_arg, dir.to_str().unwrap(), &sandbox.config),
        &[],
        exit::VERIFICATION_MISMATCH,
    );
    assert!(err.contains("sbx-os: content digest differs"), "{err}");
    assert_eq!(sandbox.databases(), "itbackup_sandbox,postgres");
    assert_eq!(sandbox.indices(), "itbackup_sandbox");
    assert_eq!(fingerprints(), before);

    PG.cleanup();
    OS.cleanup();
    NEO.cleanup();
}

/// `schedule --drill-target-config`: each backup is restored into the
/// sandbox and checked there, and the run reports it.
#[test]
fn the_scheduler_drills_each_backup_in_the_sandbox() {
    use std::io::{BufRead, BufReader};
    let _guard = exclusive(&[Postgres, Sandbox]);
    let sandbox = SandboxStack::from_env();
    sandbox.reset();
    PG.populate();
    let root = temp_root();
    let mut child = Command::new(bin())
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "--json",
            "schedule",
        ])
        .args([
            "--every",
            "1h",
            "--services",
            "postgres",
            "--drill-target-config",
        ])
        .arg(&sandbox.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start itbackup schedule");
    let _kill = KillOnPanic(child.id());
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .expect("the first run's JSON line")
        .unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let run: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(run["ok"], true, "{run:#}");
    assert_eq!(run["sandbox_drill"]["ok"], true, "{run:#}");
    assert!(run["sandbox_drill"]["rto_seconds"].as_f64().unwrap() > 0.0);
    let file = PathBuf::from(run["sandbox_drill"]["file"].as_str().unwrap());
    let v: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert!(
        v["services"]["postgres"]["digests_checked"]
            .as_u64()
            .unwrap()
            > 0,
        "{v:#}"
    );
    assert_eq!(sandbox.databases(), "itbackup_sandbox,postgres", "cleaned");
    PG.cleanup();
}
