//! The dump method: `neo4j-admin database dump` of the user database into
//! `neo4j_<TS>.dump` (the runbook's artifact), and `neo4j-admin database
//! load` back, with the server stopped around each (Neo4j Community has no
//! online backup). A dump is neo4j-admin's own format: the offline check is
//! its checksum; before a restore changes anything, this neo4j-admin is asked
//! to read the dump's header while the server still runs.

use neo4rs::Graph;

use super::{Neo4j, SVC};
use crate::artifact::{ArtifactSource, PendingArtifact};
use crate::consistency::Position;
use crate::error::{io_error, Kind, Result};
use crate::manifest::ArtifactRecord;
use crate::process::{self, mask_userinfo, ToolCommand};
use crate::stores::{BackupContext, RestoreContext};

/// How much of a dump `neo4j-admin database load --info` is given: its
/// header is at the start.
const DUMP_HEAD_BYTES: u64 = 1024 * 1024;

impl Neo4j {
    /// `neo4j-admin database dump` of the database to standard output.
    fn dump_command(&self) -> ToolCommand {
        let db = self.settings.database.as_str();
        self.admin().args(["database", "dump", db, "--to-stdout"])
    }

    /// `neo4j-admin database load --info`: reads a dump's header from standard input.
    fn info_command(&self) -> ToolCommand {
        let db = self.settings.database.as_str();
        self.admin()
            .args(["database", "load", "--info", "--from-stdin", db])
    }

    /// `neo4j-admin database load` from standard input, replacing the database.
    fn load_command(&self) -> ToolCommand {
        let db = self.settings.database.as_str();
        self.admin().args([
            "database",
            "load",
            db,
            "--from-stdin",
            "--overwrite-destination=true",
        ])
    }

    /// The `--dry-run` line of stopping the server.
    pub(super) fn plan_stop(&self) -> String {
        let command = self.settings.stop_command.as_deref();
        format!(
            "stop the server: {}",
            command.unwrap_or("<not configured: the run will refuse>")
        )
    }

    /// The `--dry-run` line of starting the server.
    pub(super) fn plan_start(&self) -> String {
        let command = self.settings.start_command.as_deref();
        format!(
            "start the server: {}; wait until Bolt answers",
            command.unwrap_or("<not configured>")
        )
    }

    /// The `--dry-run` steps of a dump backup.
    pub(super) fn plan_dump_backup(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        vec![
            format!(
                "count nodes and relationships over {}",
                mask_userinfo(&self.settings.uri)
            ),
            self.plan_stop(),
            format!(
                "{} > {}/neo4j_{}.dump",
                self.dump_command(),
                ctx.dir.display(),
                ctx.timestamp
            ),
            self.plan_start(),
        ]
    }

    /// The counts over `graph` (what the manifest records; the connection
    /// is closed before the server stops), then the dump with the server stopped.
    pub(super) async fn backup_dump(
        &self,
        graph: Graph,
        ctx: &BackupContext<'_>,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        // Fail before stopping anything if the server cannot be stopped.
        self.lifecycle_command("stop")?;
        self.lifecycle_command("start")?;
        record.counts = self.count_store(&graph).await?;
        drop(graph);
        let (pending, stopped_at) = self.dump(ctx).await?;
        record.position = Some(Position::point("server_stopped", stopped_at));
        Ok(pending)
    }

    /// The `--dry-run` steps of a dump restore.
    pub(super) fn plan_dump_restore(&self, record: &ArtifactRecord) -> Vec<String> {
        vec![
            format!(
                "{} < {}: this neo4j-admin reads the dump, while the server runs",
                self.info_command(),
                record.file
            ),
            self.plan_stop(),
            format!("{} < {}", self.load_command(), record.file),
            self.plan_start(),
        ]
    }

    /// While the server still runs: it must be the backup's version or newer
    /// (neo4j-admin loads no newer dump), and this neo4j-admin must read the dump.
    pub(super) async fn prepare_dump_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let (version, _) = self.server_version().await?;
        crate::stores::refuse_newer_backup(
            SVC,
            2,
            &record.server_version,
            &version,
            "load the dump into Neo4j of that version or newer, or take a logical backup, which any version reads",
        )?;
        self.check_dump_readable(ctx.artifact).await
    }

    /// Replace the database with the dump, the server stopped meanwhile.
    pub(super) async fn restore_dump(&self, ctx: &RestoreContext<'_>) -> Result<()> {
        self.lifecycle_command("stop")?;
        self.lifecycle_command("start")?;
        self.load_dump(ctx).await
    }

    /// `neo4j-admin database dump` into the artifact, the server stopped meanwhile.
    /// Answers the artifact and the moment the server was stopped (the dump
    /// holds the store as it was then).
    async fn dump(&self, ctx: &BackupContext<'_>) -> Result<(PendingArtifact, jiff::Timestamp)> {
        let cmd = self.dump_command();
        let (dir, artifacts) = (ctx.dir.to_path_buf(), ctx.artifacts.clone());
        let file = format!("neo4j_{}.dump", ctx.timestamp);
        let moment = ctx.moment;
        let dumped = crate::stores::blocking(SVC, move || {
            let step = "dump (neo4j-admin database dump)";
            let stopped_at = jiff::Timestamp::now();
            let mut writer = artifacts
                .create(&file)
                .map_err(|e| io_error(Some(SVC), step, dir.join(&file).display(), e))?;
            process::run_with_output_into(&cmd, &mut writer, SVC, step)
                .map_err(|e| e.hint("confirm the server is stopped (the runbook: `docker compose stop neo4j`) and that neo4j-admin belongs to the same Neo4j version"))?;
            let pending = writer
                .finish()
                .map_err(|e| io_error(Some(SVC), step, "finish", e))?;
            Ok((pending, stopped_at))
        });
        // The server is stopped when this starts: no write can reach the
        // dump any more, the writers may go on.
        let work = async move {
            moment.reached(SVC);
            dumped.await
        };
        self.with_server_stopped("backup (neo4j-admin database dump)", work)
            .await
    }

    /// Whether this neo4j-admin reads the dump's format (its header: the
    /// checksum already proved the file is the one backed up), asked while
    /// the server still runs: a dump it cannot read is refused before the
    /// server is stopped and the store overwritten.
    async fn check_dump_readable(&self, artifact: &ArtifactSource) -> Result<()> {
        let cmd = self.info_command();
        let source = artifact.clone();
        let within = self.settings.timeouts.idle;
        crate::stores::blocking(SVC, move || {
            let step = "check the dump (neo4j-admin database load --info)";
            let input = source.open().map_err(|e| io_error(Some(SVC), step, &source, e))?;
            // The header is at the start; the tool stops reading after it.
            let mut head = std::io::Read::take(input, DUMP_HEAD_BYTES);
            process::run_feeding_head(&cmd, SVC, step, within, |stdin| std::io::copy(&mut head, stdin).map(|_| ()))
            .map(|_| ())
            // The version was checked: a dump this tool cannot read is damaged.
            .map_err(|e| if process::hung(&e) { e } else { e.of_kind(Kind::DamagedBackup).hint("this neo4j-admin cannot read the dump: nothing was changed and the server still runs. Restore it with neo4j-admin of the Neo4j version that wrote it (the manifest's server_version), or use a logical backup") })
        })
        .await
    }

    /// `neo4j-admin database load` from the artifact, the server stopped meanwhile.
    async fn load_dump(&self, ctx: &RestoreContext<'_>) -> Result<()> {
        let cmd = self.load_command();
        let source = ctx.artifact.clone();
        self.with_server_stopped("restore (neo4j-admin database load)", crate::stores::blocking(SVC, move || {
            let step = "load (neo4j-admin database load)";
            let mut input = source.open().map_err(|e| io_error(Some(SVC), step, &source, e))?;
            process::run_feeding(&cmd, SVC, step, |stdin| std::io::copy(&mut input, stdin).map(|_| ()))
                .map(|_| ())
                .map_err(|e| e.hint("Neo4j restore fails: confirm the main container/server is stopped; external orchestrators may restart it (retry after `docker compose stop neo4j`)"))
        }))
        .await
    }
}
