//! PostgreSQL end to end against the real server: back up, destroy, restore, compare.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

const DBS: [&str; 2] = ["itb_shop", "itb analytics"];

/// Two databases with many column types, a sequence, a view, an index, a function and a role.
fn create_fixture() {
    drop_fixture();
    psql("postgres", "CREATE ROLE itb_app LOGIN PASSWORD 'app-pw'");
    psql("postgres", "CREATE DATABASE itb_shop OWNER itb_app");
    psql("postgres", "CREATE DATABASE \"itb analytics\"");
    psql(
        "itb_shop",
        "CREATE SEQUENCE item_seq START 1000;
         CREATE TABLE items (
            id bigint PRIMARY KEY DEFAULT nextval('item_seq'),
            price numeric(12,2), name text, attrs jsonb, blob bytea, tags text[],
            created timestamptz, ref uuid, qty integer);
         INSERT INTO items (price, name, attrs, blob, tags, created, ref, qty)
            SELECT i * 1.25, 'item ' || i || E' \\u00e9\\t''q''', jsonb_build_object('i', i, 'nested', jsonb_build_array(i, 'x')),
                   decode(md5(i::text), 'hex'), ARRAY['a' || i, NULL, 'c'],
                   timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute',
                   md5(i::text)::uuid, CASE WHEN i % 7 = 0 THEN NULL ELSE i END
            FROM generate_series(1, 5000) i;
         CREATE INDEX items_name_idx ON items (name);
         CREATE VIEW expensive AS SELECT id, name FROM items WHERE price > 100;
         CREATE FUNCTION total_price() RETURNS numeric LANGUAGE sql AS 'SELECT sum(price) FROM items';
         ALTER TABLE items OWNER TO itb_app;",
    );
    psql(
        "itb analytics",
        "CREATE SCHEMA events;
         CREATE TABLE events.\"Hits\" (at timestamptz, path text, n bigint);
         INSERT INTO events.\"Hits\" SELECT now() - i * interval '1 s', '/p/' || i, i * 9007199254740 FROM generate_series(1, 2500) i;
         CREATE TABLE public.empty_table (x int);",
    );
}

fn drop_fixture() {
    for db in DBS {
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        );
    }
    psql("postgres", "DROP ROLE IF EXISTS itb_app");
}

/// Row count and content digest per table, plus the other objects the fixture made.
fn snapshot() -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    for (db, table) in [
        ("itb_shop", "public.items"),
        ("itb analytics", "events.\"Hits\""),
        ("itb analytics", "public.empty_table"),
    ] {
        let row = psql(
            db,
            &format!("SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') FROM {table} t"),
        );
        facts.insert(format!("{db}/{table}"), row);
    }
    facts.insert(
        "sequence".into(),
        psql("itb_shop", "SELECT last_value FROM item_seq"),
    );
    facts.insert(
        "view".into(),
        psql("itb_shop", "SELECT count(*) FROM expensive"),
    );
    facts.insert("function".into(), psql("itb_shop", "SELECT total_price()"));
    facts.insert(
        "index".into(),
        psql(
            "itb_shop",
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'items_name_idx'",
        ),
    );
    facts.insert(
        "role".into(),
        psql(
            "postgres",
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'itb_app'",
        ),
    );
    facts.insert(
        "owner".into(),
        psql(
            "itb_shop",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items'",
        ),
    );
    facts
}

fn round_trip(format: &str) {
    let _guard = exclusive(&[Postgres]);
    create_fixture();
    let before = snapshot();
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let dir = backup_into(root.path(), "postgres", &["--postgres-format", format], &[]);

    drop_fixture();
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'itb_shop'"
        ),
        "0"
    );

    ok(&["--root", root_arg, "restore", "--yes"], &[]);
    assert_eq!(snapshot(), before, "restored data differs ({format})");
    // The restore leaves planner statistics (its own ANALYZE, not autovacuum's).
    assert_eq!(
        psql(
            "itb_shop",
            "SELECT string_agg(relname, ', ') FROM pg_stat_user_tables WHERE last_analyze IS NULL"
        ),
        "",
        "tables without statistics after the restore ({format})"
    );

    // A second restore over the restored data gives the same result (idempotent).
    ok(
        &[
            "--root",
            root_arg,
            "restore",
            "--path",
            dir.to_str().unwrap(),
            "--yes",
        ],
        &[],
    );
    assert_eq!(snapshot(), before, "second restore differs ({format})");
    check_private(&dir);
}

/// Files we write are 0600, directories 0700.
fn check_private(dir: &Path) {
    let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path().display());
    }
}

#[test]
fn custom_format_round_trip_restores_everything() {
    round_trip("custom");
}

#[test]
fn plain_format_round_trip_restores_everything() {
    round_trip("plain");
}

#[test]
fn manifest_records_counts_and_validates_against_the_schema() {
    let _guard = exclusive(&[Postgres]);
    create_fixture();
    let root = temp_root();
    let out = ok(
        &[
            "--root",
            root.path().to_str().unwrap(),
            "--json",
            "backup",
            "--services",
            "postgres",
            "--timestamp",
            "20250201_101500",
        ],
        &[],
    );
    let dir = root.path().join("20250201_101500");
    let manifest = manifest_json(&dir);
    assert_eq!(manifest["timestamp"], "20250201_101500");
    assert_eq!(
        manifest["services"]["postgres"],
        "postgres_20250201_101500.tar"
    );
    let counts = &manifest["artifacts"]["postgres"]["counts"];
    assert_eq!(counts["itb_shop/public.items"], 5000);
    assert_eq!(counts["itb analytics/events.Hits"], 2500);
    assert_eq!(counts["itb analytics/public.empty_table"], 0);

    let schema: serde_json::Value =
        serde_json::from_slice(&fs::read(repo_root().join("docs/manifest.schema.json")).unwrap())
            .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&manifest)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "manifest does not match docs/manifest.schema.json: {errors:#?}"
    );

    let printed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(printed["ok"], true);
}

#[test]
fn runbook_commands_work_word_for_word() {
    let _guard = exclusive(&[Postgres]);
    create_fixture();
    let before = snapshot();
    let work = temp_root();
    let stamp = "20250201_101500";
    let out_dir = format!("artifacts/backup/{stamp}");
    let script = |name: &str, args: &[&str]| {
        let out = std::process::Command::new(repo_root().join("scripts").join(name))
            .args(args)
            .current_dir(work.path())
            .env("ITBACKUP_BIN", bin())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/{name} {args:?}\n{}",
            text(&out)
        );
    };
    script("backup.sh", &["--out", &out_dir, "--services", "postgres"]);
    assert!(work
        .path()
        .join(&out_dir)
        .join("backup-manifest.json")
        .exists());
    drop_fixture();
    script("restore.sh", &["--path", &out_dir]);
    assert_eq!(snapshot(), before);
    // The per-service helpers of the runbook's references.
    script("backup_postgres.sh", &["--out", "artifacts/backup/second"]);
    script(
        "restore_postgres.sh",
        &["--path", "artifacts/backup/second"],
    );
    assert_eq!(snapshot(), before);
}

#[test]
fn dry_run_changes_nothing_and_masks_the_password() {
    // A dry run neither locks nor reaches the server: no lock.
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let out = ok(
        &[
            "--root",
            root_arg,
            "backup",
            "--services",
            "postgres",
            "--dry-run",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pg_dump") && stdout.contains("PGPASSWORD=***"),
        "{stdout}"
    );
    let out = ok(
        &["--root", root_arg, "backup", "--services", "postgres"],
        &[("DRY_RUN", "1")],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("dry run"));
    assert_eq!(
        fs::read_dir(root.path()).unwrap().count(),
        0,
        "a dry run wrote something"
    );
}

/// Two databases a selective restore must tell apart; dropped however the
/// test ends.
struct TwoDatabases;

const SELECTED: &str = "itb_sel_a";
const OTHER: &str = "itb_sel_b";
const COPY: &str = "itb_sel_a_copy";

impl TwoDatabases {
    fn create() -> TwoDatabases {
        let made = TwoDatabases;
        made.drop_all();
        for db in [SELECTED, OTHER] {
            psql("postgres", &format!("CREATE DATABASE {db}"));
            psql(
                db,
                "CREATE TABLE t (id int PRIMARY KEY, v text); \
                 INSERT INTO t SELECT g, 'at backup' FROM generate_series(1, 50) g",
            );
        }
        made
    }
    fn set(db: &str, value: &str) {
        psql(db, &format!("UPDATE t SET v = '{value}'"));
        psql(db, "INSERT INTO t VALUES (1000, 'added')");
    }
    /// The distinct values and the row count of `db`'s table.
    fn state(db: &str) -> String {
        psql(
            db,
            "SELECT string_agg(DISTINCT v, ',' ORDER BY v) || ' ' || count(*) FROM t",
        )
    }
    fn drop_all(&self) {
        for db in [SELECTED, OTHER, COPY, "itb_sel_b_copy"] {
            psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            );
        }
    }
}

impl Drop for TwoDatabases {
    fn drop(&mut self) {
        self.drop_all();
    }
}

#[test]
fn some_databases_are_restored_alone_or_beside_the_live_ones() {
    let _guard = exclusive(&[Postgres]);
    let databases = TwoDatabases::create();
    let at_backup = "at backup 50";
    let root = temp_root();
    let dir = backup_into(root.path(), "postgres", &[], &[]);
    TwoDatabases::set(SELECTED, "changed");
    TwoDatabases::set(OTHER, "changed");
    let changed = "added,changed 51";
    let restore = Cmd::restore_path(&dir).services("postgres").yes();
    let owned_root = temp_root();

    // A name the backup does not hold: refused before anything changes.
    let err = restore
        .clone()
        .arg("--databases")
        .arg("itb_sel_nope")
        .fails(&[], exit::USAGE);
    assert!(
        err.contains("itb_sel_nope") && err.contains(SELECTED),
        "{err}"
    );
    assert_eq!(TwoDatabases::state(SELECTED), changed);

    // The dry run's plan names what this selection touches, and nothing else.
    let plan = text(
        &restore
            .clone()
            .arg("--rename")
            .arg(format!("{SELECTED}={COPY}"))
            .arg("--dry-run")
            .ok(&[]),
    );
    assert!(plan.contains("beside the live one"), "{plan}");
    assert!(!plan.contains(OTHER), "{plan}");

    // Only the selected database goes back; the other keeps its changes.
    // (--sequential: one store after the other, the other way through restore.rs)
    restore
        .clone()
        .arg("--databases")
        .arg(SELECTED)
        .arg("--sequential")
        .ok(&[]);
    assert_eq!(TwoDatabases::state(SELECTED), at_backup);
    assert_eq!(TwoDatabases::state(OTHER), changed);

    // Beside the live database: the copy is the backup's, the live one untouched.
    TwoDatabases::set(SELECTED, "changed again");
    let beside = restore
        .clone()
        .arg("--rename")
        .arg(format!("{SELECTED}={COPY}"));
    beside.ok(&[]);
    assert_eq!(TwoDatabases::state(COPY), at_backup);
    assert_eq!(TwoDatabases::state(SELECTED), "added,changed again 51");
    assert_eq!(TwoDatabases::state(OTHER), changed);

    // The copy's name is taken now: refused, and nothing changes.
    psql(COPY, "UPDATE t SET v = 'inspected'");
    let err = beside.fails(&[], exit::USAGE);
    assert!(err.contains(COPY) && err.contains("exists"), "{err}");
    assert_eq!(TwoDatabases::state(COPY), "inspected 50");

    // A copy that does not load (its owner role is gone and --globals was
    // not given) is dropped again; the live database stays as it was.
    psql("postgres", "DROP ROLE IF EXISTS itb_sel_owner");
    psql("postgres", "CREATE ROLE itb_sel_owner");
    psql(OTHER, "ALTER TABLE t OWNER TO itb_sel_owner");
    let owned = backup_into(owned_root.path(), "postgres", &[], &[]);
    psql(OTHER, "ALTER TABLE t OWNER TO postgres");
    psql("postgres", "DROP ROLE itb_sel_owner");
    let err = Cmd::restore_path(&owned)
        .services("postgres")
        .yes()
        .arg("--rename")
        .arg(format!("{OTHER}=itb_sel_b_copy"))
        .fails(&[], exit::STORE_REFUSED);
    assert!(err.contains("itb_sel_owner"), "{err}");
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'itb_sel_b_copy'"
        ),
        "0",
        "the copy that failed to load was left behind"
    );
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'itbackup\\_%'"
        ),
        "0",
        "the restore left a database of its own"
    );
    assert_eq!(TwoDatabases::state(OTHER), changed);

    // A plain-format backup is one script: it cannot be split.
    let plain_root = temp_root();
    let plain = backup_into(
        plain_root.path(),
        "postgres",
        &["--postgres-format", "plain"],
        &[],
    );
    let err = Cmd::restore_path(&plain)
        .services("postgres")
        .yes()
        .arg("--databases")
        .arg(SELECTED)
        .fails(&[], exit::USAGE);
    assert!(err.contains("custom-format"), "{err}");
    assert_eq!(TwoDatabases::state(SELECTED), "added,changed again 51");
    drop(databases);
}

/// `--switch`: the database is restored beside the live one and switched in
/// at the end; a session connected to it is ended by the switch, the other
/// database is untouched. A failure found before the switch (a restored
/// count that differs from the manifest) leaves the live database as it
/// was; `--keep-old` keeps the old one under a dated name.
#[test]
fn switch_restores_beside_and_switches_names_at_the_end() {
    let _guard = exclusive(&[Postgres]);
    let databases = TwoDatabases::create();
    let at_backup = "at backup 50";
    let root = temp_root();
    let dir = backup_into(root.path(), "postgres", &[], &[]);
    TwoDatabases::set(SELECTED, "changed");
    TwoDatabases::set(OTHER, "changed");
    let changed = "added,changed 51";
    let switch = Cmd::restore_path(&dir)
        .services("postgres")
        .yes()
        .arg("--databases")
        .arg(SELECTED)
        .arg("--switch");
    let leftovers = || {
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname LIKE 'itbackup\\_%' OR datname LIKE '{SELECTED}\\_before\\_%'"),
        )
    };

    // A count that differs, found after the load and before the switch.
    let mut manifest = itbackup::manifest::Manifest::read_dir(&dir).unwrap();
    let good = manifest.clone();
    let key = format!("{SELECTED}/public.t");
    *manifest
        .artifacts
        .get_mut(&itbackup::service::Service::Postgres)
        .unwrap()
        .counts
        .get_mut(&key)
        .unwrap_or_else(|| panic!("no count {key}")) += 1;
    manifest.write(&dir).unwrap();
    let err = switch.fails(&[], exit::VERIFICATION_MISMATCH);
    assert!(err.contains("nothing was switched"), "{err}");
    assert_eq!(
        TwoDatabases::state(SELECTED),
        changed,
        "the live database changed"
    );
    assert_eq!(leftovers(), "0", "the failed switch left a database");
    good.write(&dir).unwrap();

    // A session stays connected to the live database while the restore runs.
    let mut session = std::process::Command::new(pg_tool("psql"))
        .args(["-X", "-d", SELECTED, "-c", "SELECT pg_sleep(600)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let connected = std::time::Instant::now();
    while psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{SELECTED}' AND query LIKE '%pg_sleep%'"),
    ) != "1"
    {
        assert!(connected.elapsed() < std::time::Duration::from_secs(30), "the session never connected");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let plan = text(&switch.clone().arg("--dry-run").ok(&[]));
    assert!(
        plan.contains("beside the live one") && plan.contains("drop the old databases"),
        "{plan}"
    );
    let out = switch.ok(&[]);
    assert!(
        text(&out).contains("switched to the restored databases"),
        "{}",
        text(&out)
    );
    assert_eq!(TwoDatabases::state(SELECTED), at_backup);
    assert_eq!(
        TwoDatabases::state(OTHER),
        changed,
        "the other database was restored too"
    );
    let ended = session.wait().unwrap();
    assert!(
        !ended.success(),
        "the session on the old database was not ended"
    );
    assert_eq!(leftovers(), "0", "the old database was not dropped");

    // --keep-old: the old database stays, under a dated name.
    TwoDatabases::set(SELECTED, "changed again");
    switch.clone().arg("--keep-old").ok(&[]);
    assert_eq!(TwoDatabases::state(SELECTED), at_backup);
    let kept = psql(
        "postgres",
        &format!("SELECT datname FROM pg_database WHERE datname LIKE '{SELECTED}\\_before\\_%'"),
    );
    assert!(!kept.is_empty(), "--keep-old kept nothing");
    assert_eq!(TwoDatabases::state(&kept), "added,changed again 51");
    psql(
        "postgres",
        &format!("DROP DATABASE \"{kept}\" WITH (FORCE)"),
    );

    // A plain backup cannot be switched.
    let plain_root = temp_root();
    let plain = backup_into(
        plain_root.path(),
        "postgres",
        &["--postgres-format", "plain"],
        &[],
    );
    let err = Cmd::restore_path(&plain)
        .services("postgres")
        .yes()
        .arg("--switch")
        .fails(&[], exit::USAGE);
    assert!(
        err.contains("--switch needs a custom-format backup"),
        "{err}"
    );
    drop(databases);
}
