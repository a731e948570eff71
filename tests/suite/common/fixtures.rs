//! Each store as the store-independent tests see it: a [`StoreFixture`]
//! knows how to fill the store with a known data set, tell by a fingerprint
//! whether that data is exactly back, change it, list what interrupted runs
//! left in the store, and point itbackup at a wrong address or wrong
//! credentials. The conformance suite (`conformance.rs`) runs the same checks
//! through it for every store and method; fault injection (`fault_injection.rs`)
//! kills runs against larger data sets of the same fixtures.
//!
//! A new store joins by implementing the trait here and adding its methods to
//! the list in `conformance.rs` (docs/architecture.md, "Tests: the
//! conformance suite").
use std::fs;

use serde_json::{json, Value};

use super::{opensearch, psql, required_env, Neo, Server};

/// A backup method of a store: the flag of `itbackup backup` that chooses
/// it, and its value (`--postgres-format custom`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    pub flag: &'static str,
    pub value: &'static str,
    /// Arguments the method needs besides its flag (the repository method's
    /// `--opensearch-repository`).
    pub extra: &'static [&'static str],
    /// Its `verify` asks the server (the repository method's snapshot lives
    /// in the cluster's repository, not in the backup directory).
    pub verify_needs_server: bool,
}

impl Method {
    pub const fn new(flag: &'static str, value: &'static str) -> Method {
        Method {
            flag,
            value,
            extra: &[],
            verify_needs_server: false,
        }
    }
}

/// The snapshot repository the OpenSearch fixture registers under
/// `path.repo` for the repository method.
pub const OS_REPOSITORY: &str = "itb-conformance-repo";

/// Environment variables for one itbackup run.
pub type Env = Vec<(&'static str, String)>;

/// `env` as the plain helpers take it.
pub fn env_refs(env: &Env) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// One store's test data and how to look at it. Every method that changes
/// or reads the whole store runs under `exclusive(&[self.server()])`.
pub trait StoreFixture {
    /// The name itbackup knows the store by (`--services`).
    fn service(&self) -> &'static str;
    /// The testenv server, whose lock guards the store.
    fn server(&self) -> Server;
    /// Every backup method of the store.
    fn methods(&self) -> &'static [Method];
    /// Fill the store with the fixture's data, replacing an earlier copy.
    fn populate(&self);
    /// A text equal to an earlier one exactly when the data is the same;
    /// never panics (a store that cannot be read says why, and differs).
    fn fingerprint(&self) -> String;
    /// Change the data in every way a restore must undo: some of it
    /// changed, some removed, something added.
    fn change(&self);
    /// What interrupted runs may have left in the store (temporary
    /// databases, indices, repositories, labels): must be empty.
    fn leftovers(&self) -> Vec<String>;
    /// Remove the fixture's data.
    fn cleanup(&self);
    /// itbackup pointed at `port` on this host instead of the server.
    fn address_env(&self, port: u16) -> Env;
    /// itbackup with credentials the server refuses.
    fn wrong_password_env(&self) -> Env;

    /// The method whose value is `value`.
    fn method(&self, value: &str) -> Method {
        *self
            .methods()
            .iter()
            .find(|m| m.value == value)
            .unwrap_or_else(|| panic!("{} has no method {value}", self.service()))
    }
}

/// PostgreSQL: one database with a table of `rows` rows and a large object.
pub struct PgDatabase {
    pub database: &'static str,
    pub rows: u32,
}

impl StoreFixture for PgDatabase {
    fn service(&self) -> &'static str {
        "postgres"
    }
    fn server(&self) -> Server {
        Server::Postgres
    }
    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[
            Method::new("--postgres-format", "custom"),
            Method::new("--postgres-format", "plain"),
            Method::new("--postgres-format", "physical"),
        ];
        METHODS
    }
    fn populate(&self) {
        self.cleanup();
        psql("postgres", &format!("CREATE DATABASE {}", self.database));
        psql(
            self.database,
            &format!(
                "CREATE TABLE t (id int PRIMARY KEY, v text); \
                 INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {}) g; \
                 SELECT lo_from_bytea(0, 'fault injection')",
                self.rows
            ),
        );
    }
    fn fingerprint(&self) -> String {
        let sql = "SELECT count(*) || ' ' || sum(hashtext(v)) || ' ' \
             || (SELECT count(*) FROM pg_largeobject_metadata) || ' ' \
             || (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class \
                 WHERE relnamespace = 'public'::regnamespace AND relkind = 'r') FROM t";
        let out = std::process::Command::new(super::pg_tool("psql"))
            .args(["-X", "-q", "-At", "-d", self.database, "-c", sql])
            .output()
            .expect("run psql");
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        } else {
            format!(
                "unreadable: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }
    fn change(&self) {
        psql(
            self.database,
            "UPDATE t SET v = 'changed' WHERE id % 7 = 0; \
             DELETE FROM t WHERE id % 11 = 0; \
             SELECT lo_unlink(oid) FROM pg_largeobject_metadata; \
             CREATE TABLE intruder (x int); INSERT INTO intruder VALUES (1)",
        );
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
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
        );
        // What physical restores kept aside (the data directory from before each).
        super::remove_kept_data_dirs();
    }
    fn address_env(&self, port: u16) -> Env {
        vec![("PGHOST", "127.0.0.1".into()), ("PGPORT", port.to_string())]
    }
    fn wrong_password_env(&self) -> Env {
        vec![("PGPASSWORD", "not-the-password".into())]
    }
}

/// OpenSearch: one index of `docs` documents.
pub struct OsIndex {
    pub index: &'static str,
    pub docs: u32,
}

fn os_call(method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    opensearch(method, path, body)
}

/// Send an NDJSON `_bulk` body, refreshing; panics when any item failed.
fn os_bulk(body: String) {
    let url = format!("{}/_bulk?refresh=true", required_env("OPENSEARCH_URL"));
    let resp = reqwest::blocking::Client::new()
        .post(url)
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "bulk: {}", resp.status());
    let answer: Value = resp.json().unwrap();
    assert_eq!(answer["errors"], json!(false), "bulk: {answer}");
}

impl StoreFixture for OsIndex {
    fn service(&self) -> &'static str {
        "opensearch"
    }
    fn server(&self) -> Server {
        Server::Opensearch
    }
    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[
            Method {
                flag: "--opensearch-method",
                value: "repository",
                extra: &["--opensearch-repository", OS_REPOSITORY],
                verify_needs_server: true,
            },
            Method::new("--opensearch-method", "snapshot"),
            Method::new("--opensearch-method", "logical"),
        ];
        METHODS
    }
    fn populate(&self) {
        self.cleanup();
        register_repository(OS_REPOSITORY);
        let mut bulk = String::new();
        for i in 0..self.docs {
            bulk.push_str(&format!(
                "{{\"index\":{{\"_index\":\"{}\",\"_id\":\"{i}\"}}}}\n{}\n",
                self.index,
                json!({"n": i, "text": format!("document {i}")})
            ));
        }
        os_bulk(bulk);
    }
    fn fingerprint(&self) -> String {
        os_call(
            reqwest::Method::POST,
            &format!("{}/_refresh", self.index),
            None,
        );
        let v = os_call(
            reqwest::Method::POST,
            &format!("{}/_search", self.index),
            Some(
                json!({"size": 0, "track_total_hits": true, "aggs": {"s": {"sum": {"field": "n"}}}}),
            ),
        );
        format!(
            "{} {}",
            v["hits"]["total"]["value"], v["aggregations"]["s"]["value"]
        )
    }
    fn change(&self) {
        let index = self.index;
        let mut bulk = String::new();
        for i in 0..5 {
            bulk.push_str(&format!(
                "{{\"delete\":{{\"_index\":\"{index}\",\"_id\":\"{i}\"}}}}\n"
            ));
        }
        bulk.push_str(&format!(
            "{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"10\"}}}}\n{}\n",
            json!({"n": 1010, "text": "changed"})
        ));
        bulk.push_str(&format!(
            "{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"intruder\"}}}}\n{}\n",
            json!({"n": 100000, "text": "intruder"})
        ));
        os_bulk(bulk);
    }
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let repos = os_call(reqwest::Method::GET, "_snapshot/_all", None);
        if let Some(repos) = repos.as_object() {
            left.extend(
                repos
                    .keys()
                    .filter(|k| k.starts_with("itbackup"))
                    .map(|k| format!("repository {k}")),
            );
        }
        let indices = os_call(
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
            let found = os_call(reqwest::Method::GET, listing, None);
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
        os_call(reqwest::Method::DELETE, self.index, None);
    }
    fn address_env(&self, port: u16) -> Env {
        vec![("OPENSEARCH_URL", format!("http://127.0.0.1:{port}"))]
    }
    fn wrong_password_env(&self) -> Env {
        // The testenv cluster has no security plugin, so it takes any
        // password: ask through a gate that checks them, as a secured
        // cluster or a proxy with basic authentication does.
        vec![
            (
                "OPENSEARCH_URL",
                super::auth_gate::opensearch_behind_basic_auth(),
            ),
            ("OPENSEARCH_USER", super::auth_gate::USER.into()),
            ("OPENSEARCH_PASSWORD", "not-the-password".into()),
        ]
    }
}

/// Neo4j: `nodes` nodes labelled `label`, each linked to the next. The
/// graph is looked at through a new connection each time: the dump method
/// stops and starts the server, which ends every connection.
pub struct Neo4jGraph {
    pub label: &'static str,
    pub nodes: u32,
}

impl Neo4jGraph {
    fn single(&self, cypher: &str) -> String {
        Neo::connect().try_single(cypher).unwrap()
    }
}

impl StoreFixture for Neo4jGraph {
    fn service(&self) -> &'static str {
        "neo4j"
    }
    fn server(&self) -> Server {
        Server::Neo4j
    }
    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[
            Method::new("--neo4j-method", "logical"),
            Method::new("--neo4j-method", "dump"),
        ];
        METHODS
    }
    fn populate(&self) {
        self.cleanup();
        let label = self.label;
        self.single(&format!(
            "UNWIND range(1, {}) AS i CREATE (:{label} {{i: i, name: 'n' + i}}) \
             WITH count(*) AS c RETURN toString(c) AS r",
            self.nodes
        ));
        self.single(&format!(
            "MATCH (a:{label}), (b:{label}) WHERE b.i = a.i + 1 CREATE (a)-[:NEXT {{w: a.i}}]->(b) \
             WITH count(*) AS c RETURN toString(c) AS r"
        ));
    }
    /// Nodes, relationships and the sum of `i` over the whole graph.
    fn fingerprint(&self) -> String {
        Neo::try_connect()
            .and_then(|neo| {
                neo.try_single(
                    "MATCH (n) OPTIONAL MATCH (n)-[r]->() \
                     RETURN toString(count(DISTINCT n)) + ' ' + toString(count(r)) + ' ' + toString(sum(n.i)) AS r",
                )
            })
            .unwrap_or_else(|e| format!("unreadable: {e}"))
    }
    fn change(&self) {
        let label = self.label;
        self.single(&format!(
            "MATCH (n:{label}) WHERE n.i % 11 = 0 DETACH DELETE n \
             WITH count(*) AS c RETURN toString(c) AS r"
        ));
        self.single(&format!(
            "MATCH (n:{label}) WHERE n.i % 7 = 0 SET n.i = n.i + 100000 \
             WITH count(*) AS c RETURN toString(c) AS r"
        ));
        self.single(
            "CREATE (:Intruder {i: 1})-[:BAD]->(:Intruder {i: 2}) \
             WITH count(*) AS c RETURN toString(c) AS r",
        );
    }
    /// Labels and property keys other than the fixture's, or why they
    /// cannot be read (itself a leftover).
    fn leftovers(&self) -> Vec<String> {
        let neo = match Neo::try_connect() {
            Ok(neo) => neo,
            Err(e) => return vec![format!("unreadable: {e}")],
        };
        // The logical load keeps its id map in scratch files, not in the
        // graph: any label or property other than the fixture's is debris.
        let labels = neo.try_single(&format!(
            "MATCH (n) UNWIND labels(n) AS l WITH DISTINCT l WHERE l <> '{}' \
             RETURN reduce(s = '', x IN collect(l) | s + x + ',') AS r",
            self.label
        ));
        let keys = neo.try_single(
            "MATCH (n) UNWIND keys(n) AS k WITH DISTINCT k WHERE NOT k IN ['i', 'name'] \
             RETURN reduce(s = '', x IN collect(k) | s + x + ',') AS r",
        );
        match (labels, keys) {
            (Ok(labels), Ok(keys)) => labels
                .split(',')
                .chain(keys.split(','))
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            (Err(e), _) | (_, Err(e)) => vec![format!("unreadable: {e}")],
        }
    }
    /// The whole graph goes (whole-server work, as the restore is).
    fn cleanup(&self) {
        self.single("OPTIONAL MATCH (n) DETACH DELETE n WITH count(*) AS c RETURN 'ok' AS r");
    }
    fn address_env(&self, port: u16) -> Env {
        vec![("NEO4J_URI", format!("bolt://127.0.0.1:{port}"))]
    }
    fn wrong_password_env(&self) -> Env {
        vec![("NEO4J_PASSWORD", "not-the-password".into())]
    }
}

/// Register the `fs` snapshot repository `name` in its own directory under
/// the test cluster's `path.repo` (again: the same settings are accepted).
pub fn register_repository(name: &str) {
    let repo = required_env("IT_OPENSEARCH_REPO");
    let answer = os_call(
        reqwest::Method::PUT,
        &format!("_snapshot/{name}"),
        Some(json!({"type": "fs", "settings": {"location": format!("{repo}/{name}")}})),
    );
    assert_eq!(answer["acknowledged"], true, "register {name}: {answer}");
}
