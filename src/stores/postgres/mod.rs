//! PostgreSQL: every database and the globals, with PostgreSQL's own tools.
//!
//! * **custom** (default): `pg_dumpall --globals-only` for roles, then one
//!   `pg_dump -Fc` per database, each taken from a snapshot exported by a
//!   repeatable-read transaction that also counts the rows and digests their
//!   content: the counts and digests in the manifest are exactly the rows in
//!   the dump. The dumps are packed into
//!   `postgres_<TS>.tar` and restored with `pg_restore --clean --if-exists -j N`.
//! * **plain**: the runbook's `postgres_<TS>.sql`, `pg_dumpall --clean --if-exists`,
//!   restored with `psql -v ON_ERROR_STOP=1`.
//!
//! Passwords reach the tools only through `PGPASSWORD` in their environment.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use async_trait::async_trait;

use super::registry::Registered;
use super::{BackupContext, Method, RestoreContext, ServerInfo, Store, StoreBackup};
use crate::artifact;
use crate::artifact::ArtifactSource;
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::{self, ToolCommand};
use crate::service::Service;
use crate::target::Target;
use settings::PostgresSettings;

mod connect;
mod custom;
mod drill;
pub mod physical;
mod plain;
mod position;
mod replace;
mod rows;
mod sandbox;
mod selection;
pub mod settings;
mod sql_file;
mod switch;
pub mod wal;

use replace::WORK_DB;

const SVC: Service = Service::Postgres;

/// How a PostgreSQL backup is taken: the `format` of its manifest record
/// (with its `method`, the tool), and the `--postgres-format` /
/// `[postgres] format` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PostgresFormat {
    /// [`custom`]: `pg_dump -Fc` per database, packed into a tar.
    Custom,
    /// [`plain`]: one SQL file from `pg_dumpall`.
    Plain,
    /// [`physical`]: a base backup of the whole cluster (`pg_basebackup`),
    /// the start of a point-in-time restore with the archived WAL.
    Physical,
}

/// PostgreSQL's two formats are told apart by the record's `format`; its
/// `method` names the tool.
impl Method for PostgresFormat {
    const SERVICE: Service = SVC;
    const CALLED: &'static str = "artifact format";

    fn manifest_method(self) -> &'static str {
        match self {
            PostgresFormat::Custom => "pg_dump",
            PostgresFormat::Plain => "pg_dumpall",
            PostgresFormat::Physical => "pg_basebackup",
        }
    }

    fn manifest_key(self) -> &'static str {
        self.manifest_format()
    }

    fn recorded(record: &ArtifactRecord) -> &str {
        &record.format
    }
}

impl PostgresFormat {
    /// The `format` the manifest records for an artifact of this format.
    pub fn manifest_format(self) -> &'static str {
        match self {
            PostgresFormat::Custom => "tar+custom",
            PostgresFormat::Plain => "plain-sql",
            PostgresFormat::Physical => "base.tar.zst",
        }
    }
}

/// This store's line in the registry.
pub(crate) const REGISTERED: Registered = Registered {
    service: SVC,
    open: |settings| {
        Box::new(Postgres::new(
            settings.postgres.clone(),
            settings.target.clone(),
        ))
    },
    #[cfg(test)]
    check_methods: crate::stores::method::check_methods::<PostgresFormat>,
};

pub struct Postgres {
    settings: PostgresSettings,
    target: Target,
    /// What a physical restore's checks found, for its restore step.
    prepared: std::sync::Mutex<Option<physical::PreparedPitr>>,
}

impl Postgres {
    pub fn new(settings: PostgresSettings, target: Target) -> Self {
        Postgres {
            settings,
            target,
            prepared: Default::default(),
        }
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

    /// The databases a backup takes ([`Self::databases`]), refused while an
    /// interrupted restore's safety copies exist: the databases under their
    /// names may be partial loads, and a backup of them that counts as
    /// complete would become the newest one, the one restored and kept while
    /// prune removes the good ones before it.
    async fn databases_to_back_up(&self, client: &tokio_postgres::Client) -> Result<Vec<String>> {
        let copies = replace::safety_copies(client).await?;
        if !copies.is_empty() {
            return Err(Error::failure(
                "list databases",
                format!(
                    "an interrupted restore left the data from before it in {}: the databases it was replacing may be partial, so they are not backed up",
                    copies.join(", ")
                ),
            )
            .service(SVC)
            .hint("run that restore again to finish it (it keeps the copies' data until every database has loaded), or, once you are sure the databases under their own names are right, drop the copies; nothing was written"));
        }
        self.databases(client).await
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
        let out = blocking(move || {
            process::output_within(
                &cmd,
                SVC,
                "check client version",
                process::SHORT_ANSWER_BOUND,
            )
        })
        .await?;
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
}

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
            PostgresFormat::Custom => self.plan_custom_backup(ctx),
            PostgresFormat::Plain => self.plan_plain_backup(ctx),
            PostgresFormat::Physical => self.plan_physical_backup(ctx),
        }
    }

    async fn backup(&self, ctx: &BackupContext<'_>) -> Result<StoreBackup> {
        let started_at = jiff::Timestamp::now().to_string();
        let (server_version, server_major) = self.server_version().await?;
        self.check_client(server_major).await?;
        let mut record = ArtifactRecord::begun(server_version, started_at);
        let format = self.settings.format;
        record.method = format.manifest_method().into();
        record.format = format.manifest_format().into();
        let artifact = match format {
            PostgresFormat::Custom => self.backup_custom(ctx, &mut record).await?,
            PostgresFormat::Plain => self.backup_plain(ctx, &mut record).await?,
            PostgresFormat::Physical => self.backup_physical(ctx, &mut record).await?,
        };
        Ok(StoreBackup::finished(SVC, artifact, record))
    }

    async fn check_artifact(
        &self,
        artifact: &ArtifactSource,
        record: &ArtifactRecord,
    ) -> Result<()> {
        match PostgresFormat::of(record)? {
            PostgresFormat::Custom => self.check_custom(artifact, record).await,
            PostgresFormat::Plain => plain::check_plain(artifact).await,
            PostgresFormat::Physical => self.check_physical(artifact, record).await,
        }
    }

    fn restore_plan(
        &self,
        record: &ArtifactRecord,
        selection: &super::RestoreSelection,
    ) -> Vec<String> {
        match PostgresFormat::of(record) {
            Ok(PostgresFormat::Custom) => self.plan_custom_restore(record, selection),
            Ok(PostgresFormat::Plain) => self.plan_plain_restore(record),
            Ok(PostgresFormat::Physical) => self.plan_physical_restore(selection),
            Err(e) => vec![e.message],
        }
    }

    async fn prepare_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let format = PostgresFormat::of(record)?;
        if ctx.selection.switch && format != PostgresFormat::Custom {
            return Err(Error::usage(format!(
                "--switch needs a custom-format backup (one dump per database, each loaded beside the live one); this one is {}: restore it without --switch",
                format.manifest_format()
            )));
        }
        if format == PostgresFormat::Physical {
            return self.prepare_physical_restore(ctx, record).await;
        }
        if ctx.selection.until.is_some() {
            return Err(Error::usage(format!(
                "--until replays archived WAL after a physical base backup; this backup's PostgreSQL artifact is a {} dump",
                format.manifest_format()
            ))
            .hint("restore a backup taken with --postgres-method physical (docs/postgres-pitr.md), or restore this one without --until"));
        }
        self.check_selection(record, ctx.selection).await?;
        let (server_version, server_major) = self.server_version().await?;
        super::refuse_newer_backup(
            SVC,
            1,
            &record.server_version,
            &server_version,
            "restore it into a server of that major version or newer: PostgreSQL does not support loading a dump into an older major version",
        )?;
        self.check_client(server_major).await?;
        match format {
            PostgresFormat::Custom => self.prepare_custom_restore(ctx, record).await,
            // psql reads the dump where it is.
            PostgresFormat::Plain | PostgresFormat::Physical => Ok(()),
        }
    }

    async fn restore(&self, ctx: &RestoreContext<'_>, record: &ArtifactRecord) -> Result<()> {
        // The versions were checked by prepare_restore.
        match PostgresFormat::of(record)? {
            PostgresFormat::Custom => self.restore_custom(ctx, record).await,
            PostgresFormat::Plain => self.restore_plain(ctx, record).await,
            PostgresFormat::Physical => self.restore_physical().await,
        }
    }

    fn decodes_before_restoring(&self, record: &ArtifactRecord) -> bool {
        matches!(PostgresFormat::of(record), Ok(PostgresFormat::Physical))
    }

    async fn check_before_restore(&self, record: &ArtifactRecord) -> Result<()> {
        match PostgresFormat::of(record)? {
            // The server may be down (it crashed: that is why it is being
            // restored); what the restore needs is checked by prepare_restore.
            PostgresFormat::Physical => Ok(()),
            _ => self.probe().await.map(|_| ()),
        }
    }

    async fn recover_from_killed_run(&self) -> Result<()> {
        let Some(data) = &self.settings.data_dir else {
            return Ok(());
        };
        if !physical::interrupted(data) {
            // A restore killed while it wrote the new data directory beside
            // the live one changed nothing else: only its copy goes.
            return physical::remove_unfinished_copy(data);
        }
        tracing::warn!(
            "postgres: a physical restore of {} was interrupted; putting its data directory from before it back",
            data.display()
        );
        let note = self.roll_back_data_dir(data).await?;
        crate::lock::StoppedServer::of(SVC, &self.address()).clear();
        tracing::warn!("postgres: {note}");
        Ok(())
    }

    fn restores_parts(&self) -> bool {
        true
    }

    fn holds_part(&self, record: &ArtifactRecord, name: &str) -> bool {
        custom::database_entries(record).is_ok_and(|entries| entries.iter().any(|e| e.name == name))
    }

    fn expected_counts(
        &self,
        record: &ArtifactRecord,
        selection: &super::RestoreSelection,
    ) -> BTreeMap<String, u64> {
        selection::expected_counts(record, selection)
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

    async fn content_digests(&self, record: &ArtifactRecord) -> Result<BTreeMap<String, String>> {
        self.table_digests(record).await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every format is read back from the names the manifest records for it,
    /// its method is one the manifest's schema allows, and `ALL` lists every
    /// format the command line offers.
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
}
