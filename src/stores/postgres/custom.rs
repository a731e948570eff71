//! The custom format (the default): `pg_dumpall --globals-only` for roles, then
//! one `pg_dump -Fc` per database from a snapshot that also counts the rows
//! and digests their content,
//! packed into `postgres_<TS>.tar`; restored with `pg_restore -j N` per database.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

use crate::artifact::{self, ArtifactSource, Artifacts, HashingReader, PendingArtifact};
use crate::error::{io_error, Error, Kind, Result};
use crate::manifest::{ArtifactRecord, Member};
use crate::moment::Moment;
use crate::process::{self, ToolCommand};
use crate::stores::{BackupContext, RestoreContext, RestoreSelection};

use super::position::{position_of, WalPoint, WAL_POINT_COLUMNS};
use super::replace::WORK_DB;
use super::rows::{Reading, TableRows};
use super::{
    blocking, conninfo_dbname, set_aside_step, tool_output_to_file, Postgres, SETTLE_STEP, SVC,
};

const GLOBALS_MEMBER: &str = "globals.sql";

/// One database inside a custom-format backup.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct DatabaseEntry {
    pub(super) name: String,
    member: String,
}

impl Postgres {
    /// The steps a custom-format backup runs, for `--dry-run`.
    pub(super) fn plan_custom_backup(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        vec![
            format!("connect to {} as {} and list the databases", self.endpoint(), self.settings.user),
            self.tool("pg_dumpall").args(["--globals-only", "--no-password"]).to_string() + " > globals.sql",
            format!(
                "for each database, {} at a time: open a repeatable-read snapshot, count the rows of every table and digest their content while",
                self.settings.jobs
            ),
            self.tool("pg_dump")
                .args(["--format=custom", "--no-password", "--snapshot=<snapshot>", "-d", "dbname='<database>'"])
                .to_string(),
            format!("pack globals.sql and the dumps into {}/postgres_{}.tar", ctx.dir.display(), ctx.timestamp),
        ]
    }

    /// Offline check: every member re-hashed, every dump decoded by pg_restore
    /// ([`check_custom_archive`]); touches no server.
    pub(super) async fn check_custom(
        &self,
        artifact: &ArtifactSource,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let path = artifact.clone();
        let members = record.members.clone();
        let pg_restore = self.tool("pg_restore");
        blocking(move || check_custom_archive(&path, &members, &pg_restore)).await
    }

    /// The steps a custom-format restore runs, for `--dry-run`.
    pub(super) fn plan_custom_restore(
        &self,
        record: &ArtifactRecord,
        selection: &RestoreSelection,
    ) -> Vec<String> {
        let mut plan = vec![format!(
            "extract {} into a private scratch directory under the backup root (needs {} free: checked, like every store's, before any store is changed)",
            record.file,
            crate::human::size(extracted_bytes(record))
        )];
        let entries: Vec<DatabaseEntry> = database_entries(record)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| selection.includes(&e.name))
            .collect();
        for entry in entries
            .iter()
            .filter(|e| selection.restored_name(&e.name) != e.name)
        {
            let to = selection.restored_name(&entry.name);
            plan.push(format!(
                "CREATE DATABASE {to} TEMPLATE template0; {}   (database {} beside the live one, untouched)",
                self.restore_database_command(Some(Path::new(&entry.member)), Some(to)),
                entry.name
            ));
        }
        if selection.includes_globals() {
            plan.push(format!(
                "{} -f globals.idempotent.sql  (roles: created if missing, else altered)",
                self.tool("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            ));
        }
        let replaced: Vec<&DatabaseEntry> = entries
            .iter()
            .filter(|e| selection.restored_name(&e.name) == e.name)
            .collect();
        let names: Vec<String> = replaced.iter().map(|e| e.name.clone()).collect();
        if selection.switch {
            plan.extend(switch_plan(&names, selection.keep_old));
            return plan;
        }
        plan.push(set_aside_step(&names));
        for entry in replaced {
            plan.push(format!(
                "{}   (database {})",
                self.restore_database_command(Some(Path::new(&entry.member)), None),
                entry.name
            ));
            plan.push(format!(
                "vacuumdb --analyze-only --jobs={} on database {}",
                self.settings.jobs.max(1),
                entry.name
            ));
        }
        plan.push(SETTLE_STEP.into());
        plan
    }

    /// Before any store changes: the dumps extracted into the scratch
    /// directory (pg_restore -j needs each dump as a file of its own), after
    /// checking it has room for them.
    pub(super) async fn prepare_custom_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let step = "extract archive";
        let needed = extracted_bytes(record);
        crate::artifact::require_free_space(
            Some(SVC),
            step,
            ctx.scratch,
            needed,
            "extracting the dumps",
        )?;
        let artifact = ctx.artifact.clone();
        let scratch = ctx.scratch.to_path_buf();
        let members = record.members.clone();
        blocking(move || extract_members(&artifact, &members, &scratch)).await
    }
    pub(super) async fn backup_custom(
        &self,
        ctx: &BackupContext<'_>,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let file = format!("postgres_{}.tar", ctx.timestamp);
        // Unique per process: a killed run's work directory is never written into again.
        let work = ctx.dir.join(format!(
            ".postgres_{}.{}.work",
            ctx.timestamp,
            std::process::id()
        ));
        let step = "backup";
        artifact::create_private_dir(&work)
            .map_err(|e| io_error(Some(SVC), step, work.display(), e))?;
        let result = self.dump_databases(&work, record, ctx.moment).await;
        let packed = match result {
            Ok(members) => {
                let artifacts = ctx.artifacts.clone();
                blocking(move || pack_tar(&artifacts, &file, &members)).await
            }
            Err(e) => Err(e),
        };
        let _ = fs::remove_dir_all(&work);
        let (pending, members) = packed?;
        record.members = members;
        Ok(pending)
    }

    /// Dump globals and every database into `work`; returns (member name, file)
    /// pairs in database order. Databases are dumped `jobs` at a time (each from
    /// its own snapshot, as PostgreSQL has no snapshot across databases), the
    /// globals beside them: a cluster of many databases is not dumped one by one.
    async fn dump_databases(
        &self,
        work: &Path,
        record: &mut ArtifactRecord,
        moment: &Moment,
    ) -> Result<Vec<(String, PathBuf)>> {
        use futures::stream::{StreamExt, TryStreamExt};
        let globals = work.join(GLOBALS_MEMBER);
        let cmd = self
            .tool("pg_dumpall")
            .args(["--globals-only", "--no-password"]);
        let file = globals.clone();
        let dump_globals = blocking(move || {
            tool_output_to_file(&cmd, &file, "dump globals (pg_dumpall --globals-only)")
        });

        let admin = self.connect("postgres", "list databases").await?;
        let databases = self.databases_to_back_up(&admin).await?;
        drop(admin);
        let dump_all = async {
            // `buffered` runs `jobs` dumps at once and yields them in database order.
            let dump = |(index, exported): (usize, Exported)| async move {
                let path = work.join(format!("{index:03}.dump"));
                let mut rows = TableRows::default();
                let database = exported.database.clone();
                let point = self.dump_exported(exported, &path, &mut rows).await?;
                tracing::info!(database = %database, "postgres: dumped database");
                Ok::<_, Error>((database, path, rows, point))
            };
            if moment.is_coordinated() {
                // One moment: every database's snapshot is exported (one
                // connection each, held until its dump has opened it)
                // before the writers go on.
                let exported = futures::future::try_join_all(
                    databases
                        .iter()
                        .map(|database| self.export_snapshot(database)),
                )
                .await?;
                moment.reached(SVC);
                futures::stream::iter(exported.into_iter().enumerate())
                    .map(dump)
                    .buffered(self.settings.jobs)
                    .try_collect::<Vec<_>>()
                    .await
            } else {
                // Each snapshot is exported when its dump starts: no
                // connection is held for a database still waiting its turn.
                futures::stream::iter(databases.into_iter().enumerate())
                    .map(|(index, database)| async move {
                        dump((index, self.export_snapshot(&database).await?)).await
                    })
                    .buffered(self.settings.jobs)
                    .try_collect::<Vec<_>>()
                    .await
            }
        };
        let (globals_dumped, dumped) = tokio::join!(dump_globals, dump_all);
        globals_dumped?;

        let mut members = vec![(GLOBALS_MEMBER.to_string(), globals)];
        let mut entries = Vec::new();
        let mut points = Vec::new();
        for (index, (name, path, rows, point)) in dumped?.into_iter().enumerate() {
            let member = format!("databases/{index:03}.dump");
            points.push(point);
            record.counts.extend(rows.counts);
            record.digests.extend(rows.digests);
            entries.push(DatabaseEntry {
                name,
                member: member.clone(),
            });
            members.push((member, path));
        }
        record.details.insert(
            "databases".into(),
            serde_json::to_value(&entries).expect("serialises"),
        );
        record.position = position_of("exported_snapshot", &points);
        Ok(members)
    }

    /// Open a repeatable-read snapshot of `database` and export it; the
    /// connection holds it until [`Self::dump_exported`] is done with it.
    async fn export_snapshot(&self, database: &str) -> Result<Exported> {
        let step = format!("dump database {database}");
        // The digests' session settings are this connection's own: pg_dump
        // opens its own, with its own settings.
        let reading = match self.settings.content_digests {
            true => Reading::CountAndDigest,
            false => Reading::Count,
        };
        let client = self.connect_to_read(database, reading, &step).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| Self::query_error(&step, e))?;
        // One statement: the WAL point is the server's at the moment the
        // snapshot pg_dump reads was fixed.
        let exported = client
            .query_one(
                &format!("SELECT pg_export_snapshot(), {WAL_POINT_COLUMNS}"),
                &[],
            )
            .await
            .map_err(|e| Self::query_error(&step, e))?;
        Ok(Exported {
            database: database.to_string(),
            snapshot: exported.get(0),
            point: WalPoint::from_row(&exported, 1),
            client,
            reading,
        })
    }

    /// Count, digest and dump one database from its exported snapshot;
    /// returns the WAL point read in the statement that exported it.
    async fn dump_exported(
        &self,
        exported: Exported,
        path: &Path,
        rows: &mut TableRows,
    ) -> Result<WalPoint> {
        let Exported {
            database,
            snapshot,
            point,
            client,
            reading,
        } = exported;
        let step = format!("dump database {database}");
        let cmd = self
            .tool("pg_dump")
            .args(["--format=custom", "--no-password"])
            .arg(format!("--snapshot={snapshot}"))
            .arg("-d")
            .arg(conninfo_dbname(&database));
        let step_for_tool = step.clone();
        let file = path.to_path_buf();
        // pg_dump and the exact row counts and digests read the same
        // snapshot at the same time: they cost no extra wall time as long as
        // the server has a core to spare for them.
        let dump = blocking(move || tool_output_to_file(&cmd, &file, &step_for_tool));
        let read = Self::read_rows(&client, &database, reading, rows);
        let (dumped, counted) = tokio::join!(dump, read);
        // The snapshot must stay alive until pg_dump has opened it; end it only now.
        let _ = client.batch_execute("COMMIT").await;
        dumped?;
        counted.map(|()| point)
    }

    pub(super) async fn restore_custom(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let databases = database_entries(record)?;
        let extracted = |member: &str, step: &str| {
            let path = extracted_path(ctx.scratch, member);
            if path.is_file() {
                Ok(path)
            } else {
                Err(
                    Error::failure(step, format!("{member} was not extracted from the archive"))
                        .service(SVC),
                )
            }
        };

        let selection = ctx.selection;
        let globals = extracted(GLOBALS_MEMBER, "restore globals")?;
        let dumps = databases
            .iter()
            .filter(|entry| selection.includes(&entry.name))
            .map(|entry| Ok((entry.name.clone(), extracted(&entry.member, "restore")?)))
            .collect::<Result<Vec<_>>>()?;
        let (renamed, replaced): (Vec<_>, Vec<_>) = dumps
            .iter()
            .partition(|(name, _)| selection.restored_name(name) != name);
        // Beside the live data first: a failure here has changed nothing else.
        let mut created: Vec<&str> = Vec::new();
        for (from, dump) in &renamed {
            let to = selection.restored_name(from);
            if let Err(e) = self.load_renamed(to, dump).await {
                self.drop_renamed(&created).await;
                return Err(e);
            }
            tracing::info!(database = %from, as_name = %to, "postgres: restored database beside the live one");
            created.push(to);
        }
        let names: Vec<String> = replaced.iter().map(|(name, _)| name.clone()).collect();
        if selection.switch {
            let dumps: Vec<(String, std::path::PathBuf)> = replaced
                .iter()
                .map(|(name, dump)| (name.clone(), dump.clone()))
                .collect();
            let switched = self.restore_switching(ctx, record, &globals, &dumps).await;
            if switched.is_err() {
                self.drop_renamed(&created).await;
            }
            return switched;
        }
        let settled = async {
            let replacement = self.begin_replacement(&names, ctx.scratch).await?;
            let loaded = async {
                if selection.includes_globals() {
                    self.restore_globals(&globals).await?;
                }
                for (name, dump) in &replaced {
                    self.load_database(name, dump).await?;
                    tracing::info!(database = %name, "postgres: restored database");
                }
                Ok(())
            }
            .await;
            self.settle_replacement(replacement, loaded).await
        }
        .await;
        if settled.is_err() {
            self.drop_renamed(&created).await;
        }
        settled
    }

    /// pg_restore of one database into a new database of its name, created
    /// with its encoding, locale, owner, comment, settings and privileges
    /// (`--create`), or, with `into`, into that existing empty database;
    /// `None` for the dump file means it reads standard input (compose mode:
    /// the file is on this side).
    pub(super) fn restore_database_command(
        &self,
        dump: Option<&Path>,
        into: Option<&str>,
    ) -> ToolCommand {
        let mut cmd = self
            .tool("pg_restore")
            .args(["--no-password", "--exit-on-error"]);
        if dump.is_some() {
            // Parallel jobs need a seekable file, which standard input is not.
            cmd = cmd.arg(format!("--jobs={}", self.settings.jobs));
        }
        cmd = match into {
            None => cmd.args(["--create", "-d"]).arg(conninfo_dbname(WORK_DB)),
            Some(database) => cmd.arg("-d").arg(conninfo_dbname(database)),
        };
        match dump {
            Some(file) => cmd.arg(file),
            None => cmd,
        }
    }

    /// Load one database (set aside beforehand, so its name is free) and analyze it.
    async fn load_database(&self, database: &str, dump: &Path) -> Result<()> {
        self.load_dump(database, dump, None).await
    }

    /// Load a dump into the existing empty database `database` and analyze it.
    pub(super) async fn load_dump_into(&self, database: &str, dump: &Path) -> Result<()> {
        self.load_dump(database, dump, Some(database)).await
    }

    async fn load_dump(&self, database: &str, dump: &Path, into: Option<&str>) -> Result<()> {
        let step = format!("restore database {database}");
        let step_for_tool = step.clone();
        let restored = if self.target.compose().is_some() {
            let cmd = self.restore_database_command(None, into);
            let file = dump.to_path_buf();
            blocking(move || {
                let mut input = artifact::open_regular(&file)
                    .map_err(|e| io_error(Some(SVC), &step_for_tool, file.display(), e))?;
                process::run_feeding(&cmd, SVC, &step_for_tool, |stdin| {
                    io::copy(&mut input, stdin).map(|_| ())
                })
            })
            .await
        } else {
            let cmd = self.restore_database_command(Some(dump), into);
            blocking(move || process::output(&cmd, SVC, &step_for_tool)).await
        };
        restored.map_err(|e| {
            e.hint("the dump does not load into this server (an extension, a role, a tablespace or a function body it needs is missing?): fix the cause pg_restore names and run the restore again")
        })?;
        self.analyze(database).await
    }

    /// Roles and tablespaces: re-created idempotently, existing roles updated in place.
    pub(super) async fn restore_globals(&self, globals: &Path) -> Result<()> {
        // template1, never a database the restore replaces.
        self.run_sql_file(
            &ArtifactSource::File(globals.to_path_buf()),
            "template1",
            "restore globals (roles)",
            None,
        )
        .await
    }
}

/// `--switch`'s steps, for `--dry-run`.
fn switch_plan(names: &[String], keep_old: bool) -> Vec<String> {
    let list = names.join(", ");
    vec![
        format!("pg_restore each of {list} into a new database beside the live one (itbackup_new_<hash>), vacuumdb --analyze-only; the live databases keep serving"),
        "count the rows of every restored copy against the manifest: on any difference drop the copies, the live databases untouched".into(),
        format!("switch, one database after the other: end the sessions on {list}, rename it aside (itbackup_old_<hash>), rename its copy in; on any failure rename every switched database back"),
        if keep_old {
            "keep each old database as <name>_before_<YYYYmmddHHMMSS>".into()
        } else {
            "drop the old databases".into()
        },
    ]
}

pub(super) fn database_entries(record: &ArtifactRecord) -> Result<Vec<DatabaseEntry>> {
    record
        .details
        .get("databases")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| {
            Error::damaged("restore", "the manifest lists no databases for postgres").service(SVC)
        })
}

/// Pack the dumped files into one tar artifact, hashing every member on the way.
fn pack_tar(
    artifacts: &Artifacts,
    file: &str,
    members: &[(String, PathBuf)],
) -> Result<(PendingArtifact, Vec<Member>)> {
    let step = "pack archive";
    let io = |e: io::Error| io_error(Some(SVC), step, artifacts.dir().join(file).display(), e);
    let writer = artifacts.create(file).map_err(io)?;
    let mut builder = tar::Builder::new(BufWriter::with_capacity(artifact::CHUNK, writer));
    let mtime = jiff::Timestamp::now().as_second().max(0) as u64;
    let mut recorded = Vec::new();
    for (name, path) in members {
        let source = File::open(path).map_err(io)?;
        let size = source.metadata().map_err(io)?.len();
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        let mut reader = HashingReader::new(source);
        builder
            .append_data(&mut header, name, &mut reader)
            .map_err(io)?;
        let digest = reader.digest();
        if digest.bytes != size {
            return Err(
                Error::failure(step, format!("{name} changed while it was packed")).service(SVC),
            );
        }
        recorded.push(Member {
            name: name.clone(),
            bytes: digest.bytes,
            sha256: digest.sha256,
        });
    }
    let buffered = builder.into_inner().map_err(io)?;
    let writer = buffered.into_inner().map_err(|e| io(e.into_error()))?;
    Ok((writer.finish().map_err(io)?, recorded))
}

/// Walk the archive, checking that it holds exactly the recorded members with
/// their checksums, and hand each member to `visit` as a stream.
fn walk_members(
    archive: &ArtifactSource,
    members: &[Member],
    step: &str,
    mut visit: impl FnMut(&Member, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let file = archive
        .open()
        .map_err(|e| io_error(Some(SVC), step, archive, e))?;
    let mut tar = tar::Archive::new(file);
    let entries = tar.entries().map_err(|e| truncated(step, archive, e))?;
    let mut seen = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| truncated(step, archive, e))?;
        // As for OpenSearch archives: a member that climbs out, is absolute
        // or is no plain file is refused, never renamed into place.
        if let Some(reason) = crate::archive::refuse(&entry) {
            return Err(Error::damaged(
                step,
                format!("{}: unsafe member {reason}", archive),
            )
            .service(SVC)
            .hint("the archive was not written by itbackup or was altered; nothing was extracted; use another backup"));
        }
        let name = entry
            .path()
            .map_err(|e| truncated(step, archive, e))?
            .to_string_lossy()
            .into_owned();
        let member = members.iter().find(|m| m.name == name).ok_or_else(|| {
            Error::damaged(step, format!("{}: unexpected member '{name}'", archive))
                .service(SVC)
                .hint("the archive does not belong to this manifest")
        })?;
        let mut reader = HashingReader::new(&mut entry);
        visit(member, &mut reader)?;
        io::copy(&mut reader, &mut io::sink()).map_err(|e| truncated(step, archive, e))?;
        let digest = reader.digest();
        if digest.bytes != member.bytes || digest.sha256 != member.sha256 {
            return Err(Error::damaged(
                step,
                format!("{}: member {name} does not match its checksum", archive),
            )
            .service(SVC)
            .hint("the artifact is damaged; use another backup"));
        }
        seen += 1;
    }
    if seen != members.len() {
        return Err(Error::damaged(
            step,
            format!("{}: {} of {} members present", archive, seen, members.len()),
        )
        .service(SVC)
        .hint("the artifact is truncated; use another backup"));
    }
    Ok(())
}

fn truncated(step: &str, archive: &ArtifactSource, err: io::Error) -> Error {
    let err = match crate::error::carried(err) {
        Ok(carried) => return carried.service(SVC),
        Err(err) => err,
    };
    Error::damaged(
        step,
        format!(
            "{archive} cannot be read as a tar archive: {}",
            crate::archive::without_content(err)
        ),
    )
    .service(SVC)
    .hint("the artifact is truncated or damaged; use another backup")
}

/// Full decode: every member re-hashed, every database dump read through
/// `pg_restore` (which decompresses all table data) without touching a server.
fn check_custom_archive(
    archive: &ArtifactSource,
    members: &[Member],
    pg_restore: &ToolCommand,
) -> Result<()> {
    let step = "verify archive";
    walk_members(archive, members, step, |member, reader| {
        if !member.name.ends_with(".dump") {
            return Ok(());
        }
        let cmd = pg_restore.clone().args(["-f", "/dev/null"]);
        let step = format!("decode {} with pg_restore", member.name);
        process::run_feeding(&cmd, SVC, &step, |stdin| {
            io::copy(reader, stdin).map(|_| ())
        })
        .map_err(|e| {
            let kind = match e.kind {
                Kind::StoreRefused => Kind::DamagedBackup,
                other => other,
            };
            e.of_kind(kind)
                .hint("the dump is damaged; use another backup")
        })?;
        Ok(())
    })
}

/// What [`extract_members`] writes into the scratch directory.
fn extracted_bytes(record: &ArtifactRecord) -> u64 {
    record.members.iter().map(|m| m.bytes).sum()
}

/// Where [`extract_members`] puts a member: by the manifest's name, never
/// by the archive's own paths.
fn extracted_path(scratch: &Path, member: &str) -> PathBuf {
    scratch.join(member.replace('/', "_"))
}

/// Extract the recorded members into `scratch`.
fn extract_members(archive: &ArtifactSource, members: &[Member], scratch: &Path) -> Result<()> {
    let step = "extract archive";
    walk_members(archive, members, step, |member, reader| {
        let path = extracted_path(scratch, &member.name);
        let mut out = artifact::create_private_file(&path)
            .map_err(|e| io_error(Some(SVC), step, path.display(), e))?;
        io::copy(reader, &mut out).map_err(|e| io_error(Some(SVC), step, path.display(), e))?;
        Ok(())
    })
}

/// A database's exported snapshot and the connection that keeps it alive.
struct Exported {
    database: String,
    snapshot: String,
    /// The WAL point read in the statement that exported it.
    point: WalPoint,
    client: tokio_postgres::Client,
    reading: Reading,
}
