//! Neo4j, two ways.
//!
//! * **logical** (default): an online export over Bolt — schema, every node
//!   with its labels and properties, every relationship — streamed to
//!   zstd-compressed NDJSON (format in `docs/neo4j-logical.md`), with no
//!   downtime. Neo4j Community has no online backup; this closes that gap.
//!   Property values are exported losslessly: integers as 64-bit integers,
//!   floats including NaN and ±∞, byte arrays, every temporal type (as the
//!   ISO strings Neo4j itself prints and parses), points with their CRS.
//!   Restore replaces the database: it wipes it, loads nodes in batches
//!   (`UNWIND $rows …`, several transactions in flight) while recording each
//!   exported id's new internal id in a scratch-file map, creates the
//!   relationships by direct lookup of those ids, then creates the schema
//!   (`logical/`).
//! * **dump**: `neo4j-admin database dump/load` (the runbook's `.dump`), with
//!   the server stopped around it (`dump.rs`).
//!
//! This file holds what talks to the live server whatever the method (the
//! counts, the manifest record's details), the method enum and `impl
//! Store`, which dispatches on it; `server.rs` the connections, the state of
//! the user database and the server's stop and start.

use std::collections::BTreeMap;

use async_trait::async_trait;
use neo4rs::Graph;
use serde_json::json;

use super::registry::Registered;
use super::{BackupContext, Method, RestoreContext, ServerInfo, Store, StoreBackup};
use crate::artifact::ArtifactSource;
use crate::error::{Error, Kind, Result};
use crate::lock::StoppedServer;
use crate::manifest::ArtifactRecord;
use crate::process::mask_userinfo;
use crate::service::Service;
use crate::target::Target;
use logical::{check_logical, PreparedImport, TEMP_LABEL};
use settings::{Neo4jLoad, Neo4jSettings};

mod drill;
mod dump;
mod logical;
mod sandbox;
mod server;
pub mod settings;

const SVC: Service = Service::Neo4j;

/// How a Neo4j backup is taken: the `method` (and `format`) of its manifest
/// record, and the `--neo4j-method` / `[neo4j] method` setting.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Neo4jMethod {
    /// `logical`: an online export over Bolt, as NDJSON.
    Logical,
    /// `dump`: `neo4j-admin database dump`, with the server stopped.
    Dump,
}

impl Method for Neo4jMethod {
    const SERVICE: Service = SVC;

    fn manifest_method(self) -> &'static str {
        match self {
            Neo4jMethod::Logical => "logical",
            Neo4jMethod::Dump => "neo4j-admin-dump",
        }
    }
}

impl Neo4jMethod {
    /// The `format` the manifest records for an artifact of this method.
    pub fn manifest_format(self) -> &'static str {
        match self {
            Neo4jMethod::Logical => "ndjson.zst",
            Neo4jMethod::Dump => "neo4j-dump",
        }
    }
}

/// This store's line in the registry.
pub(crate) const REGISTERED: Registered = Registered {
    service: SVC,
    open: |settings| Box::new(Neo4j::new(settings.neo4j.clone(), settings.target.clone())),
    #[cfg(test)]
    check_methods: crate::stores::method::check_methods::<Neo4jMethod>,
};

pub struct Neo4j {
    settings: Neo4jSettings,
    target: Target,
    /// `--neo4j-load import`: the CSV files `prepare_restore` wrote for `restore`.
    prepared_import: std::sync::Mutex<Option<PreparedImport>>,
}

fn neo_error(step: &str, err: neo4rs::Error) -> Error {
    let text = mask_userinfo(&err.to_string());
    let e = Error::failure(step, text.clone()).service(SVC);
    use neo4rs::{Neo4jClientErrorKind::Security, Neo4jErrorKind::Client, Neo4jSecurityErrorKind};
    let refused = matches!(&err, neo4rs::Error::Neo4j(n) if n.kind() == Client(Security(Neo4jSecurityErrorKind::Authentication)));
    match err {
        neo4rs::Error::AuthenticationError(_) => e.of_kind(Kind::Authentication).hint("Neo4j refused the credentials: check NEO4J_USER and NEO4J_PASSWORD (default test12345)"),
        neo4rs::Error::ConnectionError | neo4rs::Error::IOError { .. } | neo4rs::Error::UrlParseError(_) => {
            e.of_kind(Kind::Unreachable).hint("is Neo4j running and reachable? check `docker compose ps` and NEO4J_URI (default bolt://localhost:7687)")
        }
        // neo4rs 0.8 types a security failure only when it answers a query;
        // one met later (BEGIN, PULL, COMMIT) comes as an unexpected message
        // that quotes the server's code: read here, where the error is made.
        _ if refused || text.contains("authentication") || text.contains("Unauthorized") => {
            e.of_kind(Kind::Authentication).hint("Neo4j refused the credentials: check NEO4J_USER and NEO4J_PASSWORD (default test12345)")
        }
        neo4rs::Error::Neo4j(_) | neo4rs::Error::UnexpectedMessage(_) => e.of_kind(Kind::StoreRefused),
        _ => e,
    }
}

/// Backtick-quote a label, relationship type or name for Cypher.
fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl Neo4j {
    pub fn new(settings: Neo4jSettings, target: Target) -> Self {
        Neo4j {
            settings,
            target,
            prepared_import: Default::default(),
        }
    }

    /// Nodes per label and relationships per type, from Neo4j's count store.
    async fn count_store(&self, graph: &Graph) -> Result<BTreeMap<String, u64>> {
        let step = "count nodes and relationships";
        let mut counts = BTreeMap::new();
        let total = self
            .rows(graph, "MATCH (n) RETURN count(n) AS n", step)
            .await?;
        counts.insert(
            "nodes".to_string(),
            total[0].get::<i64>("n").unwrap_or(0) as u64,
        );
        let total = self
            .rows(graph, "MATCH ()-[r]->() RETURN count(r) AS n", step)
            .await?;
        counts.insert(
            "relationships".to_string(),
            total[0].get::<i64>("n").unwrap_or(0) as u64,
        );
        for row in self
            .rows(graph, "CALL db.labels() YIELD label RETURN label", step)
            .await?
        {
            let label: String = row.get("label").unwrap_or_default();
            if label == TEMP_LABEL {
                continue;
            }
            let n = self
                .rows(
                    graph,
                    &format!("MATCH (n:{}) RETURN count(n) AS n", quote(&label)),
                    step,
                )
                .await?;
            let n = n[0].get::<i64>("n").unwrap_or(0) as u64;
            if n > 0 {
                counts.insert(format!("label:{label}"), n);
            }
        }
        for row in self
            .rows(
                graph,
                "CALL db.relationshipTypes() YIELD relationshipType RETURN relationshipType AS t",
                step,
            )
            .await?
        {
            let t: String = row.get("t").unwrap_or_default();
            let n = self
                .rows(
                    graph,
                    &format!("MATCH ()-[r:{}]->() RETURN count(r) AS n", quote(&t)),
                    step,
                )
                .await?;
            let n = n[0].get::<i64>("n").unwrap_or(0) as u64;
            if n > 0 {
                counts.insert(format!("type:{t}"), n);
            }
        }
        Ok(counts)
    }

    fn new_record(&self, server_version: String, edition: &str) -> ArtifactRecord {
        let mut record = ArtifactRecord::begun(server_version, jiff::Timestamp::now().to_string());
        record.details.insert("edition".into(), json!(edition));
        record
            .details
            .insert("database".into(), json!(self.settings.database));
        record
    }
}

#[async_trait]
impl Store for Neo4j {
    fn address(&self) -> String {
        self.settings.uri.clone()
    }

    fn service(&self) -> Service {
        SVC
    }

    async fn probe(&self) -> Result<ServerInfo> {
        // The server, not its user database: a restore of a dump must be
        // able to repair a database that does not start.
        let (version, edition) = self.server_version().await.map_err(|e| {
            match StoppedServer::of(SVC, &self.settings.uri).left_by() {
                Some(by) => e.hint(format!(
                    "{by} and was killed before starting it again: the next backup or restore on this host starts it (IT_NEO4J_START_CMD), or start it yourself"
                )),
                None => e,
            }
        })?;
        Ok(ServerInfo {
            version: format!("{version} {edition}"),
            endpoint: mask_userinfo(&self.settings.uri),
        })
    }

    async fn recover_from_killed_run(&self) -> Result<()> {
        let stopped = StoppedServer::of(SVC, &self.settings.uri);
        let Some(by) = stopped.left_by() else {
            return Ok(());
        };
        // Whether Bolt answers now says nothing: the run may have been
        // killed inside the stop command, with the server still shutting
        // down. The stop command again (it waits for the end of a shutdown
        // and is harmless on a stopped server), then the start.
        tracing::warn!(service = %SVC, "{by} and was killed before starting it again: stopping and starting it");
        self.restart_after(&by).await?;
        stopped.clear();
        Ok(())
    }

    fn backup_plan(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        match self.settings.method {
            Neo4jMethod::Logical => self.plan_logical_backup(ctx),
            Neo4jMethod::Dump => self.plan_dump_backup(ctx),
        }
    }

    async fn backup(&self, ctx: &BackupContext<'_>) -> Result<StoreBackup> {
        let graph = self.graph().await?;
        let (version, edition) = self.version_and_edition(&graph).await?;
        let mut record = self.new_record(version, &edition);
        let method = self.settings.method;
        record.method = method.manifest_method().into();
        record.format = method.manifest_format().into();
        let artifact = match method {
            Neo4jMethod::Logical => self.backup_logical(&graph, ctx, &mut record).await?,
            Neo4jMethod::Dump => self.backup_dump(graph, ctx, &mut record).await?,
        };
        Ok(StoreBackup::finished(SVC, artifact, record))
    }

    async fn check_artifact(
        &self,
        artifact: &ArtifactSource,
        record: &ArtifactRecord,
    ) -> Result<()> {
        match Neo4jMethod::of(record)? {
            Neo4jMethod::Logical => check_logical(artifact, record).await,
            // A dump is neo4j-admin's own format; the checksum is what we can
            // prove without it (prepare_restore asks neo4j-admin to read it).
            Neo4jMethod::Dump => Ok(()),
        }
    }

    fn restore_plan(
        &self,
        record: &ArtifactRecord,
        _selection: &super::RestoreSelection,
    ) -> Vec<String> {
        match Neo4jMethod::of(record) {
            Ok(Neo4jMethod::Logical) => self.plan_logical_restore(record),
            Ok(Neo4jMethod::Dump) => self.plan_dump_restore(record),
            Err(e) => vec![e.message],
        }
    }

    async fn prepare_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        match Neo4jMethod::of(record)? {
            // The logical format loads into any version; the bulk import
            // checks its tools and writes its files before anything changes.
            Neo4jMethod::Logical => match self.settings.load {
                Neo4jLoad::Transactional => Ok(()),
                Neo4jLoad::Import => self.prepare_import_restore(ctx, record).await,
            },
            Neo4jMethod::Dump => self.prepare_dump_restore(ctx, record).await,
        }
    }

    async fn restore(&self, ctx: &RestoreContext<'_>, record: &ArtifactRecord) -> Result<()> {
        match Neo4jMethod::of(record)? {
            Neo4jMethod::Logical => match self.settings.load {
                Neo4jLoad::Transactional => self.restore_logical(ctx, record).await,
                Neo4jLoad::Import => self.restore_import().await,
            },
            Neo4jMethod::Dump => self.restore_dump(ctx).await,
        }
    }

    async fn counts(&self, _record: &ArtifactRecord) -> Result<BTreeMap<String, u64>> {
        let graph = self.graph().await?;
        self.count_store(&graph).await
    }
}
