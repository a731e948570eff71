//! The logical restore's data path: the export's lines, routed into batches
//! by label set or relationship type, each batch created by one
//! `UNWIND $rows …` transaction, several in flight.
//!
//! A batch keeps its lines as the export wrote them (JSON text) and decodes
//! them into Bolt values when it is sent: a retry decodes them again instead
//! of keeping a second copy of every row, and each property goes from JSON
//! text to its Bolt value in one step (no intermediate JSON tree).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use neo4rs::{query, BoltType, Graph};
use serde::de::IgnoredAny;

use super::id_map::IdMap;
use super::props_bolt::{special_cypher, PropsOf};
use super::{neo_error, quote, Record, BATCH_BYTES, SVC};
use crate::error::{io_error, Error, Result};

/// A line that the verification read but the restore cannot.
fn undecodable(e: serde_json::Error) -> Error {
    Error::damaged(
        "restore",
        format!("a line of the export does not decode: {e}"),
    )
    .service(SVC)
    .hint("the artifact is damaged; use another backup")
}

/// What a batch creates.
enum Target {
    /// Nodes with these labels (sorted).
    Nodes(Vec<String>),
    /// Relationships of this type.
    Relationships(String),
}

/// Rows waiting to be sent: the lines as exported, plus what the line alone
/// does not say.
#[derive(Default)]
struct Batch {
    /// The lines, each followed by a newline.
    text: Vec<u8>,
    rows: usize,
    /// Nodes: the exported ids, in row order (paired with the new ids answered).
    olds: Vec<String>,
    /// Relationships: the endpoints' new ids, in row order.
    ends: Vec<[i64; 2]>,
}

impl Batch {
    /// Whether `line` would take the batch over [`BATCH_BYTES`]: the
    /// batch is sent first, so a transaction's rows stay within the bound
    /// (or are one line, at most [`MAX_LINE`]).
    fn overflows(&self, line: &[u8]) -> bool {
        self.rows > 0 && self.text.len() + line.len() + 1 > BATCH_BYTES
    }

    fn push(&mut self, line: &[u8]) {
        self.text.extend_from_slice(line);
        self.text.push(b'\n');
        self.rows += 1;
    }

    /// The `$rows` parameter: `[place, props(, special)]` per node,
    /// `[start, end, props(, special)]` per relationship; and whether any row
    /// has special values (only then do the rows carry them, and the Cypher
    /// convert them).
    fn rows(&self, target: &Target) -> Result<(BoltType, bool)> {
        let mut decoded = Vec::with_capacity(self.rows);
        for line in self.text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let props = serde_json::from_slice::<PropsOf>(line).map_err(undecodable)?;
            decoded.push(props.props.unwrap_or_default());
        }
        let special = decoded.iter().any(|p| !p.special.is_empty());
        let mut rows = neo4rs::BoltList::with_capacity(decoded.len());
        for (place, props) in decoded.into_iter().enumerate() {
            let mut row = Vec::with_capacity(4);
            match target {
                Target::Nodes(_) => row.push(BoltType::from(place as i64)),
                Target::Relationships(_) => {
                    let [start, end] = self.ends[place];
                    row.push(BoltType::from(start));
                    row.push(BoltType::from(end));
                }
            }
            row.push(BoltType::Map(props.direct));
            if special {
                row.push(BoltType::List(neo4rs::BoltList::from(props.special)));
            }
            rows.push(BoltType::List(neo4rs::BoltList::from(row)));
        }
        Ok((BoltType::List(rows), special))
    }
}

impl Target {
    /// Nodes answer each one's new id by its place in the batch (the old ids
    /// stay here: nothing long travels back). `id()` is deprecated in favour
    /// of element ids, but an integer is what lets a relationship find its
    /// endpoint by direct lookup and keeps the map small.
    fn cypher(&self, special: bool) -> String {
        let convert = |var: &str, at: usize| {
            if special {
                format!(
                    " FOREACH (s IN row[{at}] | SET {var}[s[0]] = {})",
                    special_cypher()
                )
            } else {
                String::new()
            }
        };
        match self {
            Target::Nodes(labels) => {
                let labels: String = labels.iter().map(|l| format!(":{}", quote(l))).collect();
                format!(
                    "UNWIND $rows AS row CREATE (n{labels}) SET n += row[1]{} RETURN collect(row[0]) AS i, collect(id(n)) AS new",
                    convert("n", 2)
                )
            }
            Target::Relationships(rel_type) => format!(
                "UNWIND $rows AS row MATCH (a) WHERE id(a) = row[0] MATCH (b) WHERE id(b) = row[1] \
                 CREATE (a)-[r:{}]->(b) SET r += row[2]{}",
                quote(rel_type),
                convert("r", 3)
            ),
        }
    }
}

/// Routes lines into batches by label set and relationship type and runs
/// full batches as `UNWIND` transactions, several in flight.
pub(super) struct Loader {
    graph: Graph,
    batch_size: usize,
    max_in_flight: usize,
    in_flight: tokio::task::JoinSet<Result<Vec<(String, i64)>>>,
    /// Batches being filled, by label set (sorted) and by relationship type.
    pending_nodes: HashMap<Vec<String>, Batch>,
    pending_rels: HashMap<String, Batch>,
    ids: IdMap,
    /// Every node is in: relationship lines are loaded, the others skipped
    /// (before: the other way round).
    pub in_relationships: bool,
}

impl Loader {
    pub fn new(graph: Graph, batch_size: usize, max_in_flight: usize, ids: IdMap) -> Self {
        Loader {
            graph,
            batch_size: batch_size.max(1),
            max_in_flight: max_in_flight.max(1),
            in_flight: tokio::task::JoinSet::new(),
            pending_nodes: HashMap::new(),
            pending_rels: HashMap::new(),
            ids,
            in_relationships: false,
        }
    }

    /// Put one line into its batch. Relationship lines are taken only once
    /// every node is in (`in_relationships`); before that they are skipped,
    /// the spilled copy being the one loaded.
    pub async fn route(&mut self, line: &[u8], schema: &mut Vec<String>) -> Result<()> {
        if !self.in_relationships && line.starts_with(br#"{"type":"rel","#) {
            return Ok(());
        }
        let record: Record<IgnoredAny> = serde_json::from_slice(line).map_err(undecodable)?;
        match record.kind.as_ref() {
            // Nodes and schema are taken in the first pass only.
            "constraint" | "index" if !self.in_relationships => schema.extend(record.statement),
            "node" if !self.in_relationships => {
                let mut labels = record.labels.unwrap_or_default();
                labels.sort();
                let old = record.id.map(Cow::into_owned).unwrap_or_default();
                let batch = batch_for(&mut self.pending_nodes, labels.as_slice());
                if batch.overflows(line) {
                    let batch = std::mem::take(batch);
                    self.spawn(Target::Nodes(labels.clone()), batch).await?;
                }
                let batch = batch_for(&mut self.pending_nodes, labels.as_slice());
                batch.push(line);
                batch.olds.push(old);
                if batch.rows >= self.batch_size || batch.text.len() >= BATCH_BYTES {
                    let batch = std::mem::take(batch);
                    self.spawn(Target::Nodes(labels), batch).await?;
                }
            }
            "rel" if self.in_relationships => {
                let ends = [
                    self.new_id(record.start.as_deref())?,
                    self.new_id(record.end.as_deref())?,
                ];
                let rel_type = record.rel_type.as_deref().unwrap_or_default();
                let batch = batch_for(&mut self.pending_rels, rel_type);
                if batch.overflows(line) {
                    let batch = std::mem::take(batch);
                    self.spawn(Target::Relationships(rel_type.to_string()), batch)
                        .await?;
                }
                let batch = batch_for(&mut self.pending_rels, rel_type);
                batch.push(line);
                batch.ends.push(ends);
                if batch.rows >= self.batch_size || batch.text.len() >= BATCH_BYTES {
                    let batch = std::mem::take(batch);
                    self.spawn(Target::Relationships(rel_type.to_string()), batch)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn new_id(&self, old: Option<&str>) -> Result<i64> {
        let old = old.unwrap_or_default();
        let found = self
            .ids
            .get(old)
            .map_err(|e| io_error(Some(SVC), "restore relationships", "the id map", e))?;
        found.ok_or_else(|| {
            Error::damaged(
                "restore relationships",
                format!("a relationship points to node {old}, which the export does not hold"),
            )
            .service(SVC)
            .hint("the artifact is damaged; use another backup")
        })
    }

    /// Run a batch in the background; a node batch answers (old id, new id) pairs.
    async fn spawn(&mut self, target: Target, mut batch: Batch) -> Result<()> {
        while self.in_flight.len() >= self.max_in_flight {
            self.join_one().await?;
        }
        let graph = self.graph.clone();
        self.in_flight.spawn(async move {
            let created = run_batch(&graph, &target, &batch).await?;
            created
                .into_iter()
                .map(|(place, new)| {
                    let old = usize::try_from(place)
                        .ok()
                        .and_then(|p| batch.olds.get_mut(p));
                    old.map(|old| (std::mem::take(old), new)).ok_or_else(|| {
                        Error::failure("restore nodes", "Neo4j answered a row that was not sent")
                            .service(SVC)
                    })
                })
                .collect()
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            Some(Ok(result)) => {
                for (old, new) in result? {
                    self.ids
                        .insert(&old, new)
                        .map_err(|e| io_error(Some(SVC), "restore nodes", "the id map", e))?;
                }
                Ok(())
            }
            Some(Err(e)) => Err(Error::failure("restore", e.to_string()).service(SVC)),
            None => Ok(()),
        }
    }

    /// Send every pending batch and wait for all of them.
    pub async fn drain(&mut self) -> Result<()> {
        let nodes = self
            .pending_nodes
            .drain()
            .map(|(k, b)| (Target::Nodes(k), b));
        let rels = self
            .pending_rels
            .drain()
            .map(|(k, b)| (Target::Relationships(k), b));
        let pending: Vec<_> = nodes.chain(rels).collect();
        for (target, batch) in pending {
            if batch.rows > 0 {
                self.spawn(target, batch).await?;
            }
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

/// The batch being filled for `key`; the key is copied only when it is new
/// (a lookup per line, an allocation per label set or type).
fn batch_for<'m, K, Q>(pending: &'m mut HashMap<K, Batch>, key: &Q) -> &'m mut Batch
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: ToOwned<Owned = K> + std::hash::Hash + Eq + ?Sized,
{
    if !pending.contains_key(key) {
        pending.insert(key.to_owned(), Batch::default());
    }
    pending.get_mut(key).expect("inserted above")
}

/// One batch in its own transaction, retried when Neo4j reports a transient
/// failure (a deadlock between concurrent batches, say). Answers the
/// `(place in the batch, new id)` pairs a node batch returns (none for
/// relationships).
async fn run_batch(graph: &Graph, target: &Target, batch: &Batch) -> Result<Vec<(i64, i64)>> {
    let step = "restore batch";
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=8 {
        // Decoded per attempt: the first attempt's rows went to the server.
        let (rows, special) = batch.rows(target)?;
        match batch_once(graph, &target.cypher(special), rows).await {
            Ok(ids) => return Ok(ids),
            Err(e) if attempt < 8 && transient(&e) => {
                tracing::debug!(service = %SVC, attempt, error = %e, "batch failed transiently, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(neo_error(step, e)),
        }
    }
    Err(Error::failure(step, "gave up after repeated transient failures").service(SVC))
}

/// Whether Neo4j called the failure transient (worth retrying): typed when
/// it answered the query itself; neo4rs 0.8 reports a failure met later
/// (PULL, COMMIT) as an unexpected message quoting the server's code.
fn transient(err: &neo4rs::Error) -> bool {
    match err {
        neo4rs::Error::Neo4j(e) => e.kind() == neo4rs::Neo4jErrorKind::Transient,
        neo4rs::Error::UnexpectedMessage(said) => said.contains("Neo.TransientError"),
        _ => false,
    }
}

async fn batch_once(
    graph: &Graph,
    cypher: &str,
    rows: BoltType,
) -> std::result::Result<Vec<(i64, i64)>, neo4rs::Error> {
    let mut txn = graph.start_txn().await?;
    let mut stream = txn.execute(query(cypher).param("rows", rows)).await?;
    let mut ids = Vec::new();
    while let Some(row) = stream.next(txn.handle()).await? {
        // Both are never negative, so neo4rs 0.8's misreading of the tiny
        // integers -16..-1 cannot touch them.
        // One answer per batch, two lists aligned by the aggregation (not a
        // record per row: 1M records cost the server and the client more).
        if let (Ok(places), Ok(news)) = (row.get::<Vec<i64>>("i"), row.get::<Vec<i64>>("new")) {
            ids.extend(places.into_iter().zip(news));
        }
    }
    txn.commit().await?;
    Ok(ids)
}
