//! Command-line definitions (clap) and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::service::ServiceList;

const ABOUT: &str =
    "Back up and restore OpenSearch, Neo4j and PostgreSQL as one consistent, verified set.";

const LONG_ABOUT: &str = "\
Back up and restore OpenSearch, Neo4j and PostgreSQL as one consistent, verified set.

A backup is a directory <root>/<TIMESTAMP> holding one artifact per service and a
backup-manifest.json, written last, with the SHA-256, size, method and object
counts of every artifact. A directory without a manifest is incomplete and is
never restored.

Quick start against the local stack:
  itbackup backup                        # all services into artifacts/backup/<TS>
  itbackup list                          # what is there, complete or not
  itbackup verify                        # re-hash and decode the newest backup
  itbackup restore --yes                 # verify, then restore the newest backup

Connections come from the usual variables: PGHOST PGPORT PGUSER PGPASSWORD,
OPENSEARCH_URL, NEO4J_URI NEO4J_USER NEO4J_PASSWORD. Settings may also live in a
TOML file (--config, IT_CONFIG or ./itbackup.toml); flags beat the environment,
which beats the file. Set RUST_LOG=debug to see every command that runs.";

#[derive(Debug, Parser)]
#[command(name = "itbackup", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Directory that holds the backups (one sub-directory per backup).
    #[arg(long, global = true, env = "IT_BACKUP_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// TOML settings file (default: ./itbackup.toml when it exists).
    #[arg(long, global = true, env = "IT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print results as JSON on standard output (logs stay on standard error).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up the chosen services into a new backup directory.
    ///
    /// Every service is probed before anything is written; artifacts are written
    /// as *.partial and renamed only when every service succeeded, and the
    /// manifest is written last.
    Backup(BackupArgs),
    /// Verify a backup, then restore it into the live services (overwrites data).
    ///
    /// Every requested artifact is re-hashed and decoded end to end before any
    /// service is touched. After each service is restored its object counts are
    /// compared with the manifest and its health is checked.
    Restore(RestoreArgs),
    /// Re-hash and fully decode every artifact of a backup; touches no service.
    Verify(VerifyArgs),
    /// List the backups under the root: timestamp, services, size, complete or not.
    List,
    /// Rehearse a recovery: populate synthetic data, back up, wipe, restore, verify.
    ///
    /// Synthetic data goes next to whatever the stores hold (database
    /// itbackup_drill, indices itbackup-drill-*, nodes :ItbackupDrill); the backup
    /// and restore are the normal ones. The drill checks that the synthetic data
    /// came back exactly (counts and content digests), measures the restore time
    /// against the 30-minute recovery time objective, and writes
    /// synthetic-validation.json into the backup directory. Exit status 1 when
    /// anything differs.
    ///
    /// A full restore rewinds everything in a store to the backup, taken seconds
    /// earlier: when the stores hold data besides the drill's, the drill asks on a
    /// terminal and needs --yes elsewhere.
    Drill(DrillArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Backup directory to create (default: <root>/<TIMESTAMP>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Services to back up, comma separated: opensearch,neo4j,postgres (default: all).
    #[arg(long, value_name = "LIST")]
    pub services: Option<ServiceList>,

    /// Timestamp used in the directory and file names (default: now, %Y%m%d_%H%M%S).
    #[arg(long, env = "IT_BACKUP_TIMESTAMP", value_name = "TS")]
    pub timestamp: Option<String>,

    /// Print the plan (every step and command, passwords masked) and change nothing.
    #[arg(long, env = "DRY_RUN", value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,

    #[command(flatten)]
    pub methods: MethodArgs,
}

#[derive(Debug, Args)]
pub struct MethodArgs {
    /// PostgreSQL dump format: custom (pg_dump -Fc per database, parallel restore) or
    /// plain (the runbook's postgres_<TS>.sql from pg_dumpall --clean --if-exists).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub postgres_format: Option<PostgresFormat>,

    /// OpenSearch method: snapshot (the snapshot API into path.repo, packed as
    /// opensearch_<TS>.tar.gz) or logical (settings, mappings and documents over
    /// HTTP; portable to any cluster). Default: snapshot when path.repo is set
    /// and reachable from here, logical otherwise.
    #[arg(long, value_enum, value_name = "METHOD")]
    pub opensearch_method: Option<OpenSearchMethod>,

    /// OpenSearch indices to back up: comma-separated patterns, `-pattern` excludes
    /// (default: every index that is neither hidden nor a system index).
    #[arg(long, value_name = "PATTERNS")]
    pub indices: Option<String>,

    /// Neo4j method: logical (online export over Bolt, no downtime; the default)
    /// or dump (neo4j-admin database dump, the runbook's neo4j_<TS>.dump; stops
    /// the server while it runs).
    #[arg(long, value_enum, value_name = "METHOD")]
    pub neo4j_method: Option<Neo4jMethod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Neo4jMethod {
    Logical,
    Dump,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenSearchMethod {
    Snapshot,
    Logical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PostgresFormat {
    Custom,
    Plain,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup directory to restore (default: the newest complete backup under the root).
    #[arg(long, value_name = "DIR", conflicts_with = "manifest")]
    pub path: Option<PathBuf>,

    /// Manifest file of the backup to restore (its directory holds the artifacts).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// Services to restore, comma separated (default: every service in the backup).
    #[arg(long, value_name = "LIST")]
    pub services: Option<ServiceList>,

    /// Print the plan and change nothing.
    #[arg(long, env = "DRY_RUN", value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,

    /// Do not ask for confirmation (needed when standard input is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Restore one service after the other (default: all at once; they are
    /// separate servers, so the restore takes as long as the slowest).
    #[arg(long)]
    pub sequential: bool,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Backup directory to create (default: <root>/<TIMESTAMP>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Size of the synthetic data: rows in PostgreSQL, documents in OpenSearch,
    /// nodes in Neo4j (with two relationships each). Millions give a realistic RTO.
    #[arg(long, value_name = "N", default_value_t = crate::drill::DEFAULT_SCALE)]
    pub scale: u64,

    /// Services to drill, comma separated (default: all).
    #[arg(long, value_name = "LIST")]
    pub services: Option<ServiceList>,

    /// Leave the synthetic data in the stores afterwards.
    #[arg(long)]
    pub keep: bool,

    /// Run even though the stores hold other data (the restore rewinds it to the backup).
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Restore one service after the other instead of all at once.
    #[arg(long)]
    pub sequential: bool,

    /// Test hook: remove one synthetic record of this service after the
    /// restore, to prove that the drill notices.
    #[arg(long, hide = true, env = "IT_DRILL_SABOTAGE", value_name = "SERVICE")]
    pub sabotage: Option<crate::service::Service>,

    #[command(flatten)]
    pub methods: MethodArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup directory to verify (default: the newest complete backup under the root).
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
}
