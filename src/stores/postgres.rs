//! PostgreSQL: every database and the globals, with PostgreSQL's own tools.
//!
//! * **custom** (default): `pg_dumpall --globals-only` for roles, then one
//!   `pg_dump -Fc` per database, each taken from a snapshot exported by a
//!   repeatable-read transaction that also counts the rows: the counts in the
//!   manifest are exactly the rows in the dump. The dumps are packed into
//!   `postgres_<TS>.tar` and restored with `pg_restore --clean --if-exists -j N`.
//! * **plain**: the runbook's `postgres_<TS>.sql`, `pg_dumpall --clean --if-exists`,
//!   restored with `psql -v ON_ERROR_STOP=1`.
//!
//! Passwords reach the tools only through `PGPASSWORD` in their environment.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::{BackupContext, RestoreContext, ServerInfo, Store, StoreBackup};
use crate::artifact::{self, ArtifactWriter, HashingReader, PendingArtifact};
use crate::cli::PostgresFormat;
use crate::config::PostgresSettings;
use crate::error::{io_error, Error, Kind, Result};
use crate::manifest::{ArtifactRecord, Member};
use crate::process::{self, ToolCommand};
use crate::service::Service;
use crate::target::Target;
use crate::timeout::Phase;

mod drill;
mod replace;

use replace::WORK_DB;

const SVC: Service = Service::Postgres;
const GLOBALS_MEMBER: &str = "globals.sql";
/// The last line pg_dumpall writes; a plain dump without it was cut short.
const PLAIN_TRAILER: &str = "PostgreSQL database cluster dump complete";

pub struct Postgres {
    settings: PostgresSettings,
    target: Target,
}

/// One database inside a custom-format backup.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DatabaseEntry {
    name: String,
    member: String,
}

impl Postgres {
    pub fn new(settings: PostgresSettings, target: Target) -> Self {
        Postgres { settings, target }
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// A PostgreSQL client tool with the connection in its environment. In
    /// compose mode it runs in the server's container and reaches the server
    /// there (its default socket), so only the user and password go along.
    fn tool(&self, name: &str) -> ToolCommand {
        let mut cmd = match (&self.target, &self.settings.bin_dir) {
            (Target::Compose(_), _) => ToolCommand::new(name),
            (Target::Local, Some(dir)) => ToolCommand::new(dir.join(name).to_string_lossy()),
            (Target::Local, None) => ToolCommand::new(name),
        };
        if matches!(self.target, Target::Local) {
            cmd = cmd
                .env("PGHOST", &self.settings.host)
                .env("PGPORT", self.settings.port.to_string());
        }
        cmd = cmd.env("PGUSER", &self.settings.user);
        // libpq's bound on establishing a connection (TCP, startup and
        // authentication), in whole seconds; libpq treats less than 2 as 2.
        let connect = self.settings.timeouts.connect.as_secs_f64().ceil().max(2.0);
        cmd = cmd.env("PGCONNECT_TIMEOUT", format!("{connect}"));
        if let Some(password) = &self.settings.password {
            cmd = cmd.secret_env("PGPASSWORD", password);
        }
        self.target.exec(SVC, cmd)
    }

    async fn connect(&self, database: &str, step: &str) -> Result<tokio_postgres::Client> {
        let timeouts = self.settings.timeouts;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.settings.host)
            .port(self.settings.port)
            .user(&self.settings.user)
            .dbname(database)
            .application_name("itbackup")
            .connect_timeout(timeouts.connect)
            // A peer that vanishes (host down, network cut) is found by TCP
            // keepalive and unacknowledged sends, not waited for for ever; a
            // statement the server is still running is never cut (counting
            // the rows of a large table can take minutes).
            .keepalives(true)
            .keepalives_idle(timeouts.idle.min(Duration::from_secs(60)))
            .tcp_user_timeout(timeouts.idle);
        if let Some(password) = &self.settings.password {
            config.password(password.expose());
        }
        // A restore killed while `postgres` was renamed aside (see
        // `replace`) leaves the cluster without it until the next restore,
        // which must still be able to connect: like pg_dumpall and psql it
        // falls back to template1, and then (a plain-format restore renames
        // template1 aside too) to the killed run's work database.
        let candidates = if database == "postgres" {
            vec!["postgres", "template1", WORK_DB]
        } else {
            vec![database]
        };
        for (n, candidate) in candidates.iter().enumerate() {
            config.dbname(*candidate);
            let (client, connection) = match self.connect_within(&config, candidate, step).await? {
                Ok(connected) => connected,
                Err(e)
                    if n + 1 < candidates.len()
                        && e.code() == Some(&SqlState::INVALID_CATALOG_NAME) =>
                {
                    tracing::warn!("postgres: the database {candidate} does not exist (an interrupted restore?); trying {}", candidates[n + 1]);
                    continue;
                }
                Err(e) => return Err(self.connect_error(candidate, step, e)),
            };
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("postgres connection closed: {e}");
                }
            });
            return Ok(client);
        }
        unreachable!("the last candidate returns")
    }

    /// Connect with `config`, bounded by the connect timeout as a whole:
    /// tokio-postgres' own connect_timeout covers only the TCP connection, so
    /// a server that takes it and never answers the startup would hang. The
    /// outer error is the timeout; the inner one is the server's answer.
    async fn connect_within(
        &self,
        config: &tokio_postgres::Config,
        database: &str,
        step: &str,
    ) -> Result<std::result::Result<Connected, tokio_postgres::Error>> {
        let timeouts = self.settings.timeouts;
        tokio::time::timeout(timeouts.connect, config.connect(NoTls))
            .await
            .map_err(|_| {
                let endpoint = self.endpoint();
                timeouts.error(
                    Some(SVC),
                    step,
                    Phase::Connect,
                    &format!("PostgreSQL at {endpoint}"),
                    &format!(
                        "cannot connect to {endpoint} (database {database}, user {}): ",
                        self.settings.user
                    ),
                )
            })
    }

    fn connect_error(&self, database: &str, step: &str, err: tokio_postgres::Error) -> Error {
        let endpoint = self.endpoint();
        let user = &self.settings.user;
        let message =
            format!("cannot connect to {endpoint} (database {database}, user {user}): {err}");
        let text = format!("{err:?}");
        let (kind, hint) = match err.code() {
            Some(code) if *code == SqlState::INVALID_PASSWORD => (Kind::Authentication, format!(
                "password authentication failed for user {user}: check PGPASSWORD (the compose stack's POSTGRES_PASSWORD)"
            )),
            Some(code) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => (Kind::Authentication, format!(
                "the server refuses user {user} from this host: check PGUSER and the server's pg_hba.conf"
            )),
            Some(code) if *code == SqlState::INVALID_CATALOG_NAME => {
                (Kind::StoreRefused, format!("database {database} does not exist on {endpoint}"))
            }
            // tokio-postgres names this configuration error in its text only.
            _ if text.contains("password missing") => {
                (Kind::Authentication, "the server wants a password: set PGPASSWORD".to_string())
            }
            Some(_) => (Kind::StoreRefused, format!(
                "is PostgreSQL running and reachable at {endpoint}? check `docker compose ps` and PGHOST/PGPORT"
            )),
            None => (Kind::Unreachable, format!(
                "is PostgreSQL running and reachable at {endpoint}? check `docker compose ps` and PGHOST/PGPORT"
            )),
        };
        Error::new(kind, step, message).service(SVC).hint(hint)
    }

    fn query_error(step: &str, err: tokio_postgres::Error) -> Error {
        let detail = err
            .as_db_error()
            .map(|db| db.message().to_string())
            .unwrap_or_else(|| err.to_string());
        // The server answered (a SQLSTATE) or the connection broke.
        let kind = match err.code() {
            Some(code) if *code == SqlState::DISK_FULL => Kind::NoSpace,
            Some(_) => Kind::StoreRefused,
            None if err.is_closed() => Kind::Unreachable,
            None => Kind::Failure,
        };
        Error::new(kind, step, detail).service(SVC)
    }

    /// Non-template databases that accept connections, in name order, but for
    /// the work and safety databases of an interrupted restore (see
    /// [`replace`]), which are named in a warning instead.
    async fn databases(&self, client: &tokio_postgres::Client) -> Result<Vec<String>> {
        let rows = client
            .query(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
                &[],
            )
            .await
            .map_err(|e| Self::query_error("list databases", e))?;
        let (internal, user): (Vec<String>, Vec<String>) = rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .partition(|name| replace::is_internal(name));
        if !internal.is_empty() {
            tracing::warn!(
                databases = %internal.join(", "),
                "postgres: left out databases an interrupted restore left behind (a safety copy holds the data from before that restore: run the restore again to finish it)"
            );
        }
        Ok(user)
    }

    /// Exact row counts of every ordinary table of the database `client` is in.
    /// The user tables of the connected database, largest first: (schema, name, bytes).
    async fn tables(
        client: &impl tokio_postgres::GenericClient,
        step: &str,
    ) -> Result<Vec<(String, String, i64)>> {
        let rows = client
            .query(
                "SELECT n.nspname, c.relname, pg_relation_size(c.oid) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                 ORDER BY 3 DESC, 1, 2",
                &[],
            )
            .await
            .map_err(|e| Self::query_error(step, e))?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    /// The exact number of rows of one table (not of its partitions or children).
    async fn count_table(
        client: &impl tokio_postgres::GenericClient,
        schema: &str,
        name: &str,
        step: &str,
    ) -> Result<u64> {
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{}",
            quote_ident(schema),
            quote_ident(name)
        );
        let row = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| Self::query_error(step, e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Exact row counts of every table, one after another on `client` (at
    /// backup time: inside the dump's snapshot, beside pg_dump).
    async fn count_rows(
        client: &impl tokio_postgres::GenericClient,
        database: &str,
        counts: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        let step = "count rows";
        for (schema, name, _) in Self::tables(client, step).await? {
            let n = Self::count_table(client, &schema, &name, step).await?;
            counts.insert(count_key(database, &schema, &name), n);
        }
        Self::count_large_objects(client, database, counts).await
    }

    /// Large objects live outside the user's tables: counted on their own, so
    /// that a restore that lost them fails its count check.
    async fn count_large_objects(
        client: &impl tokio_postgres::GenericClient,
        database: &str,
        counts: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        let n = Self::count_table(
            client,
            "pg_catalog",
            "pg_largeobject_metadata",
            "count large objects",
        )
        .await?;
        counts.insert(
            count_key(database, "pg_catalog", "pg_largeobject_metadata"),
            n,
        );
        Ok(())
    }

    /// Exact row counts of every table on `jobs` connections at once, each
    /// table going to the connection with the least bytes so far (after a
    /// restore, when nothing else needs the server).
    async fn count_rows_in_parallel(
        &self,
        database: &str,
        counts: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        let step = "count rows";
        let client = self.connect(database, step).await?;
        let tables = Self::tables(&client, step).await?;
        Self::count_large_objects(&client, database, counts).await?;
        drop(client);
        let jobs = self.settings.jobs.clamp(1, tables.len().max(1));
        let mut shares: Vec<(i64, Vec<(String, String)>)> = vec![(0, Vec::new()); jobs];
        for (schema, name, bytes) in tables {
            let share = shares.iter_mut().min_by_key(|s| s.0).expect("jobs >= 1");
            share.0 += bytes.max(1);
            share.1.push((schema, name));
        }
        let counted =
            futures::future::try_join_all(shares.into_iter().map(|(_, tables)| async move {
                let client = self.connect(database, step).await?;
                let mut counted = Vec::with_capacity(tables.len());
                for (schema, name) in tables {
                    let n = Self::count_table(&client, &schema, &name, step).await?;
                    counted.push((count_key(database, &schema, &name), n));
                }
                Ok::<_, Error>(counted)
            }))
            .await?;
        counts.extend(counted.into_iter().flatten());
        Ok(())
    }

    async fn server_version(&self) -> Result<(String, u32)> {
        let client = self.connect("postgres", "connect").await?;
        let row = client
            .query_one(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
                &[],
            )
            .await
            .map_err(|e| Self::query_error("server version", e))?;
        let num: i32 = row.get(1);
        Ok((row.get(0), (num / 10000) as u32))
    }

    /// Major version of a client tool, from `<tool> --version`.
    async fn client_major(&self, tool: &str) -> Result<u32> {
        let cmd = self.tool(tool).arg("--version");
        let out = blocking(move || process::output(&cmd, SVC, "check client version")).await?;
        parse_major(&out).ok_or_else(|| {
            Error::failure(
                "check client version",
                format!("cannot read a version from `{}`", out.trim()),
            )
            .service(SVC)
        })
    }

    /// The client tools must be at least as new as the server: pg_dump refuses
    /// newer servers, and an older pg_restore cannot read newer archives.
    async fn check_client(&self, server_major: u32) -> Result<()> {
        for tool in ["pg_dump", "pg_restore"] {
            let client_major = self.client_major(tool).await?;
            if client_major < server_major {
                return Err(Error::failure(
                    "check client version",
                    format!("{tool} is version {client_major} but the server is version {server_major}"),
                )
                .service(SVC)
                .hint(format!("install postgresql-client-{server_major} (or set IT_PG_BIN to its bin directory), or use compose mode so the server's own tools run inside its container")));
            }
        }
        Ok(())
    }

    /// Planner statistics for the restored database (pg_restore leaves none):
    /// vacuumdb analyzes `jobs` tables at once, where one ANALYZE goes table
    /// by table.
    async fn analyze(&self, database: &str) -> Result<()> {
        let cmd = self
            .tool("vacuumdb")
            .args(["--analyze-only", "--quiet", "--no-password"])
            .arg(format!("--jobs={}", self.settings.jobs.max(1)))
            .arg(format!("--dbname={}", conninfo_dbname(database)));
        blocking(move || process::output(&cmd, SVC, "analyze (vacuumdb)").map(|_| ())).await
    }

    // ---- custom format -------------------------------------------------

    async fn backup_custom(
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
        let result = self.dump_databases(&work, record).await;
        let packed = match result {
            Ok(members) => {
                let dir = ctx.dir.to_path_buf();
                blocking(move || pack_tar(&dir, &file, &members)).await
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
        let databases = self.databases(&admin).await?;
        drop(admin);
        // `buffered` runs `jobs` dumps at once and yields them in database order.
        let dump_all = futures::stream::iter(databases.into_iter().enumerate())
            .map(|(index, database)| async move {
                let path = work.join(format!("{index:03}.dump"));
                let mut counts = BTreeMap::new();
                self.dump_database(&database, &path, &mut counts).await?;
                tracing::info!(database = %database, "postgres: dumped database");
                Ok::<_, Error>((database, path, counts))
            })
            .buffered(self.settings.jobs)
            .try_collect::<Vec<_>>();
        let (globals_dumped, dumped) = tokio::join!(dump_globals, dump_all);
        globals_dumped?;

        let mut members = vec![(GLOBALS_MEMBER.to_string(), globals)];
        let mut entries = Vec::new();
        for (index, (name, path, counts)) in dumped?.into_iter().enumerate() {
            let member = format!("databases/{index:03}.dump");
            record.counts.extend(counts);
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
        Ok(members)
    }

    /// Count and dump one database from the same exported snapshot.
    async fn dump_database(
        &self,
        database: &str,
        path: &Path,
        counts: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        let step = format!("dump database {database}");
        let mut client = self.connect(database, &step).await?;
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| Self::query_error(&step, e))?;
        let snapshot: String = txn
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| Self::query_error(&step, e))?
            .get(0);
        let cmd = self
            .tool("pg_dump")
            .args(["--format=custom", "--no-password"])
            .arg(format!("--snapshot={snapshot}"))
            .arg("-d")
            .arg(conninfo_dbname(database));
        let step_for_tool = step.clone();
        let file = path.to_path_buf();
        // pg_dump and the exact row counts read the same snapshot at the same
        // time: the counts cost no extra wall time.
        let dump = blocking(move || tool_output_to_file(&cmd, &file, &step_for_tool));
        let count = Self::count_rows(&txn, database, counts);
        let (dumped, counted) = tokio::join!(dump, count);
        // The snapshot must stay alive until pg_dump has opened it; end it only now.
        let _ = txn.commit().await;
        dumped?;
        counted
    }

    async fn restore_custom(
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

        let globals = extracted(GLOBALS_MEMBER, "restore globals")?;
        let dumps = databases
            .iter()
            .map(|entry| Ok((entry.name.clone(), extracted(&entry.member, "restore")?)))
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<String> = dumps.iter().map(|(name, _)| name.clone()).collect();
        let replacement = self.begin_replacement(&names, ctx.scratch).await?;
        let loaded = async {
            self.restore_globals(&globals).await?;
            for (name, dump) in &dumps {
                self.load_database(name, dump).await?;
                tracing::info!(database = %name, "postgres: restored database");
            }
            Ok(())
        }
        .await;
        self.settle_replacement(replacement, loaded).await
    }

    /// Keep what was loaded, or put everything back as it was.
    async fn settle_replacement(
        &self,
        replacement: replace::Replacement,
        loaded: Result<()>,
    ) -> Result<()> {
        match loaded {
            Ok(()) => self.commit_replacement(replacement).await,
            Err(e) => Err(self.roll_back(replacement, e).await),
        }
    }

    /// pg_restore of one database into a new database of its name, created
    /// with its encoding, locale, owner, comment, settings and privileges
    /// (`--create`); `None` for the dump file means it reads standard input
    /// (compose mode: the file is on this side).
    fn restore_database_command(&self, dump: Option<&Path>) -> ToolCommand {
        let mut cmd = self
            .tool("pg_restore")
            .args(["--no-password", "--exit-on-error"]);
        if dump.is_some() {
            // Parallel jobs need a seekable file, which standard input is not.
            cmd = cmd.arg(format!("--jobs={}", self.settings.jobs));
        }
        cmd = cmd.args(["--create", "-d"]).arg(conninfo_dbname(WORK_DB));
        match dump {
            Some(file) => cmd.arg(file),
            None => cmd,
        }
    }

    /// Load one database (set aside beforehand, so its name is free) and analyze it.
    async fn load_database(&self, database: &str, dump: &Path) -> Result<()> {
        let step = format!("restore database {database}");
        let step_for_tool = step.clone();
        let restored = if self.target.compose().is_some() {
            let cmd = self.restore_database_command(None);
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
            let cmd = self.restore_database_command(Some(dump));
            blocking(move || process::output(&cmd, SVC, &step_for_tool)).await
        };
        restored.map_err(|e| {
            e.hint("the dump does not load into this server (an extension, a role, a tablespace or a function body it needs is missing?): fix the cause pg_restore names and run the restore again")
        })?;
        self.analyze(database).await
    }

    /// Roles and tablespaces: re-created idempotently, existing roles updated in place.
    async fn restore_globals(&self, globals: &Path) -> Result<()> {
        // template1, never a database the restore replaces.
        self.run_sql_file(globals, "template1", "restore globals (roles)", None)
            .await
    }

    /// Run an SQL file from pg_dumpall with psql, roles made idempotent on
    /// the way. With a `prelude` (statements of itbackup's own, sent first
    /// as they are), prelude and file run as one transaction: all or nothing.
    async fn run_sql_file(
        &self,
        file: &Path,
        database: &str,
        step: &'static str,
        prelude: Option<String>,
    ) -> Result<()> {
        let current_user = self.settings.user.clone();
        let source = file.to_path_buf();
        let mut cmd =
            self.tool("psql")
                .args(["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1"]);
        if prelude.is_some() {
            cmd = cmd.arg("--single-transaction");
        }
        let cmd = cmd.arg("-d").arg(conninfo_dbname(database));
        blocking(move || {
            let input = artifact::open_buffered(&source)
                .map_err(|e| io_error(Some(SVC), step, source.display(), e))?;
            process::run_feeding(&cmd, SVC, step, |stdin| {
                stdin.write_all(prelude.unwrap_or_default().as_bytes())?;
                make_roles_idempotent(input, stdin, &current_user)
            })
        })
        .await
        .map(|_| ())
    }

    // ---- plain format ---------------------------------------------------

    async fn backup_plain(
        &self,
        ctx: &BackupContext<'_>,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let admin = self.connect("postgres", "list databases").await?;
        let databases = self.databases(&admin).await?;
        drop(admin);
        // pg_dumpall cannot share a snapshot with us: counts are taken just before.
        for database in &databases {
            let client = self.connect(database, "count rows").await?;
            Self::count_rows(&client, database, &mut record.counts).await?;
        }
        record.details.insert("databases".into(), json!(databases));
        record
            .details
            .insert("counts_consistent_with_dump".into(), json!(false));
        let cmd = self
            .tool("pg_dumpall")
            .args(["--clean", "--if-exists", "--no-password"]);
        let dir = ctx.dir.to_path_buf();
        let file = format!("postgres_{}.sql", ctx.timestamp);
        blocking(move || {
            let step = "dump cluster (pg_dumpall)";
            let mut writer = ArtifactWriter::create(&dir, &file)
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
        .await
    }

    async fn restore_plain(&self, ctx: &RestoreContext<'_>, record: &ArtifactRecord) -> Result<()> {
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

/// A client and the connection task that drives it.
type Connected = (
    tokio_postgres::Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
);

#[async_trait]
impl Store for Postgres {
    fn address(&self) -> String {
        self.endpoint()
    }

    fn service(&self) -> Service {
        SVC
    }

    async fn probe(&self) -> Result<ServerInfo> {
        let (version, _) = self.server_version().await?;
        Ok(ServerInfo {
            version,
            endpoint: self.endpoint(),
        })
    }

    fn backup_plan(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        match self.settings.format {
            PostgresFormat::Custom => vec![
                format!("connect to {} as {} and list the databases", self.endpoint(), self.settings.user),
                self.tool("pg_dumpall").args(["--globals-only", "--no-password"]).to_string() + " > globals.sql",
                format!(
                    "for each database, {} at a time: open a repeatable-read snapshot, count the rows of every table while",
                    self.settings.jobs
                ),
                self.tool("pg_dump")
                    .args(["--format=custom", "--no-password", "--snapshot=<snapshot>", "-d", "dbname='<database>'"])
                    .to_string(),
                format!("pack globals.sql and the dumps into {}/postgres_{}.tar", ctx.dir.display(), ctx.timestamp),
            ],
            PostgresFormat::Plain => vec![
                format!("connect to {} and count the rows of every table of every database", self.endpoint()),
                format!(
                    "{} > {}/postgres_{}.sql",
                    self.tool("pg_dumpall").args(["--clean", "--if-exists", "--no-password"]),
                    ctx.dir.display(),
                    ctx.timestamp
                ),
            ],
        }
    }

    async fn backup(&self, ctx: &BackupContext<'_>) -> Result<StoreBackup> {
        let started_at = jiff::Timestamp::now().to_string();
        let (server_version, server_major) = self.server_version().await?;
        self.check_client(server_major).await?;
        let mut record = ArtifactRecord::begun(server_version, started_at);
        let artifact = match self.settings.format {
            PostgresFormat::Custom => {
                record.method = "pg_dump".into();
                record.format = "tar+custom".into();
                self.backup_custom(ctx, &mut record).await?
            }
            PostgresFormat::Plain => {
                record.method = "pg_dumpall".into();
                record.format = "plain-sql".into();
                self.backup_plain(ctx, &mut record).await?
            }
        };
        Ok(StoreBackup::finished(SVC, artifact, record))
    }

    async fn check_artifact(&self, artifact: &Path, record: &ArtifactRecord) -> Result<()> {
        let path = artifact.to_path_buf();
        match record.format.as_str() {
            "tar+custom" => {
                let members = record.members.clone();
                let pg_restore = self.tool("pg_restore");
                blocking(move || check_custom_archive(&path, &members, &pg_restore)).await
            }
            "plain-sql" => blocking(move || check_plain_trailer(&path)).await,
            other => Err(Error::failure(
                "verify",
                format!("unknown postgres artifact format '{other}'"),
            )
            .service(SVC)),
        }
    }

    fn restore_plan(&self, record: &ArtifactRecord) -> Vec<String> {
        match record.format.as_str() {
            "tar+custom" => {
                let mut plan = vec![
                    format!(
                        "extract {} into a private scratch directory under the backup root (needs {} free: checked, like every store's, before any store is changed)",
                        record.file,
                        crate::report::size(extracted_bytes(record))
                    ),
                    format!(
                        "{} -f globals.idempotent.sql  (roles: created if missing, else altered)",
                        self.tool("psql")
                            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                    ),
                ];
                let entries = database_entries(record).unwrap_or_default();
                let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
                plan.push(set_aside_step(&names));
                for entry in &entries {
                    plan.push(format!(
                        "{}   (database {})",
                        self.restore_database_command(Some(Path::new(&entry.member))),
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
            _ => {
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
        }
    }

    async fn prepare_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let (server_version, server_major) = self.server_version().await?;
        super::refuse_newer_backup(
            SVC,
            1,
            &record.server_version,
            &server_version,
            "restore it into a server of that major version or newer: PostgreSQL does not support loading a dump into an older major version",
        )?;
        self.check_client(server_major).await?;
        if record.format != "tar+custom" {
            return Ok(());
        }
        // pg_restore -j needs each dump as a file of its own.
        let step = "extract archive";
        let needed = extracted_bytes(record);
        crate::error::require_free_space(
            Some(SVC),
            step,
            ctx.scratch,
            needed,
            "extracting the dumps",
        )?;
        let artifact = ctx.artifact.to_path_buf();
        let scratch = ctx.scratch.to_path_buf();
        let members = record.members.clone();
        blocking(move || extract_members(&artifact, &members, &scratch)).await
    }

    async fn restore(&self, ctx: &RestoreContext<'_>, record: &ArtifactRecord) -> Result<()> {
        // The versions were checked by prepare_restore.
        match record.format.as_str() {
            "tar+custom" => self.restore_custom(ctx, record).await,
            _ => self.restore_plain(ctx, record).await,
        }
    }

    async fn counts(&self, record: &ArtifactRecord) -> Result<BTreeMap<String, u64>> {
        let mut databases: Vec<String> = record
            .counts
            .keys()
            .filter_map(|k| k.split_once('/').map(|(db, _)| db.to_string()))
            .collect();
        databases.dedup();
        let mut counts = BTreeMap::new();
        for database in databases {
            self.count_rows_in_parallel(&database, &mut counts).await?;
        }
        Ok(counts)
    }
}

/// The first restore step: the databases it replaces are renamed aside, not dropped.
fn set_aside_step(databases: &[String]) -> String {
    format!(
        "end other sessions on, then rename aside (to itbackup_old_<hash>) the existing databases of: {}; connect to a new empty {WORK_DB} meanwhile",
        databases.join(", ")
    )
}

const SETTLE_STEP: &str = "all loaded: drop the renamed-aside copies; on any failure: drop what was loaded and rename every copy back (the cluster is as before)";

/// Blocking work (child processes, file I/O) for this store, off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    super::blocking(SVC, work).await
}

fn database_entries(record: &ArtifactRecord) -> Result<Vec<DatabaseEntry>> {
    record
        .details
        .get("databases")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| {
            Error::damaged("restore", "the manifest lists no databases for postgres").service(SVC)
        })
}

/// `<database>/<schema>.<table>`: the key of a row count in the manifest.
pub fn count_key(database: &str, schema: &str, table: &str) -> String {
    format!("{database}/{schema}.{table}")
}

/// Quote an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A libpq connection string naming just a database, safe for any name.
fn conninfo_dbname(database: &str) -> String {
    format!(
        "dbname='{}'",
        database.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

fn parse_major(version_output: &str) -> Option<u32> {
    version_output
        .split_whitespace()
        .find(|tok| tok.starts_with(|c: char| c.is_ascii_digit()))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|major| major.parse().ok())
}

/// Pack the dumped files into one tar artifact, hashing every member on the way.
fn pack_tar(
    dir: &Path,
    file: &str,
    members: &[(String, PathBuf)],
) -> Result<(PendingArtifact, Vec<Member>)> {
    let step = "pack archive";
    let io = |e: io::Error| io_error(Some(SVC), step, dir.join(file).display(), e);
    let writer = ArtifactWriter::create(dir, file).map_err(io)?;
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
    archive: &Path,
    members: &[Member],
    step: &str,
    mut visit: impl FnMut(&Member, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let file = artifact::open_buffered(archive)
        .map_err(|e| io_error(Some(SVC), step, archive.display(), e))?;
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
                format!("{}: unsafe member {reason}", archive.display()),
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
            Error::damaged(
                step,
                format!("{}: unexpected member '{name}'", archive.display()),
            )
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
                format!(
                    "{}: member {name} does not match its checksum",
                    archive.display()
                ),
            )
            .service(SVC)
            .hint("the artifact is damaged; use another backup"));
        }
        seen += 1;
    }
    if seen != members.len() {
        return Err(Error::damaged(
            step,
            format!(
                "{}: {} of {} members present",
                archive.display(),
                seen,
                members.len()
            ),
        )
        .service(SVC)
        .hint("the artifact is truncated; use another backup"));
    }
    Ok(())
}

fn truncated(step: &str, archive: &Path, err: io::Error) -> Error {
    Error::damaged(
        step,
        format!(
            "{} cannot be read as a tar archive: {}",
            archive.display(),
            crate::archive::without_content(err)
        ),
    )
    .service(SVC)
    .hint("the artifact is truncated or damaged; use another backup")
}

/// Full decode: every member re-hashed, every database dump read through
/// `pg_restore` (which decompresses all table data) without touching a server.
fn check_custom_archive(
    archive: &Path,
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

/// Run a tool and write its standard output into `path` (created 0600).
fn tool_output_to_file(cmd: &ToolCommand, path: &Path, step: &str) -> Result<()> {
    let mut file = artifact::create_private_file(path)
        .map_err(|e| io_error(Some(SVC), step, path.display(), e))?;
    let mut buffered = BufWriter::with_capacity(artifact::CHUNK, &mut file);
    process::run_with_output_into(cmd, &mut buffered, SVC, step)?;
    buffered
        .flush()
        .map_err(|e| io_error(Some(SVC), step, path.display(), e))?;
    drop(buffered);
    file.sync_all()
        .map_err(|e| io_error(Some(SVC), step, path.display(), e))
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
fn extract_members(archive: &Path, members: &[Member], scratch: &Path) -> Result<()> {
    let step = "extract archive";
    walk_members(archive, members, step, |member, reader| {
        let path = extracted_path(scratch, &member.name);
        let mut out = artifact::create_private_file(&path)
            .map_err(|e| io_error(Some(SVC), step, path.display(), e))?;
        io::copy(reader, &mut out).map_err(|e| io_error(Some(SVC), step, path.display(), e))?;
        Ok(())
    })
}

/// A plain dump is complete only when it ends with pg_dumpall's closing comment.
fn check_plain_trailer(path: &Path) -> Result<()> {
    let step = "verify dump";
    let mut file =
        artifact::open_regular(path).map_err(|e| io_error(Some(SVC), step, path.display(), e))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(4096);
    let mut tail = String::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_to_string(&mut tail).map(|_| ()))
        .map_err(|e| io_error(Some(SVC), step, path.display(), e))?;
    if tail.contains(PLAIN_TRAILER) {
        Ok(())
    } else {
        Err(Error::damaged(
            step,
            format!(
                "{} does not end with pg_dumpall's closing line",
                path.display()
            ),
        )
        .service(SVC)
        .hint("the dump is truncated; use another backup"))
    }
}

/// Make `pg_dumpall` output runnable against a cluster that already has the
/// roles, streaming line by line (COPY data passes untouched):
/// * `CREATE ROLE x;` only when x is missing;
/// * no role is ever dropped: the bootstrap superuser cannot be, the
///   connecting role must not be (the restore goes on connecting as it), and
///   any role may own objects in databases the backup does not hold;
/// * the connecting role is not altered either (its password!);
/// * `DROP DATABASE x;` (template1, postgres) becomes `DROP DATABASE IF
///   EXISTS x;`: the restore has renamed them aside (see [`replace`]).
fn make_roles_idempotent(
    input: impl BufRead,
    out: &mut dyn Write,
    current_user: &str,
) -> io::Result<()> {
    let me = pg_ident(current_user);
    let own_alter = format!("ALTER ROLE {me} WITH ");
    let mut in_copy = false;
    for line in input.split(b'\n') {
        let line = line?;
        if in_copy {
            in_copy = line != b"\\.";
            out.write_all(&line)?;
            out.write_all(b"\n")?;
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        if text.starts_with("COPY ") && text.ends_with("FROM stdin;") {
            in_copy = true;
        }
        if let Some(role) = text
            .strip_prefix("CREATE ROLE ")
            .and_then(|r| r.strip_suffix(';'))
        {
            writeln!(out, "DO $itbackup$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $itbackup$;")?;
        } else if let Some(role) = text.strip_prefix("DROP ROLE ") {
            writeln!(out, "-- itbackup: roles are never dropped: {role}")?;
        } else if text.starts_with(&own_alter) {
            writeln!(out, "-- itbackup: kept the connecting role {me} as it is")?;
        } else if let Some(database) = text
            .strip_prefix("DROP DATABASE ")
            .filter(|rest| !rest.starts_with("IF EXISTS "))
        {
            writeln!(out, "DROP DATABASE IF EXISTS {database}")?;
        } else {
            out.write_all(&line)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// An identifier as pg_dumpall prints it: bare when it is a plain lower-case name.
fn pg_ident(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_versions() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_restore (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn conninfo_escapes_quotes() {
        assert_eq!(conninfo_dbname("a'b\\c"), "dbname='a\\'b\\\\c'");
    }

    #[test]
    fn roles_become_idempotent_and_the_connecting_role_is_spared() {
        let input = "DROP ROLE IF EXISTS postgres;\nCREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'x';\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER PASSWORD 'SCRAM';\nCOPY t (a) FROM stdin;\nCREATE ROLE data;\n\\.\n";
        let mut out = Vec::new();
        make_roles_idempotent(input.as_bytes(), &mut out, "postgres").unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("BEGIN CREATE ROLE app; EXCEPTION WHEN duplicate_object"));
        assert!(out.contains("ALTER ROLE app WITH LOGIN PASSWORD 'x';"));
        assert!(!out.contains("SCRAM") && !out.contains("DROP ROLE IF EXISTS postgres"));
        assert!(
            out.contains("\nCREATE ROLE data;\n\\.\n"),
            "COPY data is left alone: {out}"
        );
    }

    #[test]
    fn no_role_is_dropped_and_databases_are_dropped_only_if_they_exist() {
        let input = "DROP DATABASE IF EXISTS app;\nDROP ROLE IF EXISTS postgres;\nDROP ROLE IF EXISTS admin;\nDROP ROLE app;\nDROP DATABASE template1;\nDROP DATABASE postgres;\n";
        let mut out = Vec::new();
        make_roles_idempotent(input.as_bytes(), &mut out, "admin").unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.lines().any(|l| l.starts_with("DROP ROLE")), "{out}");
        assert!(out.contains("DROP DATABASE IF EXISTS app;\n"), "{out}");
        assert!(
            out.contains("DROP DATABASE IF EXISTS template1;\n"),
            "{out}"
        );
        assert!(out.contains("DROP DATABASE IF EXISTS postgres;\n"), "{out}");
    }
}
