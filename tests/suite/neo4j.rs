//! Neo4j end to end against the real server (testenv), both methods: build a
//! graph with every property type Neo4j stores and every kind of schema object
//! Community edition has, back it up, damage it, restore it, and compare the
//! whole graph and schema value by value.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use neo4rs::{query, BoltType};

/// What the tests compare: the whole graph and its schema.
impl Neo {
    /// Every node and relationship, rendered canonically and sorted, so two
    /// graphs compare equal exactly when they hold the same data (element ids
    /// aside, which no restore can keep). Cypher renders each value as text
    /// with its type: neo4rs 0.8 misreads the integers -16..-1, so no value
    /// under test may pass through its integer decoding.
    fn snapshot(&self) -> Vec<String> {
        let mut nodes = BTreeMap::new();
        for row in self.rows(&format!(
            "MATCH (x) RETURN elementId(x) AS id, labels(x) AS labels, {RENDER} AS props"
        )) {
            let mut labels: Vec<String> = row.get("labels").unwrap();
            labels.sort();
            nodes.insert(
                row.get::<String>("id").unwrap(),
                format!("({} {})", labels.join(":"), rendered(&row)),
            );
        }
        let mut out: Vec<String> = nodes.values().cloned().collect();
        for row in self.rows(&format!(
            "MATCH (a)-[x]->(b) RETURN elementId(a) AS a, type(x) AS t, {RENDER} AS props, elementId(b) AS b"
        )) {
            out.push(format!(
                "{}-[{} {}]->{}",
                nodes[&row.get::<String>("a").unwrap()],
                row.get::<String>("t").unwrap(),
                rendered(&row),
                nodes[&row.get::<String>("b").unwrap()]
            ));
        }
        out.sort();
        out
    }

    /// Constraints and indexes: name, kind, what they cover, and their options.
    fn schema(&self) -> Vec<String> {
        let mut out = Vec::new();
        for row in self.rows(
            "SHOW CONSTRAINTS YIELD name, type, entityType, labelsOrTypes, properties RETURN *",
        ) {
            out.push(format!(
                "constraint {} {} {} {:?} {:?}",
                row.get::<String>("name").unwrap(),
                row.get::<String>("type").unwrap(),
                row.get::<String>("entityType").unwrap(),
                row.get::<Vec<String>>("labelsOrTypes").unwrap_or_default(),
                row.get::<Vec<String>>("properties").unwrap_or_default(),
            ));
        }
        for row in self.rows(
            "SHOW INDEXES YIELD name, type, entityType, labelsOrTypes, properties, options, owningConstraint, state \
             RETURN name, type, entityType, labelsOrTypes, properties, \
             [k IN keys(options.indexConfig) | k + '=' + CASE WHEN valueType(options.indexConfig[k]) STARTS WITH 'LIST' \
               THEN reduce(s = '', v IN options.indexConfig[k] | s + toString(v) + ',') \
               ELSE toString(options.indexConfig[k]) END] AS config, owningConstraint, state",
        ) {
            let mut config: Vec<String> = row.get("config").unwrap();
            config.sort();
            out.push(format!(
                "index {} {} {} {:?} {:?} {:?} owner={:?} {}",
                row.get::<String>("name").unwrap(),
                row.get::<String>("type").unwrap(),
                row.get::<String>("entityType").unwrap(),
                row.get::<Vec<String>>("labelsOrTypes").unwrap_or_default(),
                row.get::<Vec<String>>("properties").unwrap_or_default(),
                config,
                row.get::<String>("owningConstraint").ok(),
                row.get::<String>("state").unwrap(),
            ));
        }
        out.sort();
        out
    }
}

/// `[[key, type, text], …]` of the properties of `x`. Integer lists also come
/// raw: Cypher calls a byte array LIST<INTEGER>, and only the Bolt value tells
/// a byte array from a list of integers.
const RENDER: &str = "[k IN keys(x) | [k, valueType(x[k]), CASE
    WHEN valueType(x[k]) STARTS WITH 'LIST<INTEGER' THEN [x[k], [v IN x[k] | toString(v)]]
    WHEN valueType(x[k]) STARTS WITH 'LIST' THEN [v IN x[k] | toString(v)]
    ELSE toString(x[k]) END]]";

/// The rendered properties of a row, sorted by key.
fn rendered(row: &neo4rs::Row) -> String {
    let props: BoltType = row.get("props").unwrap();
    let BoltType::List(items) = props else {
        panic!("properties render as a list: {props:?}")
    };
    let mut items: Vec<String> = items.value.iter().map(canon).collect();
    items.sort();
    format!("{{{}}}", items.join(", "))
}

/// Equal sorted lists, or a panic that shows only the differences.
fn assert_same(what: &str, expected: &[String], actual: &[String]) {
    if expected == actual {
        return;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !actual.contains(e))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .iter()
        .filter(|a| !expected.contains(a))
        .take(5)
        .collect();
    panic!(
        "{what} differ: {} expected, {} found\nmissing (first 5): {missing:#?}\nunexpected (first 5): {extra:#?}",
        expected.len(),
        actual.len()
    );
}

/// A Bolt value as text with map keys sorted (Bolt maps have no order).
fn canon(value: &BoltType) -> String {
    match value {
        BoltType::Map(map) => {
            let mut entries: Vec<String> = map
                .value
                .iter()
                .map(|(k, v)| format!("{}: {}", k.value, canon(v)))
                .collect();
            entries.sort();
            format!("{{{}}}", entries.join(", "))
        }
        BoltType::List(items) => format!(
            "[{}]",
            items.value.iter().map(canon).collect::<Vec<_>>().join(", ")
        ),
        other => format!("{other:?}"),
    }
}

/// Every property type Neo4j stores, edge values, odd names, multiple labels,
/// nodes without labels or properties, self-loops, parallel relationships, a
/// few thousand nodes to cross batch boundaries, and every Community schema kind.
fn build_graph(neo: &Neo) {
    neo.wipe();
    neo.run(
        "CREATE (a:Person:`Odd Label` {uid: 1, name: 'Zoë \"Q\" \\n line\\ttab \\\\ back', `key with space`: 'v',
           neg1: -1, neg16: -16, neg17: -17, maxint: 9223372036854775807, minint: -9223372036854775808, score: 1.5, tiny: 4.9e-324,
           big: 1.7976931348623157e308, negzero: -0.0, nan: 0.0/0.0, inf: 1.0/0.0, ninf: -1.0/0.0,
           yes: true, no: false, empty: '', nolist: [], sevenths: [x IN range(1, 300) | x / 7.0], third: 1.0 / 3.0,
           tags: ['a', 'b', ''], nums: [1, -2, 3], floats: [0.1, 2.5], flags: [true, false],
           born: date('1987-06-05'), early: date('-0044-03-15'),
           berlin: datetime('2024-03-31T02:30:00.123456789[Europe/Berlin]'),
           kathmandu: datetime('2024-03-10T02:30:00+05:45'),
           utc: datetime('2024-01-01T00:00:00Z'),
           local: localdatetime('2024-01-02T03:04:05.000000006'),
           t: time('12:34:56.789+01:00'), lt: localtime('23:59:59.999999999'),
           dur: duration('P1Y2M3DT4H5M6.000000007S'), negdur: duration('-PT1.5S'),
           home: point({x: 1.5, y: -2.5}), geo: point({longitude: 13.4, latitude: 52.5}),
           geo3: point({longitude: 13.4, latitude: 52.5, height: 34.0}), cart3: point({x: 1, y: 2, z: 3}),
           dates: [date('2020-01-01'), date('2021-02-03')],
           stamps: [datetime('2020-01-01T00:00:00Z'), datetime('2020-06-01T12:00:00[America/New_York]')],
           times: [localtime('01:02:03'), localtime('04:05:06')],
           durs: [duration('P1D'), duration('PT1S')],
           pts: [point({x: 1, y: 2}), point({x: 3.5, y: 4})]})
         CREATE (b:Person {uid: 2, name: 'Bob'})
         CREATE (c:Item {title: 'only label', a: 1, b: 'x', emb: [0.1, 0.2, 0.3]})
         CREATE ()
         CREATE (:`Weird``Label` {`we``ird`: 1})
         CREATE (a)-[:KNOWS {since: 2020, at: datetime('2020-02-02T02:02:02Z'), where: point({x: 0, y: 0})}]->(b)
         CREATE (a)-[:KNOWS {since: 1999}]->(a)
         CREATE (a)-[:LIKES {rid: 1, w: 1}]->(c)
         CREATE (a)-[:LIKES {rid: 2, w: 1}]->(c)
         CREATE (b)-[:LIKES {rid: 3}]->(c)
         CREATE (b)-[:`REL WITH SPACE`]->(b)
         CREATE (b)-[:PARALLEL]->(c)
         CREATE (b)-[:PARALLEL]->(c)",
    );
    neo.run_query(
        query("MATCH (a:Person {uid: 1}) SET a.blob = $blob, a.noblob = $empty")
            .param(
                "blob",
                BoltType::Bytes(neo4rs::BoltBytes::new(bytes::Bytes::from(
                    (0..=255u8).collect::<Vec<u8>>(),
                ))),
            )
            .param(
                "empty",
                BoltType::Bytes(neo4rs::BoltBytes::new(bytes::Bytes::new())),
            ),
    );
    // Enough nodes and relationships to cross every batch boundary.
    neo.run(
        "UNWIND range(1, 6000) AS i
         CREATE (:Bulk {n: i, name: 'bulk-' + toString(i), even: i % 2 = 0})",
    );
    neo.run(
        "MATCH (x:Bulk) WHERE x.n < 6000 MATCH (y:Bulk {n: x.n + 1})
         CREATE (x)-[:NEXT {d: x.n}]->(y)",
    );
    for statement in [
        "CREATE CONSTRAINT person_uid FOR (p:Person) REQUIRE p.uid IS UNIQUE",
        "CREATE CONSTRAINT likes_rid FOR ()-[r:LIKES]-() REQUIRE r.rid IS UNIQUE",
        "CREATE CONSTRAINT bulk_n FOR (b:Bulk) REQUIRE b.n IS UNIQUE",
        "CREATE INDEX person_name FOR (p:Person) ON (p.name)",
        "CREATE INDEX item_composite FOR (i:Item) ON (i.a, i.b)",
        "CREATE INDEX knows_since FOR ()-[r:KNOWS]-() ON (r.since)",
        "CREATE TEXT INDEX person_name_text FOR (p:Person) ON (p.name)",
        "CREATE POINT INDEX person_home FOR (p:Person) ON (p.home) OPTIONS {indexConfig: {`spatial.cartesian.min`: [-100.0, -100.0], `spatial.cartesian.max`: [100.0, 100.0]}}",
        "CREATE FULLTEXT INDEX names_ft FOR (n:Person|Item) ON EACH [n.name, n.title] OPTIONS {indexConfig: {`fulltext.analyzer`: 'english'}}",
        "CREATE FULLTEXT INDEX rel_ft FOR ()-[r:KNOWS|LIKES]-() ON EACH [r.note]",
        "CREATE VECTOR INDEX item_emb FOR (i:Item) ON (i.emb) OPTIONS {indexConfig: {`vector.dimensions`: 3, `vector.similarity_function`: 'cosine'}}",
    ] {
        neo.run(statement);
    }
    neo.run("CALL db.awaitIndexes(300)");
}

fn backup(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> std::path::PathBuf {
    backup_into(root, "neo4j", extra, env)
}

fn restore(dir: &Path, env: &[(&str, &str)]) -> Output {
    ok(&restore_args(dir, Some("neo4j")), env)
}

/// A restore of the damaged Neo4j artifact in `dir`, which must be refused; its stderr.
fn restore_fails(dir: &Path) -> String {
    fails(&restore_args(dir, Some("neo4j")), &[], exit::DAMAGED_BACKUP)
}

/// Damage the graph in every way a restore must undo.
fn damage(neo: &Neo) {
    neo.run("MATCH (p:Person {uid: 2}) DETACH DELETE p");
    neo.run("MATCH (b:Bulk) WHERE b.n > 5000 SET b.name = 'changed'");
    neo.run("CREATE (:Intruder {x: 1})-[:BAD]->(:Intruder {x: 2})");
    neo.run("DROP INDEX person_name_text");
    neo.run("DROP CONSTRAINT likes_rid");
    neo.run("CREATE INDEX intruder_x FOR (i:Intruder) ON (i.x)");
}

#[test]
fn logical_round_trip_restores_every_value_and_schema_object() {
    let _guard = exclusive(&[Neo4j]);
    let neo = Neo::connect();
    build_graph(&neo);
    let graph_before = neo.snapshot();
    let schema_before = neo.schema();
    assert!(graph_before.len() > 12_000, "{}", graph_before.len());

    let root = temp_root();
    let dir = backup(root.path(), &["--neo4j-method", "logical"], &[]);
    let manifest = manifest_json(&dir);
    let record = &manifest["artifacts"]["neo4j"];
    assert_eq!(record["method"], "logical", "{manifest:#}");
    assert_eq!(record["counts"]["label:Bulk"], 6000, "{manifest:#}");
    assert_eq!(record["counts"]["type:NEXT"], 5999, "{manifest:#}");
    assert!(
        record["counts"]["nodes"].as_u64().unwrap() >= 6005,
        "{manifest:#}"
    );
    ok(&["verify", "--path", dir.to_str().unwrap()], &[]);

    damage(&neo);
    assert!(neo.snapshot() != graph_before, "the damage must show");
    restore(&dir, &[]);
    assert_same("graphs", &graph_before, &neo.snapshot());
    assert_same("schemas", &schema_before, &neo.schema());
    // Restore leaves no trace of its own bookkeeping.
    assert_eq!(neo.count("MATCH (n:__ItbRestore) RETURN count(n) AS n"), 0);
    assert_eq!(
        neo.count("MATCH (n) WHERE n.__itb_id IS NOT NULL RETURN count(n) AS n"),
        0
    );

    // Restoring the same backup again is harmless and gives the same graph,
    // also with the relationships loaded in export order (no scratch files).
    let config = root.path().join("ungrouped.toml");
    std::fs::write(&config, "[neo4j]\ngroup_relationships = false\n").unwrap();
    let second = restore(&dir, &[("IT_CONFIG", config.to_str().unwrap())]);
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in export order"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_same("graphs", &graph_before, &neo.snapshot());
    assert_same("schemas", &schema_before, &neo.schema());
}

#[test]
fn logical_backup_during_writes_restores_a_consistent_graph() {
    let _guard = exclusive(&[Neo4j]);
    let neo = Neo::connect();
    neo.wipe();
    neo.run("UNWIND range(1, 20000) AS i CREATE (:Base {n: i})");
    neo.run("MATCH (a:Base) WHERE a.n % 2 = 0 MATCH (b:Base {n: a.n - 1}) CREATE (a)-[:PAIR]->(b)");

    // A writer adds connected pairs and deletes others while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let neo = Neo::connect();
            let mut round = 0i64;
            // Bounded, so that a backup that never ends fails the test
            // instead of filling the disk.
            while !stop.load(Ordering::Relaxed) && round < 1000 {
                round += 1;
                neo.run(&format!(
                    "UNWIND range(1, 50) AS i CREATE (:Live {{round: {round}, i: i}})-[:LINK]->(:Live {{round: {round}, i: -i}})"
                ));
                neo.run(&format!(
                    "MATCH (a:Base) WHERE a.n > 20000 - {round} * 10 AND a.n <= 20000 - ({round} - 1) * 10 DETACH DELETE a"
                ));
            }
            round
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let root = temp_root();
    let dir = backup(root.path(), &[], &[]);
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(rounds > 1, "the writer must have run during the backup");

    restore(&dir, &[]);
    // No relationship lost an endpoint, and :LINK pairs are whole.
    assert_eq!(
        neo.count("MATCH (a:Live) WHERE a.i > 0 AND NOT (a)-[:LINK]->() RETURN count(a) AS n"),
        0,
        "a restored :Live source node lost its relationship"
    );
    assert_eq!(
        neo.count("MATCH ()-[r:LINK]->(b) WHERE b.i > 0 RETURN count(r) AS n"),
        0
    );
    let manifest = manifest_json(&dir);
    assert_eq!(
        manifest["artifacts"]["neo4j"]["counts"]["nodes"]
            .as_i64()
            .unwrap(),
        neo.count("MATCH (n) RETURN count(n) AS n"),
        "{manifest:#}"
    );
    neo.wipe();
}

/// A thread that runs `statement(round)` until `stop` (at most 2000 rounds,
/// so that a backup that never ends fails the test); returns its rounds.
fn churn(
    stop: &Arc<AtomicBool>,
    statement: impl Fn(i64) -> String + Send + 'static,
) -> std::thread::JoinHandle<i64> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let neo = Neo::connect();
        let mut round = 0i64;
        while !stop.load(Ordering::Relaxed) && round < 2000 {
            round += 1;
            // A write may lose a race with the other writer: that is the point.
            let _ = neo.rt.block_on(neo.graph.run(query(&statement(round))));
        }
        round
    })
}

#[test]
fn logical_backups_survive_random_deletes_between_and_during_their_passes() {
    let _guard = exclusive(&[Neo4j]);
    let neo = Neo::connect();
    neo.wipe();
    neo.run("UNWIND range(1, 30000) AS i CREATE (:Base {n: i, name: 'node ' + toString(i)})");
    neo.run("MATCH (a:Base) WHERE a.n % 3 <> 0 MATCH (b:Base {n: a.n + 1}) CREATE (a)-[:NEXT {w: a.n}]->(b)");
    let top = neo.count("MATCH (x) RETURN max(id(x)) AS n");

    // One writer links new nodes to random existing ones; another deletes
    // random nodes (with their relationships), while the backups run.
    let stop = Arc::new(AtomicBool::new(false));
    let creator = churn(&stop, move |round| {
        format!(
            "UNWIND range(1, 40) AS i MATCH (x) WHERE id(x) = toInteger(rand() * {top}) \
             CREATE (x)-[:LINK {{round: {round}}}]->(:Live {{round: {round}, i: i}})"
        )
    });
    let deleter = churn(&stop, move |_| {
        format!(
            "UNWIND range(1, 40) AS i MATCH (x) WHERE id(x) = toInteger(rand() * {top}) DETACH DELETE x"
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let root = temp_root();
        let root_arg = root.path().to_str().unwrap();
        let out = itbackup(&["--root", root_arg, "backup", "--services", "neo4j"], &[]);
        let verified = out
            .status
            .success()
            .then(|| itbackup(&["--root", root_arg, "verify"], &[]));
        outcomes.push((out, verified));
    }
    stop.store(true, Ordering::Relaxed);
    let (created, deleted) = (creator.join().unwrap(), deleter.join().unwrap());
    assert!(
        created > 1 && deleted > 1,
        "the writers must have run during the backups"
    );
    for (out, verified) in &outcomes {
        assert!(
            out.status.success(),
            "backup under deletes failed\n{}",
            text(out)
        );
        let verified = verified.as_ref().unwrap();
        assert!(
            verified.status.success(),
            "verify failed\n{}",
            text(verified)
        );
    }
    neo.wipe();
}

#[test]
fn dump_round_trip_stops_and_starts_the_server_and_repairs_a_database_that_cannot_start() {
    let _guard = exclusive(&[Neo4j]);
    required_env("IT_NEO4J_STOP_CMD");
    required_env("IT_NEO4J_ADMIN");
    let neo = Neo::connect();
    build_graph(&neo);
    let graph_before = neo.snapshot();
    let schema_before = neo.schema();
    let admin = required_env("IT_NEO4J_ADMIN");
    let env = [("IT_NEO4J_ADMIN", admin.as_str())];

    let root = temp_root();
    let dir = backup(root.path(), &["--neo4j-method", "dump"], &env);
    let manifest = manifest_json(&dir);
    let file = manifest["artifacts"]["neo4j"]["file"].as_str().unwrap();
    assert!(
        file.starts_with("neo4j_") && file.ends_with(".dump"),
        "{manifest:#}"
    );
    assert_eq!(manifest["artifacts"]["neo4j"]["method"], "neo4j-admin-dump");
    // Its position: the moment the server was stopped, inside the backup's run.
    let record = &manifest["artifacts"]["neo4j"];
    let position = &record["position"];
    assert_eq!(position["basis"], "server_stopped", "{position}");
    let at = |v: &serde_json::Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let stopped = at(&position["taken_at"]);
    assert!(
        at(&record["started_at"]) <= stopped && stopped <= at(&record["finished_at"]),
        "{record:#}"
    );
    assert_eq!(manifest["consistency"]["stores"]["neo4j"]["kind"], "point");
    // The server is back after the backup.
    let neo = Neo::connect();
    damage(&neo);
    let damaged = neo.snapshot();
    drop(neo);

    // A dump from a newer Neo4j is refused before the server is stopped.
    let set_version = |version: &str| {
        let mut manifest = itbackup::manifest::Manifest::read_dir(&dir).unwrap();
        let record = manifest
            .artifacts
            .get_mut(&itbackup::service::Service::Neo4j)
            .unwrap();
        let real = std::mem::replace(&mut record.server_version, version.to_string());
        manifest.write(&dir).unwrap();
        real
    };
    let real_version = set_version("99.0.0");
    let err = fails(&restore_args(&dir, None), &env, 1);
    assert!(err.contains("newer than this server's"), "{err}");
    assert_same("graphs", &damaged, &Neo::connect().snapshot());
    set_version(&real_version);

    // A dump this neo4j-admin cannot read (its checksum made to match) is
    // refused while the server still runs, before the store is overwritten.
    let dump = dir.join(file);
    let original = std::fs::read(&dump).unwrap();
    std::fs::write(
        &dump,
        b"not a Neo4j dump at all, though the manifest vouches for it",
    )
    .unwrap();
    reseal(&dir, itbackup::service::Service::Neo4j, &dump);
    let err = fails(&restore_args(&dir, None), &env, exit::DAMAGED_BACKUP);
    assert!(
        err.contains("check the dump (neo4j-admin database load --info)"),
        "{err}"
    );
    assert!(err.contains("the server still runs"), "{err}");
    assert_same("graphs", &damaged, &Neo::connect().snapshot());
    std::fs::write(&dump, original).unwrap();
    reseal(&dir, itbackup::service::Service::Neo4j, &dump);

    // A database the server cannot start: a backup says what is wrong and
    // how to repair it; the restore of the dump repairs it.
    let _repair = EmptyDatabaseOnFailure;
    break_the_user_database();
    let root_arg = root.path().to_str().unwrap();
    let err = fails(
        &["backup", "--root", root_arg, "--services", "neo4j"],
        &[],
        exit::STORE_REFUSED,
    );
    assert!(err.contains("database neo4j is offline"), "{err}");
    assert!(
        err.contains("restore a backup taken with --neo4j-method dump"),
        "{err}"
    );

    restore(&dir, &env);
    let neo = Neo::connect();
    assert_same("graphs", &graph_before, &neo.snapshot());
    assert_same("schemas", &schema_before, &neo.schema());
    neo.wipe();
}

/// Run an operator's lifecycle command (IT_NEO4J_STOP_CMD / START_CMD).
fn lifecycle(variable: &str) {
    let command = required_env(variable);
    let out = Command::new("sh").args(["-c", &command]).output().unwrap();
    assert!(
        out.status.success(),
        "{variable}: {command}\n{}",
        text(&out)
    );
}

/// Until disarmed, gives the server an empty user database again when
/// dropped, so that a failing test leaves no database the next tests cannot
/// use.
struct EmptyDatabaseOnFailure;

impl Drop for EmptyDatabaseOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        lifecycle("IT_NEO4J_STOP_CMD");
        let data = Path::new(&required_env("IT_NEO4J_DATA")).to_path_buf();
        for dir in ["databases/neo4j", "transactions/neo4j"] {
            let _ = std::fs::remove_dir_all(data.join(dir));
        }
        lifecycle("IT_NEO4J_START_CMD");
    }
}

/// What a kill -9 inside `neo4j-admin database load` leaves behind: a store
/// the server cannot start. The server itself comes up (its system database
/// answers); the user database stays offline.
fn break_the_user_database() {
    lifecycle("IT_NEO4J_STOP_CMD");
    let store = Path::new(&required_env("IT_NEO4J_DATA")).join("databases/neo4j/neostore");
    let mut bytes = std::fs::read(&store).unwrap();
    bytes.iter_mut().take(4096).for_each(|b| *b = !*b);
    std::fs::write(&store, bytes).unwrap();
    lifecycle("IT_NEO4J_START_CMD");
}

#[test]
fn an_interrupted_logical_restore_can_simply_be_run_again() {
    let _guard = exclusive(&[Neo4j]);
    let neo = Neo::connect();
    build_graph(&neo);
    let graph_before = neo.snapshot();
    let schema_before = neo.schema();
    let root = temp_root();
    let dir = backup(root.path(), &[], &[]);
    damage(&neo);
    // Killed while the graph is wiped or being loaded (all 6,000 :Bulk nodes
    // survive the damage, so fewer means the restore is under way).
    let half_way = || neo.count("MATCH (n:Bulk) RETURN count(n) AS n") < 6000;
    let dir_arg = dir.to_str().unwrap();
    let killed = kill_when(
        &["restore", "--path", dir_arg, "--services", "neo4j", "--yes"],
        half_way,
    );
    assert!(
        killed,
        "the restore finished before it could be interrupted"
    );
    restore(&dir, &[]);
    assert_same("graphs", &graph_before, &neo.snapshot());
    assert_same("schemas", &schema_before, &neo.schema());
    neo.wipe();
}

fn itbackup_without(args: &[&str], remove: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for name in remove {
        cmd.env_remove(name);
    }
    cmd.output().unwrap()
}

#[test]
fn dump_without_stop_and_start_commands_is_refused_and_changes_nothing() {
    let _guard = exclusive(&[Neo4j]);
    let neo = Neo::connect();
    neo.wipe();
    neo.run("CREATE (:Canary {alive: true})");
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let out = itbackup_without(
        &[
            "--root",
            root_arg,
            "backup",
            "--services",
            "neo4j",
            "--neo4j-method",
            "dump",
        ],
        &["IT_NEO4J_STOP_CMD", "IT_NEO4J_START_CMD"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("IT_NEO4J_STOP_CMD"), "{stderr}");
    assert_eq!(
        neo.count("MATCH (c:Canary {alive: true}) RETURN count(c) AS n"),
        1
    );
    assert_no_backup(root.path());
}

#[test]
fn damaged_artifact_is_refused_before_the_graph_is_touched() {
    let _guard = exclusive(&[Neo4j]);
    let neo = Neo::connect();
    neo.wipe();
    neo.run("UNWIND range(1, 3000) AS i CREATE (:Saved {i: i, pad: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'})");
    let root = temp_root();
    let dir = backup(root.path(), &[], &[]);
    neo.run("MATCH (n) DETACH DELETE n");
    neo.run("CREATE (:Canary {alive: true})");
    let artifact = artifact_ending(&dir, ".ndjson.zst");
    let bytes = std::fs::read(&artifact).unwrap();

    // Truncated: the checksum no longer matches.
    std::fs::write(&artifact, &bytes[..bytes.len() / 2]).unwrap();
    let stderr = restore_fails(&dir);
    assert!(
        stderr.contains("sha256") || stderr.contains("checksum"),
        "{stderr}"
    );
    assert_eq!(neo.count("MATCH (c:Canary) RETURN count(c) AS n"), 1);
    assert_eq!(neo.count("MATCH (n) RETURN count(n) AS n"), 1);

    // Truncated and re-hashed in the manifest as a careless operator might: the
    // stream itself is checked end to end before anything is deleted.
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("backup-manifest.json")).unwrap()).unwrap();
    let truncated = &bytes[..bytes.len() / 2];
    use sha2::Digest;
    manifest["artifacts"]["neo4j"]["sha256"] = hex::encode(sha2::Sha256::digest(truncated)).into();
    manifest["artifacts"]["neo4j"]["bytes"] = (truncated.len() as u64).into();
    manifest.as_object_mut().unwrap().remove("manifest_sha256");
    let resealed = hex::encode(sha2::Sha256::digest(serde_json::to_vec(&manifest).unwrap()));
    manifest["manifest_sha256"] = resealed.into();
    std::fs::write(
        dir.join("backup-manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let stderr = restore_fails(&dir);
    assert!(
        !stderr.contains("manifest_sha256"),
        "the re-sealed manifest must pass, so the stream check is what refuses: {stderr}"
    );
    assert!(stderr.contains("neo4j"), "{stderr}");
    assert_eq!(neo.count("MATCH (c:Canary) RETURN count(c) AS n"), 1);
    assert_eq!(neo.count("MATCH (n) RETURN count(n) AS n"), 1);
    neo.wipe();
}

#[test]
fn wrong_password_and_unreachable_server_fail_clearly() {
    let _guard = exclusive(&[Neo4j]);
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let args = ["--root", root_arg, "backup", "--services", "neo4j"];
    let stderr = fails(
        &args,
        &[("NEO4J_PASSWORD", "not-the-password")],
        exit::AUTHENTICATION,
    );
    assert!(
        stderr.to_lowercase().contains("authentic") || stderr.contains("credentials"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    let stderr = fails(
        &args,
        &[("NEO4J_URI", "bolt://127.0.0.1:1")],
        exit::UNREACHABLE,
    );
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert_no_backup(root.path());
}

/// A line that decodes but that the load could not hold (100 MB of
/// properties: Neo4j failed with MemoryPoolOutOfMemoryError after it had
/// emptied the graph) is refused before the graph is touched, naming the
/// line and the bound.
#[test]
fn a_line_the_load_cannot_hold_is_refused_before_the_graph_is_touched() {
    let _guard = exclusive(&[Neo4j]);
    let neo = Neo::connect();
    neo.wipe();
    neo.run("UNWIND range(1, 300) AS i CREATE (:Saved {i: i, pad: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'})");
    let root = temp_root();
    let dir = backup(root.path(), &[], &[]);
    neo.run("MATCH (n:Saved) WHERE n.i > 100 DETACH DELETE n");
    neo.run("CREATE (:Canary {alive: true})");
    let before = neo.snapshot();
    let artifact = artifact_ending(&dir, ".ndjson.zst");
    let text =
        String::from_utf8(zstd::decode_all(std::fs::File::open(&artifact).unwrap()).unwrap())
            .unwrap();
    let pad = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    let at = text.find(pad).expect("a node with the pad");
    let big = "y".repeat(100_000_000);
    let forged = format!("{}{big}{}", &text[..at], &text[at + pad.len()..]);
    std::fs::write(&artifact, zstd::encode_all(forged.as_bytes(), 1).unwrap()).unwrap();
    reseal(&dir, itbackup::service::Service::Neo4j, &artifact);

    let started = std::time::Instant::now();
    let stderr = restore_fails(&dir);
    assert!(stderr.contains("line"), "the line is named: {stderr}");
    assert!(
        stderr.contains("longer than"),
        "the bound is named: {stderr}"
    );
    assert_same(
        "the graph after a refused restore",
        &before,
        &neo.snapshot(),
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "refused only after {:?}",
        started.elapsed()
    );
    neo.wipe();
}

/// `--neo4j-load import`: the logical backup of every property type and
/// schema kind, put back by neo4j-admin's bulk import with the server
/// stopped, must give the very graph and schema the transactional load gives
/// (the graph before the damage), with no marker left behind.
#[test]
fn logical_restore_through_neo4j_admin_import_restores_every_value_and_schema_object() {
    let _guard = exclusive(&[Neo4j]);
    required_env("IT_NEO4J_STOP_CMD");
    let admin = required_env("IT_NEO4J_ADMIN");
    let neo = Neo::connect();
    build_graph(&neo);
    let graph_before = neo.snapshot();
    let schema_before = neo.schema();
    let root = temp_root();
    let dir = backup(root.path(), &["--neo4j-method", "logical"], &[]);
    damage(&neo);
    assert!(neo.snapshot() != graph_before, "the damage must show");
    drop(neo);

    let _empty = EmptyDatabaseOnFailure;
    let mut args = restore_args(&dir, Some("neo4j"));
    args.extend(["--neo4j-load", "import"]);
    let out = ok(&args, &[("IT_NEO4J_ADMIN", admin.as_str())]);
    let said = String::from_utf8_lossy(&out.stderr);
    // The import ran (not the transactional load) and had fix-ups to do:
    // the data set holds empty strings, lists and byte arrays.
    assert!(said.contains("import files written"), "{said}");
    assert!(said.contains("could not carry"), "{said}");
    let neo = Neo::connect();
    assert_same("graphs", &graph_before, &neo.snapshot());
    assert_same("schemas", &schema_before, &neo.schema());
    assert_eq!(neo.count("MATCH (n:__ItbRestore) RETURN count(n) AS n"), 0);
    assert_eq!(
        neo.count("MATCH (n) WHERE n.__itb_fix IS NOT NULL RETURN count(n) AS n"),
        0
    );
    assert_eq!(
        neo.count("MATCH ()-[r]->() WHERE r.__itb_fix IS NOT NULL RETURN count(r) AS n"),
        0
    );
    // Its scratch files are gone with the restore.
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".itbackup-restore-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    neo.wipe();
}

/// Import mode without a way to stop and start the server is a usage error
/// before anything is stopped or changed; its dry run names the import's steps.
#[test]
fn import_load_without_stop_and_start_commands_is_refused_and_changes_nothing() {
    let _guard = exclusive(&[Neo4j]);
    let neo = Neo::connect();
    neo.wipe();
    neo.run("CREATE (:Canary {alive: true})");
    let root = temp_root();
    let dir = backup(root.path(), &[], &[]);
    neo.run("CREATE (:Canary {alive: false})");
    let dir_arg = dir.to_str().unwrap();

    let plan = ok(
        &[
            "restore",
            "--path",
            dir_arg,
            "--services",
            "neo4j",
            "--dry-run",
            "--neo4j-load",
            "import",
        ],
        &[],
    );
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("database import full"), "{plan}");

    let out = itbackup_without(
        &[
            "restore",
            "--path",
            dir_arg,
            "--services",
            "neo4j",
            "--yes",
            "--neo4j-load",
            "import",
        ],
        &["IT_NEO4J_STOP_CMD", "IT_NEO4J_START_CMD"],
    );
    assert_eq!(out.status.code(), Some(exit::USAGE), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("IT_NEO4J_STOP_CMD"), "{stderr}");
    assert!(stderr.contains("--neo4j-load transactional"), "{stderr}");
    // The same through the environment variable.
    let out = itbackup_without(
        &["restore", "--path", dir_arg, "--services", "neo4j", "--yes"],
        &["IT_NEO4J_STOP_CMD", "IT_NEO4J_START_CMD"],
    );
    assert!(out.status.success(), "{}", text(&out));
    neo.run("CREATE (:Canary {alive: false})");
    let mut cmd = Command::new(bin());
    cmd.args(["restore", "--path", dir_arg, "--services", "neo4j", "--yes"])
        .env("IT_NEO4J_LOAD", "import")
        .env_remove("IT_NEO4J_STOP_CMD");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(exit::USAGE), "{}", text(&out));
    // Nothing was touched: the node created after the backup is still there.
    assert_eq!(neo.count("MATCH (c:Canary) RETURN count(c) AS n"), 2);
    neo.wipe();
}
