//! The drill's synthetic data in Neo4j: nodes under a label of their own.

use async_trait::async_trait;
use neo4rs::{query, Graph};

use super::{neo_error, Neo4j};
use crate::error::Result;
use crate::stores::{DrillData, DrillEvents, DrillInventory, UnorderedDigest};

/// Every node the drill creates has this label; nothing else is touched.
pub const DRILL_LABEL: &str = "ItbackupDrill";
const DRILL_INDEX: &str = "itbackup_drill_i";
/// `drill --cross-store`'s events: nodes of their own label, each linked to
/// the one before it (not in the inventory).
const EVENT_LABEL: &str = "ItbackupDrillEvent";
const EVENT_INDEX: &str = "itbackup_drill_event_i";
const BATCH: u64 = 10_000;

impl Neo4j {
    /// Stream `cypher`'s rows, each rendered as text by `render`, into `digest`.
    async fn digest_rows(
        graph: &Graph,
        cypher: &str,
        columns: &[&str],
        digest: &mut UnorderedDigest,
    ) -> Result<()> {
        let step = "drill: inventory";
        let mut stream = graph
            .execute(query(cypher))
            .await
            .map_err(|e| neo_error(step, e))?;
        while let Some(row) = stream.next().await.map_err(|e| neo_error(step, e))? {
            let mut record = String::new();
            for column in columns {
                record.push_str(&row.get::<String>(column).unwrap_or_default());
                record.push('\u{0}');
            }
            digest.add(record.as_bytes());
        }
        Ok(())
    }
}

#[async_trait]
impl DrillData for Neo4j {
    fn drill_location(&self) -> String {
        format!("nodes labelled :{DRILL_LABEL}")
    }

    async fn holds_only_drill_data(&self) -> Result<bool> {
        let graph = self.graph().await?;
        let rows = self
            .rows(
                &graph,
                &format!("MATCH (n) WHERE NOT n:{DRILL_LABEL} AND NOT n:{EVENT_LABEL} RETURN toString(count(n)) AS n"),
                "drill: inspect",
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.get::<String>("n").ok())
            .is_some_and(|n| n == "0"))
    }

    async fn drill_populate(&self, scale: u64) -> Result<()> {
        let step = "drill: populate";
        self.drill_wipe().await?;
        let graph = self.graph().await?;
        let run = |cypher: String| {
            let graph = graph.clone();
            async move {
                graph
                    .run(query(&cypher))
                    .await
                    .map_err(|e| neo_error(step, e))
            }
        };
        run(format!(
            "CREATE INDEX {DRILL_INDEX} IF NOT EXISTS FOR (n:{DRILL_LABEL}) ON (n.i)"
        ))
        .await?;
        run("CALL db.awaitIndexes(300)".into()).await?;
        let mut first = 1;
        while first <= scale {
            let last = (first + BATCH - 1).min(scale);
            // Values of several types, negative integers among them.
            run(format!(
                "UNWIND range({first}, {last}) AS i
                 CREATE (:{DRILL_LABEL} {{i: i, name: 'node ' + i + ' ünïcödé', neg: -(i % 20),
                   at: datetime({{epochSeconds: 1704067200 + i}}), tags: ['t' + (i % 10), 't' + (i % 7)],
                   score: i / 7.0}})"
            ))
            .await?;
            first = last + 1;
        }
        // Two relationships per node: a chain, and a jump across the graph.
        run(format!(
            "MATCH (a:{DRILL_LABEL}) CALL {{ WITH a
               MATCH (b:{DRILL_LABEL} {{i: a.i % {scale} + 1}})
               MATCH (c:{DRILL_LABEL} {{i: (a.i * 7) % {scale} + 1}})
               CREATE (a)-[:ITBACKUP_DRILL_NEXT {{w: a.i % 5}}]->(b)
               CREATE (a)-[:ITBACKUP_DRILL_JUMP {{w: -(a.i % 3)}}]->(c)
             }} IN TRANSACTIONS OF {BATCH} ROWS"
        ))
        .await?;
        Ok(())
    }

    async fn drill_inventory(&self) -> Result<DrillInventory> {
        let graph = self.graph().await?;
        let mut nodes = UnorderedDigest::default();
        let mut relationships = UnorderedDigest::default();
        // Integers travel as text (see `PROPS` in the parent module).
        Self::digest_rows(
            &graph,
            &format!(
                "MATCH (n:{DRILL_LABEL}) RETURN toString(n.i) AS i, n.name AS name, toString(n.neg) AS neg,
                   toString(n.at) AS at, reduce(s = '', t IN n.tags | s + t + ',') AS tags, toString(n.score) AS score"
            ),
            &["i", "name", "neg", "at", "tags", "score"],
            &mut nodes,
        )
        .await?;
        Self::digest_rows(
            &graph,
            &format!(
                "MATCH (a:{DRILL_LABEL})-[r]->(b:{DRILL_LABEL})
                 RETURN toString(a.i) AS a, type(r) AS t, toString(r.w) AS w, toString(b.i) AS b"
            ),
            &["a", "t", "w", "b"],
            &mut relationships,
        )
        .await?;
        // The count is of nodes (the runbook's `neo4j_nodes`); the digest
        // covers the relationships too.
        let (nodes, relationships) = (nodes.finish(), relationships.finish());
        Ok(DrillInventory {
            count: nodes.count,
            digest: format!(
                "{}/{} relationships {}",
                nodes.digest, relationships.count, relationships.digest
            ),
        })
    }

    async fn drill_wipe(&self) -> Result<()> {
        let step = "drill: remove data";
        let graph = self.graph().await?;
        graph
            .run(query(&format!(
                "MATCH (n:{DRILL_LABEL}) CALL {{ WITH n DETACH DELETE n }} IN TRANSACTIONS OF {BATCH} ROWS"
            )))
            .await
            .map_err(|e| neo_error(step, e))?;
        graph
            .run(query(&format!(
                "MATCH (n:{EVENT_LABEL}) CALL {{ WITH n DETACH DELETE n }} IN TRANSACTIONS OF {BATCH} ROWS"
            )))
            .await
            .map_err(|e| neo_error(step, e))?;
        for index in [DRILL_INDEX, EVENT_INDEX] {
            graph
                .run(query(&format!("DROP INDEX {index} IF EXISTS")))
                .await
                .map_err(|e| neo_error(step, e))?;
        }
        Ok(())
    }

    async fn drill_events_create(&self) -> Result<()> {
        let step = "drill: create the event index";
        let graph = self.graph().await?;
        for cypher in [
            format!("MATCH (n:{EVENT_LABEL}) DETACH DELETE n"),
            format!("CREATE INDEX {EVENT_INDEX} IF NOT EXISTS FOR (n:{EVENT_LABEL}) ON (n.id)"),
        ] {
            graph
                .run(query(&cypher))
                .await
                .map_err(|e| neo_error(step, e))?;
        }
        Ok(())
    }

    async fn drill_events_writer(&self) -> Result<Box<dyn DrillEvents>> {
        Ok(Box::new(EventWriter {
            graph: self.graph().await?,
        }))
    }

    async fn drill_event_ids(&self) -> Result<std::collections::BTreeSet<u64>> {
        let graph = self.graph().await?;
        let rows = self
            .rows(
                &graph,
                &format!("MATCH (n:{EVENT_LABEL}) RETURN toString(n.id) AS id"),
                "drill: read events",
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<String>("id").ok()?.parse().ok())
            .collect())
    }

    async fn drill_remove_one(&self) -> Result<()> {
        let step = "drill: remove one node";
        let graph = self.graph().await?;
        graph
            .run(query(&format!(
                "MATCH (n:{DRILL_LABEL} {{i: 1}}) DETACH DELETE n"
            )))
            .await
            .map_err(|e| neo_error(step, e))
    }
}

struct EventWriter {
    graph: Graph,
}

#[async_trait]
impl DrillEvents for EventWriter {
    async fn write(&mut self, id: u64) -> Result<()> {
        let cypher = format!(
            "CREATE (e:{EVENT_LABEL} {{id: $id}}) WITH e \
             OPTIONAL MATCH (p:{EVENT_LABEL} {{id: $id - 1}}) \
             FOREACH (_ IN CASE WHEN p IS NULL THEN [] ELSE [1] END | CREATE (p)-[:NEXT]->(e))"
        );
        self.graph
            .run(query(&cypher).param("id", id as i64))
            .await
            .map_err(|e| neo_error("drill: write an event", e))
    }
}
