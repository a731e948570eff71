//! Neo4j as a sandbox drill's server: marked by one node with a label of
//! its own, which a restore removes with everything else (it replaces the
//! whole graph), so the drill marks the server again after each restore.
//! Cleaned by wiping the graph, its constraints and indexes.

use async_trait::async_trait;
use neo4rs::query;

use super::drill::DRILL_LABEL;
use super::{neo_error, Neo4j};
use crate::error::Result;
use crate::stores::sandbox::{SandboxServer, SandboxState};

/// The label of the node that marks a sandbox.
const SANDBOX_LABEL: &str = "ItbackupSandbox";

#[async_trait]
impl SandboxServer for Neo4j {
    async fn sandbox_state(&self) -> Result<SandboxState> {
        let step = "inspect sandbox";
        let graph = self.graph().await?;
        let rows = self
            .rows(
                &graph,
                &format!(
                    "MATCH (n) RETURN toString(count(n)) AS total, \
                     toString(count(CASE WHEN n:{SANDBOX_LABEL} THEN 1 END)) AS marks, \
                     toString(count(CASE WHEN n:{DRILL_LABEL} THEN 1 END)) AS drill"
                ),
                step,
            )
            .await?;
        let number = |column: &str| -> u64 {
            rows.first()
                .and_then(|r| r.get::<String>(column).ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let others = number("total").saturating_sub(number("drill"));
        Ok(if number("marks") > 0 {
            SandboxState::Marked
        } else if others == 0 {
            SandboxState::Empty
        } else {
            SandboxState::Holds(format!("{others} node(s) in the graph"))
        })
    }

    async fn mark_sandbox(&self) -> Result<()> {
        let graph = self.graph().await?;
        graph
            .run(query(&format!(
                "MERGE (m:{SANDBOX_LABEL} {{note: 'itbackup sandbox: drills restore real backups into this server and remove them afterwards'}})"
            )))
            .await
            .map_err(|e| neo_error("mark sandbox", e))
    }

    async fn clean_sandbox(&self) -> Result<()> {
        let graph = self.graph().await?;
        self.wipe(&graph).await?;
        self.mark_sandbox().await
    }
}
