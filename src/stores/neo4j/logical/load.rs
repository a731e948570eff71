//! The logical restore: the user database wiped, the export's nodes then
//! relationships loaded in batches (`batch.rs`), the schema created after
//! the data.

use std::path::Path;

use neo4rs::{query, Graph};
use tokio::sync::mpsc;

use super::batch::Loader;
use super::id_map::IdMap;
use super::{neo_error, quote, CHUNK_BYTES, MAX_LINE, SVC};
use crate::artifact::ArtifactSource;
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::neo4j::Neo4j;
use crate::stores::RestoreContext;

impl Neo4j {
    /// Remove everything: data, constraints, indexes (token lookup indexes stay).
    pub(in crate::stores::neo4j) async fn wipe(&self, graph: &Graph) -> Result<()> {
        let step = "wipe database";
        for row in self
            .rows(graph, "SHOW CONSTRAINTS YIELD name RETURN name", step)
            .await?
        {
            let name: String = row.get("name").unwrap_or_default();
            graph
                .run(query(&format!(
                    "DROP CONSTRAINT {} IF EXISTS",
                    quote(&name)
                )))
                .await
                .map_err(|e| neo_error(step, e))?;
        }
        for row in self
            .rows(
                graph,
                "SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name",
                step,
            )
            .await?
        {
            let name: String = row.get("name").unwrap_or_default();
            graph
                .run(query(&format!("DROP INDEX {} IF EXISTS", quote(&name))))
                .await
                .map_err(|e| neo_error(step, e))?;
        }
        graph
            .run(query(
                "MATCH (n) CALL { WITH n DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS",
            ))
            .await
            .map_err(|e| neo_error(step, e))
    }

    /// Replace the user database with the export: wipe it, load the nodes
    /// then the relationships, then create the schema.
    pub(in crate::stores::neo4j) async fn restore_logical(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let graph = self.graph().await?;
        let graph = &graph;
        let relationships = record.counts.get("relationships").copied();
        self.wipe(graph).await?;
        tracing::info!(service = %SVC, "database emptied; restoring nodes");

        let ids = IdMap::create(ctx.scratch)
            .map_err(|e| io_error(Some(SVC), "prepare load", ctx.scratch.display(), e))?;
        let schema = load_graph(
            graph,
            ctx.artifact,
            self.settings
                .group_relationships
                .then_some((ctx.scratch, relationships)),
            ids,
            self.settings.batch_size,
            self.settings.transactions,
        )
        .await?;

        create_schema(graph, &schema).await
    }
}

/// The export's constraints and indexes, created after the data (building
/// an index once is faster than maintaining it per row), then waited for.
/// Both loads end with it.
pub(super) async fn create_schema(graph: &Graph, schema: &[String]) -> Result<()> {
    tracing::info!(service = %SVC, "data restored; restoring constraints and indexes");
    let step = "restore schema";
    for statement in schema {
        if let Err(e) = graph.run(query(statement)).await {
            let text = e.to_string();
            // A token lookup index that survived the wipe (or that
            // neo4j-admin import created) is already there.
            if !(text.contains("already exists") || text.contains("equivalent")) {
                return Err(neo_error(step, e).hint(format!("while running: {statement}")));
            }
        }
    }
    graph
        .run(query("CALL db.awaitIndexes(3600)"))
        .await
        .map_err(|e| neo_error(step, e))
}

/// Load the nodes and relationships of the export at `path` into the (empty)
/// database; answers the schema statements, which the caller runs after the
/// data (building an index once is faster than maintaining it per row).
/// Nodes go in export order; relationships after every node, grouped by start
/// node (see `spill`) when `spill_to` names a scratch directory (and the
/// manifest's relationship count), where a second reader prepares them
/// meanwhile; in export order otherwise.
pub(super) async fn load_graph(
    graph: &Graph,
    path: &ArtifactSource,
    spill_to: Option<(&Path, Option<u64>)>,
    ids: IdMap,
    batch_size: usize,
    transactions: usize,
) -> Result<Vec<String>> {
    let spiller = spill_to.map(|(scratch, relationships)| {
        let (from, to) = (path.clone(), scratch.to_path_buf());
        tokio::task::spawn_blocking(move || super::spill::spill(&from, &to, relationships))
    });
    let mut loader = Loader::new(graph.clone(), batch_size, transactions, ids);
    let mut schema = Vec::new();
    let nodes = route_all(&mut loader, &mut schema, artifact_chunks(path)).await;
    let nodes = match nodes {
        Ok(()) => loader.drain().await,
        Err(e) => Err(e),
    };
    // Waited for even after a failure: its scratch files close with it.
    let spilled = match spiller {
        Some(spiller) => Some(
            spiller
                .await
                .map_err(|e| Error::failure("sort relationships", e.to_string()).service(SVC))
                .and_then(|spilled| spilled),
        ),
        None => None,
    };
    nodes?;
    loader.in_relationships = true;
    match spilled {
        Some(Ok(spilled)) => {
            tracing::info!(
                service = %SVC,
                relationships = spilled.relationships,
                "nodes restored; restoring relationships, grouped by start node"
            );
            route_all(&mut loader, &mut schema, move |sink| {
                spilled.read_sorted(CHUNK_BYTES, sink)
            })
            .await?;
        }
        not_grouped => {
            if let Some(Err(e)) = not_grouped {
                // The grouping only makes the load faster: without room for
                // it (a full scratch disk, say), load in export order rather
                // than fail half-way.
                tracing::warn!(
                    service = %SVC,
                    "could not group the relationships by start node ({e}); restoring them in export order"
                );
            } else {
                tracing::info!(service = %SVC, "nodes restored; restoring relationships in export order");
            }
            route_all(&mut loader, &mut schema, artifact_chunks(path)).await?;
        }
    }
    loader.drain().await?;
    Ok(schema)
}

/// The artifact's lines in chunks, for [`route_all`].
fn artifact_chunks(
    path: &ArtifactSource,
) -> impl FnOnce(&mut dyn FnMut(Result<Vec<u8>>) -> bool) + Send {
    let path = path.clone();
    move |sink| crate::ndjson::read_chunks(&path, SVC, CHUNK_BYTES, MAX_LINE, sink)
}

/// Route every line that `produce` (run on a blocking thread) hands over in
/// chunks of whole lines.
async fn route_all<P>(loader: &mut Loader, schema: &mut Vec<String>, produce: P) -> Result<()>
where
    P: FnOnce(&mut dyn FnMut(Result<Vec<u8>>) -> bool) + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>>>(8);
    let reader =
        tokio::task::spawn_blocking(move || produce(&mut |chunk| tx.blocking_send(chunk).is_ok()));
    let mut outcome = Ok(());
    'chunks: while let Some(chunk) = rx.recv().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Err(e) = loader.route(line, schema).await {
                outcome = Err(e);
                break 'chunks;
            }
        }
    }
    drop(rx);
    let _ = reader.await;
    outcome
}
