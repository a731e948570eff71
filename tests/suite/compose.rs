//! Compose mode against the real servers, through a stand-in `docker`
//! (tests/fixtures/docker-standin/docker: these machines have no Docker
//! engine). The stand-in records every call and carries it out against the
//! testenv servers, so a compose backup and restore really moves the data.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Environment of a compose-mode run: the stand-in first on PATH, its call log,
/// two compose files and a project.
struct Stack {
    log: PathBuf,
    path: String,
    _dir: tempfile::TempDir,
}

impl Stack {
    fn new() -> Stack {
        let dir = temp_root();
        let standin = repo_root().join("tests/fixtures/docker-standin");
        Stack {
            log: dir.path().join("docker-calls.log"),
            path: format!("{}:{}", standin.display(), std::env::var("PATH").unwrap()),
            _dir: dir,
        }
    }

    fn command(&self, program: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("PATH", &self.path)
            .env("DOCKER_STANDIN_LOG", &self.log)
            .env(
                "IT_COMPOSE_FILES",
                "docker-compose.yml:docker-compose.override.yml",
            )
            .env("IT_COMPOSE_PROJECT", "infoterminal")
            .env("ITBACKUP_BIN", bin());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn itbackup(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        self.command(Path::new(bin()), args, extra)
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn succeeded(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// Nodes labelled `label`, asked over Bolt with a fresh connection (the
/// dump backup and restore stop and start the server in between).
fn neo4j_count(label: &str) -> i64 {
    Neo::connect().count(&format!("MATCH (n:{label}) RETURN count(n) AS n"))
}

fn neo4j_run(statement: &str) {
    Neo::connect().run(statement);
}

#[test]
fn compose_backup_and_restore_of_all_three_stores() {
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    // A little data in each store.
    psql("postgres", "DROP DATABASE IF EXISTS compose_shop");
    psql("postgres", "CREATE DATABASE compose_shop");
    psql(
        "compose_shop",
        "CREATE TABLE orders (id int PRIMARY KEY, item text); \
         INSERT INTO orders SELECT i, 'item ' || i FROM generate_series(1, 500) i",
    );
    opensearch(reqwest::Method::DELETE, "compose-docs", None);
    for i in 0..50 {
        opensearch(
            reqwest::Method::PUT,
            &format!("compose-docs/_doc/{i}?refresh=true"),
            Some(serde_json::json!({"n": i})),
        );
    }
    neo4j_run("MATCH (n) CALL { WITH n DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS");
    neo4j_run("UNWIND range(1, 300) AS i CREATE (:ComposeNode {i: i})");

    let stack = Stack::new();
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    succeeded(&stack.itbackup(
        &[
            "--root",
            root_arg,
            "backup",
            "--neo4j-method",
            "dump",
            "--opensearch-method",
            "snapshot",
        ],
        &[],
    ));
    let dir = only_backup(root.path());

    // Damage everything, restore through compose, and the data is back.
    psql("compose_shop", "DELETE FROM orders WHERE id > 100");
    opensearch(reqwest::Method::DELETE, "compose-docs", None);
    neo4j_run("MATCH (n:ComposeNode) WHERE n.i > 10 DELETE n");
    succeeded(&stack.itbackup(&restore_args(&dir, None), &[]));
    assert_eq!(psql("compose_shop", "SELECT count(*) FROM orders"), "500");
    opensearch(reqwest::Method::POST, "compose-docs/_refresh", None);
    assert_eq!(
        opensearch(reqwest::Method::GET, "compose-docs/_count", None)["count"],
        50
    );
    assert_eq!(neo4j_count("ComposeNode"), 300);

    // Every tool ran through `docker compose` with both files and the project;
    // the password went by name only.
    let calls = stack.calls();
    for needle in [
        "\texec\t-T\t-e\tPGUSER\t-e\tPGCONNECT_TIMEOUT\t-e\tPGPASSWORD\tpostgres\tpg_dump\t",
        "\texec\t-T\t-e\tPGUSER\t-e\tPGCONNECT_TIMEOUT\t-e\tPGPASSWORD\tpostgres\tpg_restore\t",
        "\tstop\tneo4j",
        "\trun\t--rm\t-T\t--no-deps\tneo4j\tneo4j-admin\tdatabase\tdump\t",
        "\trun\t--rm\t-T\t--no-deps\tneo4j\tneo4j-admin\tdatabase\tload\t",
        "\tstart\tneo4j",
        "\texec\t-T\topensearch\ttar\t",
    ] {
        assert!(
            calls.iter().any(|c| c.contains(needle)),
            "no call with {needle:?} in {calls:#?}"
        );
    }
    let password = required_env("PGPASSWORD");
    for call in &calls {
        assert!(
            call.starts_with("compose\t-f\tdocker-compose.yml\t-f\tdocker-compose.override.yml\t-p\tinfoterminal\t"),
            "{call}"
        );
        assert!(!call.contains("PGPASSWORD="), "{call}");
        assert!(!call.contains(&format!("={password}")), "{call}");
    }
    psql("postgres", "DROP DATABASE compose_shop");
    opensearch(reqwest::Method::DELETE, "compose-docs", None);
    neo4j_run("MATCH (n:ComposeNode) DELETE n");
}

#[test]
fn runbook_commands_work_word_for_word_in_compose_mode() {
    let _guard = exclusive(&[Postgres, Opensearch, Neo4j]);
    let stack = Stack::new();
    let work = temp_root();
    let out_dir = work.path().join("artifacts/backup/20250201_101500");
    let out_arg = out_dir.to_str().unwrap();
    let backup = stack.command(
        &repo_root().join("scripts/backup.sh"),
        &["--out", out_arg],
        &[("IT_COMPOSE_FILES", "docker-compose.yml")],
    );
    succeeded(&backup);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("backup-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["services"].as_object().unwrap().len(),
        3,
        "{manifest:#}"
    );
    let restore = stack.command(
        &repo_root().join("scripts/restore.sh"),
        &["--path", out_arg],
        &[("IT_COMPOSE_FILES", "docker-compose.yml")],
    );
    succeeded(&restore);
    assert!(stack
        .calls()
        .iter()
        .all(|c| c.starts_with("compose\t-f\tdocker-compose.yml\t")));
}

#[test]
fn dry_run_prints_the_docker_compose_command_lines() {
    let stack = Stack::new();
    let out = stack.itbackup(&["backup", "--dry-run", "--services", "postgres"], &[]);
    succeeded(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("docker compose -f docker-compose.yml -f docker-compose.override.yml -p infoterminal exec -T -e PGUSER -e PGCONNECT_TIMEOUT -e PGPASSWORD postgres pg_dump"),
        "{stdout}"
    );
    assert!(stack.calls().is_empty(), "a dry run must not call docker");
}

#[test]
fn docker_failures_give_the_runbook_advice_and_write_nothing() {
    // Each run takes itbackup's lock on the PostgreSQL server before docker fails.
    let _guard = exclusive(&[Postgres]);
    let stack = Stack::new();
    // Docker refusing is a refused tool; no docker at all, a plain failure.
    for (setting, expected, code) in [
        (
            ("STANDIN_FAIL", "permission"),
            "docker` group",
            exit::STORE_REFUSED,
        ),
        (
            ("STANDIN_FAIL", "no-service"),
            "IT_COMPOSE_SERVICE_POSTGRES",
            exit::STORE_REFUSED,
        ),
        (
            ("STANDIN_FAIL", "not-running"),
            "docker compose up -d",
            exit::STORE_REFUSED,
        ),
        (
            ("IT_DOCKER", "/nonexistent/docker"),
            "install Docker",
            exit::FAILURE,
        ),
    ] {
        let root = temp_root();
        let root_arg = root.path().to_str().unwrap();
        let out = stack.itbackup(
            &["--root", root_arg, "backup", "--services", "postgres"],
            &[setting],
        );
        assert_eq!(out.status.code(), Some(code), "{setting:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{setting:?}: {stderr}");
        let complete = std::fs::read_dir(root.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.path().join("backup-manifest.json").exists());
        assert!(
            !complete,
            "{setting:?}: a failed run left a complete backup"
        );
    }
}
