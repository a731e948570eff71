//! The plain format: the runbook's `postgres_<TS>.sql` from
//! `pg_dumpall --clean --if-exists`, restored with `psql -v ON_ERROR_STOP=1`.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};

use serde_json::json;

use crate::artifact::{self, ArtifactSource, PendingArtifact};
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::{self};
use crate::stores::{BackupContext, RestoreContext};

use super::position::position_of;
use super::replace::WORK_DB;
use super::rows::{Reading, TableRows};
use super::{blocking, conninfo_dbname, set_aside_step, Postgres, SETTLE_STEP, SVC};

/// The last line pg_dumpall writes; a plain dump without it was cut short.
const PLAIN_TRAILER: &str = "PostgreSQL database cluster dump complete";

impl Postgres {
    /// The steps a plain-format backup runs, for `--dry-run`.
    pub(super) fn plan_plain_backup(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        vec![
            format!(
                "connect to {} and count the rows of every table of every database",
                self.endpoint()
            ),
            format!(
                "{} > {}/postgres_{}.sql",
                self.tool("pg_dumpall")
                    .args(["--clean", "--if-exists", "--no-password"]),
                ctx.dir.display(),
                ctx.timestamp
            ),
        ]
    }

    /// The steps a plain-format restore runs, for `--dry-run`.
    pub(super) fn plan_plain_restore(&self, record: &ArtifactRecord) -> Vec<String> {
        let mut names = record
            .details
            .get("databases")
            .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
            .unwrap_or_default();
        names.push("template1".into());
        vec![
            set_aside_step(&names),
            format!(
                "{} -f {}  (roles: created if missing, else altered, never dropped)",
                self.tool("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
                    .arg(conninfo_dbname(WORK_DB)),
                record.file
            ),
            SETTLE_STEP.into(),
        ]
    }
    pub(super) async fn backup_plain(
        &self,
        ctx: &BackupContext<'_>,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let admin = self.connect("postgres", "list databases").await?;
        let databases = self.databases_to_back_up(&admin).await?;
        drop(admin);
        // pg_dumpall cannot share a snapshot with us: counts are taken just
        // before, and no content digests: read outside the dump's snapshot,
        // they could differ from a good dump's data and fail its check.
        for database in &databases {
            let reading = Reading::Count;
            let client = self
                .connect_to_read(database, reading, "count rows")
                .await?;
            let mut rows = TableRows::default();
            Self::read_rows(&client, database, reading, &mut rows).await?;
            record.counts.extend(rows.counts);
        }
        record.details.insert("databases".into(), json!(databases));
        record
            .details
            .insert("counts_consistent_with_dump".into(), json!(false));
        let cmd = self
            .tool("pg_dumpall")
            .args(["--clean", "--if-exists", "--no-password"]);
        let (dir, artifacts) = (ctx.dir.to_path_buf(), ctx.artifacts.clone());
        let file = format!("postgres_{}.sql", ctx.timestamp);
        // pg_dumpall takes a snapshot per database, at moments it does not
        // tell: the position is the span it ran over, read around it.
        let before = self.wal_point_now("read the WAL position").await?;
        let pending = blocking(move || {
            let step = "dump cluster (pg_dumpall)";
            let mut writer = artifacts
                .create(&file)
                .map_err(|e| io_error(Some(SVC), step, dir.join(&file).display(), e))?;
            let mut buffered = BufWriter::with_capacity(artifact::CHUNK, &mut writer);
            process::run_with_output_into(&cmd, &mut buffered, SVC, step)?;
            buffered
                .flush()
                .map_err(|e| io_error(Some(SVC), step, "flush", e))?;
            drop(buffered);
            writer
                .finish()
                .map_err(|e| io_error(Some(SVC), step, "finish", e))
        })
        .await?;
        let after = self.wal_point_now("read the WAL position").await?;
        record.position = position_of("dump_span", &[before, after]);
        Ok(pending)
    }

    pub(super) async fn restore_plain(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let databases: Vec<String> = record
            .details
            .get("databases")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        // pg_dumpall --clean drops and re-creates template1 too.
        let mut replaced = databases.clone();
        if !replaced.iter().any(|d| d == "template1") {
            replaced.push("template1".into());
        }
        let replacement = self.begin_replacement(&replaced, ctx.scratch).await?;
        let loaded = async {
            self.run_sql_file(ctx.artifact, WORK_DB, "restore cluster (psql)", None)
                .await
                .map_err(|e| {
                    e.hint("the dump does not load into this server (an extension, a role, a tablespace or a function body it needs is missing?): fix the cause psql names and run the restore again")
                })?;
            for database in &databases {
                self.analyze(database).await?;
            }
            Ok(())
        }
        .await;
        self.settle_replacement(replacement, loaded).await
    }
}

/// A plain dump is complete only when it ends with pg_dumpall's closing comment.
fn check_plain_trailer(source: &ArtifactSource) -> Result<()> {
    let step = "verify dump";
    let tail = dump_tail(source).map_err(|e| io_error(Some(SVC), step, source, e))?;
    if String::from_utf8_lossy(&tail).contains(PLAIN_TRAILER) {
        Ok(())
    } else {
        Err(Error::damaged(
            step,
            format!("{source} does not end with pg_dumpall's closing line"),
        )
        .service(SVC)
        .hint("the dump is truncated; use another backup"))
    }
}

/// Offline check of a plain dump ([`check_plain_trailer`]); touches no server.
pub(super) async fn check_plain(artifact: &ArtifactSource) -> Result<()> {
    let source = artifact.clone();
    blocking(move || check_plain_trailer(&source)).await
}

/// The last [`TAIL_BYTES`] of the dump: a local file is read from there on;
/// an object streams through, its tail kept (the pass checks it whole).
fn dump_tail(source: &ArtifactSource) -> std::io::Result<Vec<u8>> {
    let mut tail = Vec::new();
    if let Some(path) = source.local_path() {
        let mut file = artifact::open_regular(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES as u64)))?;
        file.read_to_end(&mut tail)?;
        return Ok(tail);
    }
    let mut reader = source.open()?;
    let mut chunk = vec![0u8; artifact::CHUNK];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Ok(tail);
        }
        tail.extend_from_slice(&chunk[..n]);
        let excess = tail.len().saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
    }
}

/// How much of a plain dump's end holds its closing line.
const TAIL_BYTES: usize = 4096;
