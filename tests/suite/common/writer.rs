//! A platform writer for the consistency tests: event after event, each id
//! written into all three stores (a row in PostgreSQL, a document in
//! OpenSearch, a node linked to the previous one in Neo4j), the way the
//! runbook's platform keeps one world in three stores.
//!
//! It pauses the way an application's maintenance switch would: while the
//! file `pause` exists in its directory it finishes the event in hand,
//! writes `paused`, and waits; [`CrossStoreWriter::freeze_hook`] and
//! [`CrossStoreWriter::thaw_hook`] are the shell commands that drive it.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const DATABASE: &str = "itb_events";
pub const INDEX: &str = "itb-events";
pub const LABEL: &str = "ItbEvent";

pub struct CrossStoreWriter {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Fresh, empty event stores: the database, the index and the label
/// (under exclusive locks on the three servers).
pub fn create_event_stores() {
    super::psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
    );
    super::psql("postgres", &format!("CREATE DATABASE {DATABASE}"));
    super::psql(DATABASE, "CREATE TABLE events (id bigint PRIMARY KEY)");
    super::opensearch(reqwest::Method::DELETE, INDEX, None);
    super::opensearch(
        reqwest::Method::PUT,
        INDEX,
        Some(serde_json::json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}})),
    );
    let neo = super::Neo::connect();
    neo.wipe();
    neo.run(&format!(
        "CREATE INDEX itb_event_id IF NOT EXISTS FOR (e:{LABEL}) ON (e.id)"
    ));
}

/// Remove them again.
pub fn drop_event_stores() {
    super::psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
    );
    super::opensearch(reqwest::Method::DELETE, INDEX, None);
    super::Neo::connect().run(&format!("MATCH (e:{LABEL}) DETACH DELETE e"));
}

/// Where events live in each store.
pub struct EventStores {
    pub database: &'static str,
    pub table: &'static str,
    pub index: &'static str,
    pub label: &'static str,
}

/// This writer's.
pub const TEST_EVENTS: EventStores = EventStores {
    database: DATABASE,
    table: "events",
    index: INDEX,
    label: LABEL,
};

/// The drill's cross-store writer's (`drill --cross-store`).
pub const DRILL_EVENTS: EventStores = EventStores {
    database: "itbackup_drill",
    table: "drill_events",
    index: "itbackup-drill-events",
    label: "ItbackupDrillEvent",
};

/// The event ids each store holds now.
pub fn ids_in(events: &EventStores) -> [(&'static str, BTreeSet<u64>); 3] {
    let postgres = super::psql(events.database, &format!("SELECT id FROM {}", events.table))
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.trim().parse().unwrap())
        .collect();
    super::opensearch(
        reqwest::Method::POST,
        &format!("{}/_refresh", events.index),
        None,
    );
    let hits = super::opensearch(
        reqwest::Method::GET,
        &format!("{}/_search?size=10000&_source=false", events.index),
        None,
    );
    let opensearch = hits["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["_id"].as_str().unwrap().parse().unwrap())
        .collect();
    let neo4j = super::Neo::connect()
        .rows(&format!("MATCH (e:{}) RETURN e.id AS id", events.label))
        .iter()
        .map(|r| r.get::<i64>("id").unwrap() as u64)
        .collect();
    [
        ("postgres", postgres),
        ("opensearch", opensearch),
        ("neo4j", neo4j),
    ]
}

/// This writer's event ids in each store.
pub fn ids_in_stores() -> [(&'static str, BTreeSet<u64>); 3] {
    ids_in(&TEST_EVENTS)
}

impl CrossStoreWriter {
    /// Start writing events 1, 2, 3 … into the stores [`create_event_stores`] made.
    pub fn start(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (dir, thread_dir) = (dir.to_path_buf(), dir.to_path_buf());
        let (thread_stop, thread_written) = (stop.clone(), written.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(write_events(&thread_dir, &thread_stop, &thread_written));
        });
        CrossStoreWriter {
            dir,
            stop,
            written,
            thread: Some(thread),
        }
    }

    /// The events written to all three stores so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` events are written.
    pub fn wait_for(&self, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.written() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer wrote only {} events in 60 s",
                self.written()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop after the event in hand; the number of events written.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(self.dir.join("pause"));
        self.thread.take().unwrap().join().expect("the writer ran");
        self.written()
    }

    pub fn freeze_hook(&self) -> String {
        let dir = self.dir.display();
        format!("touch {dir}/pause; while [ ! -e {dir}/paused ]; do sleep 0.02; done")
    }

    pub fn thaw_hook(&self) -> String {
        let dir = self.dir.display();
        format!("rm -f {dir}/pause {dir}/paused")
    }
}

impl Drop for CrossStoreWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = std::fs::remove_file(self.dir.join("pause"));
            let _ = thread.join();
        }
    }
}

async fn write_events(dir: &Path, stop: &AtomicBool, written: &AtomicU64) {
    let env = |name: &str| super::required_env(name);
    let (pg, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={} password={} dbname={DATABASE}",
            env("PGHOST"),
            env("PGPORT"),
            env("PGUSER"),
            env("PGPASSWORD")
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("the writer connects to PostgreSQL");
    tokio::spawn(connection);
    let http = reqwest::Client::new();
    let os = env("OPENSEARCH_URL");
    let neo = neo4rs::Graph::new(env("NEO4J_URI"), env("NEO4J_USER"), env("NEO4J_PASSWORD"))
        .await
        .expect("the writer connects to Neo4j");
    let mut id: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        if dir.join("pause").exists() {
            std::fs::write(dir.join("paused"), b"").unwrap();
            while dir.join("pause").exists() && !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            continue;
        }
        id += 1;
        pg.execute("INSERT INTO events (id) VALUES ($1)", &[&(id as i64)])
            .await
            .expect("the writer inserts a row");
        let answer = http
            .put(format!("{os}/{INDEX}/_doc/{id}"))
            .json(&serde_json::json!({"id": id}))
            .send()
            .await
            .expect("the writer indexes a document");
        assert!(answer.status().is_success(), "{answer:?}");
        neo.run(
            neo4rs::query(&format!(
                "CREATE (e:{LABEL} {{id: $id}}) WITH e OPTIONAL MATCH (p:{LABEL} {{id: $id - 1}}) \
                 FOREACH (_ IN CASE WHEN p IS NULL THEN [] ELSE [1] END | CREATE (p)-[:NEXT]->(e))"
            ))
            .param("id", id as i64),
        )
        .await
        .expect("the writer creates a node");
        written.store(id, Ordering::SeqCst);
    }
}
