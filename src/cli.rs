//! Command-line definitions (clap) and nothing else.

use std::path::PathBuf;

/// The drill's `--scale` when none is given: rows, documents and nodes per
/// store, enough to take measurable time and small enough for CI.
pub const DEFAULT_DRILL_SCALE: u64 = 10_000;

use clap::{Args, Parser, Subcommand};

pub use crate::parallel::Parallel;
use crate::service::ServiceList;
use crate::stores::neo4j::settings::Neo4jLoad;
use crate::stores::neo4j::Neo4jMethod;
use crate::stores::opensearch::OpenSearchMethod;
use crate::stores::postgres::physical::Until;
use crate::stores::postgres::PostgresFormat;

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

Off the host, encrypted (credentials from AWS_* variables, see docs/remote.md):
  itbackup keygen --out key.txt          # an age key pair; prints the recipient
  itbackup backup --encrypt-to age1… --upload s3://bucket/prefix
  itbackup restore --from s3://bucket/prefix --identity key.txt --yes

Connections come from the usual variables: PGHOST PGPORT PGUSER PGPASSWORD,
OPENSEARCH_URL, NEO4J_URI NEO4J_USER NEO4J_PASSWORD. Settings may also live in a
TOML file (--config, IT_CONFIG or ./itbackup.toml); flags beat the environment,
which beats the file. Set RUST_LOG=debug to see every command that runs.";

/// The exit codes, after the long help (docs/exit-codes.md has the details;
/// a unit test keeps the two and `error::Kind` in step).
pub const EXIT_CODES: &str = "\
Exit codes (details and what to do: docs/exit-codes.md):
  0  success
  1  failure                 anything not named below
  2  usage                   bad arguments or configuration; nothing was done
  3  not_found               no such backup, path or remote backup
  4  damaged_backup          a checksum, size, manifest or decode check failed
  5  verification_mismatch   restored counts or digests differ from the backup
  6  locked                  another run holds the backup root or a server
  7  unreachable             a server or repository refused the connection or timed out
  8  authentication          credentials or key refused
  9  no_space                a disk is full
  10 store_refused           a server or a store's tool refused the work
  11 interrupted             a signal stopped one of the tools
With --json an error is also printed on standard output as
{\"error\": {\"kind\", \"exit_code\", \"service\", \"step\", \"message\", \"hint\"}}.";

#[derive(Debug, Parser)]
#[command(name = "itbackup", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXIT_CODES)]
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

    /// Run the stores' tools inside their Docker Compose containers (also on
    /// when IT_COMPOSE_FILES or IT_COMPOSE_PROJECT is set).
    #[arg(long, global = true)]
    pub compose: bool,

    /// Seal every artifact with age to this public key (age1… or an SSH public
    /// key, or a file of them); repeat for several. The manifest stays readable.
    #[arg(
        long,
        global = true,
        env = "IT_AGE_RECIPIENTS",
        value_delimiter = ',',
        value_name = "RECIPIENT"
    )]
    pub encrypt_to: Vec<String>,

    /// age identity file (or unencrypted SSH private key) that opens sealed
    /// artifacts for verify and restore.
    #[arg(long, global = true, env = "IT_AGE_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,

    /// Upload to repositories at most this fast, for example 50MiB/s (also
    /// `[remote] limit_upload`): a backup at noon leaves the link to the users.
    #[arg(long, global = true, env = "IT_LIMIT_UPLOAD", value_name = "RATE")]
    pub limit_upload: Option<String>,

    /// Download from repositories at most this fast (also `[remote] limit_download`).
    #[arg(long, global = true, env = "IT_LIMIT_DOWNLOAD", value_name = "RATE")]
    pub limit_download: Option<String>,

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
    /// List the backups under the root (or in a repository with --from):
    /// timestamp, services, size, complete or not.
    List(ListArgs),
    /// Upload a complete local backup to a repository (s3://bucket/prefix …).
    ///
    /// Artifacts first, each checked after upload (size, then its sha256 read
    /// back), the manifest last: an interrupted push leaves a backup that
    /// `list --from` shows as incomplete, and running it again completes it.
    Push(PushArgs),
    /// Download a backup from a repository into the local root (or DIR).
    ///
    /// Every object is streamed through SHA-256 and checked against the
    /// manifest; the manifest is written last, so an interrupted download is an
    /// incomplete local backup. Sealed artifacts stay sealed.
    Pull(PullArgs),
    /// Create an age key pair for encrypted backups.
    ///
    /// Writes the private identity to FILE (owner-only) and prints the public
    /// recipient to give to --encrypt-to. Keep the identity away from the backups.
    Keygen(KeygenArgs),
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
    /// Remove old backups by a retention policy, and the debris of interrupted runs.
    ///
    /// Restic's policy over the complete backups (times from their manifests):
    /// each --keep-* rule keeps the newest backup of each of its N most recent
    /// periods (days, ISO weeks, months in local time; --keep-last: backups);
    /// a backup kept by any rule stays, and the newest complete backup always
    /// stays. Directories without a manifest that hold only files itbackup
    /// writes are removed once untouched for --grace. Damaged manifests and
    /// anything itbackup did not write are reported, never removed. Holds the
    /// root's lock, so it never runs beside a backup or restore.
    Prune(PruneArgs),
    /// Report the newest backup per service against the RPO, its verification,
    /// the last drill's RTO and the servers' health; exit 1 on any alarm.
    ///
    /// Alarms (exit status 1): a service's newest complete backup is older than
    /// --rpo or missing; the newest backup fails verification (its files'
    /// sizes always, their checksums and a full decode with --verify); a server
    /// is unreachable (skipped with --offline); the backup root has less free
    /// space than the newest complete backup takes. A last drill over the
    /// 30-minute RTO, or none found, is a warning.
    Status(StatusArgs),
    /// Run backup → verify → prune (optionally a drill) on an interval or cron schedule.
    ///
    /// Runs until SIGTERM or SIGINT. A signal during a run lets the current step
    /// finish and then stops (a second signal abandons the run; the backup then
    /// stays *.partial without a manifest, never complete). With --every the
    /// first run starts when the newest complete backup is that old (at once
    /// when there is none). Each run is logged; with --json each run's result
    /// is printed as one JSON line.
    Schedule(ScheduleArgs),
    /// Archive PostgreSQL's WAL (archive_command) and hand it back (restore_command).
    ///
    /// Continuous archiving for point-in-time recovery (docs/postgres-pitr.md).
    /// In postgresql.conf (wal_level=replica and archive_mode=on need a restart):
    ///
    ///   archive_command = 'itbackup wal push --root /backups %p'
    ///
    ///   restore_command = 'itbackup wal fetch --root /backups %f %p'
    ///
    /// Each file goes to <root>/wal/<name>.zst (.zst.age when encrypted) with
    /// its record <name>.json (sizes and SHA-256 of the segment and of the stored
    /// file), written last and atomically. Pushing a segment archived already
    /// with the same content succeeds; different content under that name is
    /// refused (exit 2) and the archived one kept. `fetch` checks both
    /// checksums before PostgreSQL sees the file; a name not archived exits 3,
    /// which PostgreSQL takes for "not there", a damaged one exits 4.
    Wal(WalArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Backup directory to create (default: <root>/<TIMESTAMP>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Services to back up, comma separated: opensearch,neo4j,postgres (default: all).
    #[arg(long, value_name = "LIST")]
    pub services: Option<ServiceList>,

    /// Timestamp used in the directory and file names (default: now, %Y%m%d_%H%M%S,
    /// then -2, -3 … when a backup of that second exists; a TS given here takes it again).
    #[arg(long, env = "IT_BACKUP_TIMESTAMP", value_name = "TS")]
    pub timestamp: Option<String>,

    /// Print the plan (every step and command, passwords masked) and change nothing.
    #[arg(long, env = "DRY_RUN", value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,

    /// Also upload the backup to this repository (s3://bucket/prefix, gs://,
    /// az://, https:// WebDAV, file://), checked object by object, manifest last.
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,

    /// With --upload: keep no local copy. The artifacts stream straight into
    /// the repository (sealed on the way with --encrypt-to); each is read
    /// back and checked, then the manifest is uploaded last.
    #[arg(long, requires = "upload")]
    pub no_local: bool,

    /// Take every store's position at one moment: run --freeze-hook, let
    /// each store fix its view (snapshots exported, points in time opened,
    /// snapshot shards started), run --thaw-hook, then do the long work.
    /// Without hooks the positions are only taken together. The manifest
    /// records the freeze (docs/consistency.md).
    #[arg(long)]
    pub consistent: bool,

    /// With --consistent: shell command (sh -c) that pauses the platform's
    /// writers and returns once they are paused (IT_HOOK_EVENT=freeze).
    #[arg(long, value_name = "CMD", requires = "thaw_hook")]
    pub freeze_hook: Option<String>,

    /// Shell command that lets the writers go again (IT_HOOK_EVENT=thaw);
    /// run after the freeze, also after a failure, retried when it fails.
    #[arg(long, value_name = "CMD", requires = "freeze_hook")]
    pub thaw_hook: Option<String>,

    /// The longest the writers may stay paused, from the freeze hook's
    /// start until every store has its position (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub max_freeze: Option<String>,

    /// When --max-freeze runs out: fail (thaw, stop, no backup) or continue
    /// (thaw, finish the backup without the guarantee, and say so).
    #[arg(long, value_name = "WHAT")]
    pub on_freeze_timeout: Option<crate::moment::OnFreezeTimeout>,

    #[command(flatten)]
    pub methods: MethodArgs,

    #[command(flatten)]
    pub hooks: HookArgs,

    #[command(flatten)]
    pub monitor: MonitorArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// List a repository instead of the local root.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The local backup directory to upload.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// The repository: s3://bucket/prefix (the backup goes to <prefix>/<TIMESTAMP>).
    #[arg(value_name = "URL")]
    pub url: String,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The backup: URL/<TIMESTAMP>, or URL for the repository's newest complete one.
    #[arg(value_name = "URL")]
    pub url: String,

    /// Directory to put the backup directory in (default: the root).
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private identity (refuses to overwrite).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct MethodArgs {
    /// PostgreSQL method: custom (pg_dump -Fc per database, parallel restore;
    /// the default), plain (the runbook's postgres_<TS>.sql from pg_dumpall
    /// --clean --if-exists) or physical (pg_basebackup of the whole cluster,
    /// the start of a point-in-time restore: docs/postgres-pitr.md).
    /// --postgres-method is the same flag.
    #[arg(
        long,
        visible_alias = "postgres-method",
        value_enum,
        value_name = "METHOD"
    )]
    pub postgres_format: Option<PostgresFormat>,

    /// OpenSearch method: repository (a snapshot into a repository the cluster
    /// has registered, --opensearch-repository: incremental, the data never
    /// passes through this host), snapshot (the snapshot API into path.repo,
    /// packed as opensearch_<TS>.tar.gz) or logical (settings, mappings and
    /// documents over HTTP; portable to any cluster). Default: repository when
    /// one is named, else snapshot when path.repo is set and reachable from
    /// here, else logical.
    #[arg(long, value_enum, value_name = "METHOD")]
    pub opensearch_method: Option<OpenSearchMethod>,

    /// The registered snapshot repository (GET _snapshot lists them) the
    /// repository method snapshots into [env: IT_OPENSEARCH_REPOSITORY].
    #[arg(long, value_name = "NAME")]
    pub opensearch_repository: Option<String>,

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

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup directory to restore (default: the newest complete backup under the root).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["manifest", "from"])]
    pub path: Option<PathBuf>,

    /// Restore from a repository: URL/<TIMESTAMP>, or URL for its newest
    /// complete backup. Every artifact streams from there: read end to end
    /// and verified before any service is touched, then read again into its
    /// store; nothing is downloaded first.
    #[arg(long, value_name = "URL", conflicts_with = "manifest")]
    pub from: Option<String>,

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

    /// How a logical Neo4j backup is loaded: transactional (online UNWIND
    /// transactions, the server stays up; the default) or import (CSV files
    /// through `neo4j-admin database import full`, many times faster, the
    /// server stopped meanwhile: needs IT_NEO4J_STOP_CMD and
    /// IT_NEO4J_START_CMD) [env: IT_NEO4J_LOAD; config: [neo4j] load].
    #[arg(long, value_enum, value_name = "transactional|import")]
    pub neo4j_load: Option<Neo4jLoad>,

    /// How the stores are scheduled: `auto` (default), when their servers
    /// share this machine's cores, runs the longest restore (by its backup
    /// time) beside the others, which go one after the other (two lanes on
    /// 2 cores); else all at once. `all` or `none` to decide yourself.
    #[arg(long, value_enum, default_value_t = Parallel::Auto, value_name = "auto|all|none")]
    pub parallel: Parallel,

    /// The same as --parallel none.
    #[arg(long, hide = true)]
    pub sequential: bool,

    /// Restore into the servers this TOML file names ([postgres],
    /// [opensearch], [neo4j] as in the config file) instead of the ones of
    /// the environment and --config, which are then not read for them. A
    /// logical backup loads into a newer major version; a physical or
    /// snapshot one where the store's own rules allow it (an older server
    /// is refused before anything changes).
    #[arg(long, value_name = "FILE")]
    pub target_config: Option<PathBuf>,

    /// PostgreSQL (custom format): restore only these databases, comma
    /// separated. The other databases and the roles stay as they are (add
    /// --globals for the roles). Each must be in the backup.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub databases: Option<Vec<String>>,

    /// OpenSearch (every method): restore only the
    /// indices matching these patterns (`*` wildcards), comma separated;
    /// every other index, the templates and the pipelines stay as they are
    /// (add --globals for the snapshot's templates and pipelines). Each
    /// pattern must match an index of the backup.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    pub indices: Option<Vec<String>>,

    /// Restore the PostgreSQL database (custom format) or the OpenSearch
    /// index (every method) FROM under the new name TO,
    /// beside the live FROM, which stays untouched: inspect it, copy data
    /// back, or switch names yourself. TO must not exist. FROM names what
    /// the backup holds (a database or an index, not both). Repeatable; a
    /// renamed part needs no --databases or --indices.
    #[arg(long, value_name = "FROM=TO", value_parser = parse_rename)]
    pub rename: Vec<(String, String)>,

    /// With --databases, --indices or --rename: restore the cluster-wide
    /// state too — PostgreSQL's roles (created if missing, else altered;
    /// never dropped), or with --indices alone OpenSearch's templates and
    /// pipelines from the snapshot.
    #[arg(long)]
    pub globals: bool,

    /// Restore each selected PostgreSQL database (custom format) and
    /// OpenSearch index (every method) — every one
    /// without --databases / --indices — beside the live one, check its
    /// counts, and only then switch it in, in one short step: PostgreSQL
    /// ends the sessions on the live database, renames it aside and the
    /// copy in; OpenSearch blocks writes on the live index, keeps it as a
    /// clone, deletes it and clones the copy to its name with its aliases.
    /// A failure before the switch leaves the live data untouched; the old
    /// data is dropped after the switch unless --keep-old. Needs room for
    /// both copies. Neo4j is restored in place.
    #[arg(long)]
    pub switch: bool,

    /// With --switch: keep each old database as <name>_before_<YYYYmmddHHMMSS>
    /// and each old index as <name>-before-<YYYYmmddHHMMSS>.
    #[arg(long, requires = "switch")]
    pub keep_old: bool,

    /// PostgreSQL (physical method): point-in-time recovery. After the base
    /// backup, replay the WAL archived by `itbackup wal push` up to this
    /// moment (RFC 3339, e.g. 2026-12-01T10:41:59Z: every commit up to and
    /// including it), WAL position (0/81000028), or `latest` (everything
    /// archived). Without --path, the newest physical backup before the
    /// target is chosen. Every segment on the way is checked before the
    /// server is stopped; the old data directory is kept aside.
    ///
    /// `consistent`: the moment the backup set's other stores hold (the
    /// latest of their positions, e.g. OpenSearch's snapshot start), so that
    /// a set taken without --consistent comes back as one moment; with
    /// --services postgres alone an earlier base backup is used when this
    /// set's ended after that moment (docs/consistency.md).
    #[arg(long, value_name = "TIME|LSN|latest|consistent", value_parser = parse_until)]
    pub until: Option<Until>,

    #[command(flatten)]
    pub hooks: HookArgs,

    #[command(flatten)]
    pub monitor: MonitorArgs,
}

fn parse_until(value: &str) -> Result<Until, String> {
    Until::parse(value)
}

/// `FROM=TO`, both non-empty.
fn parse_rename(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((from, to)) if !from.is_empty() && !to.is_empty() => {
            Ok((from.to_string(), to.to_string()))
        }
        _ => Err(format!(
            "'{value}' is not FROM=TO (for example app=app_restored)"
        )),
    }
}

/// `--parallel`, with the older `--sequential` meaning `none`.
fn parallel_of(parallel: Parallel, sequential: bool) -> Parallel {
    if sequential {
        Parallel::None
    } else {
        parallel
    }
}

impl RestoreArgs {
    pub fn parallel(&self) -> Parallel {
        parallel_of(self.parallel, self.sequential)
    }
}

impl DrillArgs {
    pub fn parallel(&self) -> Parallel {
        parallel_of(self.parallel, self.sequential)
    }
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Backup directory to create (default: <root>/<TIMESTAMP>). With
    /// --backup: where drill-validation.json goes (default: the backup's
    /// directory; the current one for a repository's backup).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Sandbox drill: restore this real backup (a directory, `latest`, or with
    /// --from a backup's name) into the servers of --target-config, check
    /// every table, index and graph against the backup's counts and content
    /// digests, measure the RTO, write drill-validation.json and empty the
    /// sandbox (unless --keep). Servers that are the ones backed up, or that
    /// hold data no drill put there, are refused before anything is written.
    #[arg(long, value_name = "PATH|latest", requires = "target_config", conflicts_with_all = ["upload", "scale", "sabotage"])]
    pub backup: Option<String>,

    /// With --backup: read the backup from this repository (s3://…, file://…).
    #[arg(long, value_name = "URL", requires = "backup")]
    pub from: Option<String>,

    /// TOML file naming the sandbox servers ([postgres], [opensearch],
    /// [neo4j] as in the config file). The environment is not read for
    /// them: it names the servers backed up.
    #[arg(long, value_name = "FILE", requires = "backup")]
    pub target_config: Option<PathBuf>,

    /// Size of the synthetic data: rows in PostgreSQL, documents in OpenSearch,
    /// nodes in Neo4j (with two relationships each). Millions give a realistic RTO.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DRILL_SCALE)]
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

    /// How a logical Neo4j backup is loaded: transactional (online UNWIND
    /// transactions, the server stays up; the default) or import (CSV files
    /// through `neo4j-admin database import full`, many times faster, the
    /// server stopped meanwhile: needs IT_NEO4J_STOP_CMD and
    /// IT_NEO4J_START_CMD) [env: IT_NEO4J_LOAD; config: [neo4j] load].
    #[arg(long, value_enum, value_name = "transactional|import")]
    pub neo4j_load: Option<Neo4jLoad>,

    /// How the stores are restored: auto (default), all at once, or none
    /// (one after the other); see `itbackup restore --help`.
    #[arg(long, value_enum, default_value_t = Parallel::Auto, value_name = "auto|all|none")]
    pub parallel: Parallel,

    /// Keep a writer running during the drill's backup that puts every event
    /// id into all three stores; after the restore, compare the id sets and
    /// report (synthetic-validation.json, `cross_store`) which store lacks
    /// which events. With --consistent they must agree.
    #[arg(long, conflicts_with = "backup")]
    pub cross_store: bool,

    /// Take the drill's backup at one moment (`backup --consistent`); with
    /// --cross-store its freeze and thaw hooks pause the drill's writer.
    #[arg(long, conflicts_with = "backup")]
    pub consistent: bool,

    /// The same as --parallel none.
    #[arg(long, hide = true)]
    pub sequential: bool,

    /// Rehearse recovery from a repository: the backup goes only to URL
    /// (as `backup --upload URL --no-local`) and is restored from there.
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,

    /// Test hook: remove one synthetic record of this service after the
    /// restore, to prove that the drill notices.
    #[arg(long, hide = true, env = "IT_DRILL_SABOTAGE", value_name = "SERVICE")]
    pub sabotage: Option<crate::service::Service>,

    #[command(flatten)]
    pub methods: MethodArgs,

    #[command(flatten)]
    pub monitor: MonitorArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup directory to verify (default: the newest complete backup under the root).
    #[arg(long, value_name = "DIR", conflicts_with = "from")]
    pub path: Option<PathBuf>,

    /// Verify a backup in a repository (URL/<TIMESTAMP>, or URL for its newest
    /// complete one): every artifact is checked as it streams from there,
    /// with nothing written to the local disk.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
}

/// Monitoring of one run: a metrics file and a failure webhook.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Write Prometheus metrics (text format) to this file after the run, for
    /// node_exporter's textfile collector; written atomically, and shared by
    /// every command given the same file (each updates only its own series).
    #[arg(long, env = "IT_METRICS_FILE", value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    /// POST a JSON message to this URL when the run fails (a generic webhook).
    #[arg(long, env = "IT_NOTIFY_URL", value_name = "URL")]
    pub notify_url: Option<String>,
}

/// Commands run around a backup or restore (e.g. maintenance mode on and off).
#[derive(Debug, Args)]
pub struct HookArgs {
    /// Shell command (sh -c) run before anything changes; when it fails the run
    /// is aborted. Sees IT_HOOK_EVENT (pre-backup, pre-restore), IT_BACKUP_DIR,
    /// IT_BACKUP_ROOT, IT_HOOK_SERVICES.
    #[arg(long, value_name = "CMD")]
    pub pre_hook: Option<String>,

    /// Shell command (sh -c) run afterwards, also after a failure; sees the
    /// pre-hook's variables plus IT_HOOK_STATUS (success or failure) and
    /// IT_HOOK_ERROR. When it fails, the run's exit status is 1.
    #[arg(long, value_name = "CMD")]
    pub post_hook: Option<String>,

    /// Seconds a hook may run; then it and every process it started are
    /// killed and the hook counts as failed (a hung hook must not hold the
    /// run, and its lock, for ever).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub hook_timeout: u64,
}

/// The retention policy and the grace period of incomplete backups.
#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Keep the N newest complete backups.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,

    /// Keep the newest backup of each of the last N days that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,

    /// Keep the newest backup of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,

    /// Keep the newest backup of each of the last N months that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,

    /// Remove incomplete backups (no manifest, *.partial) only once untouched
    /// this long (24h, 90m, 7d …).
    // Younger debris may still belong to a run about to finish, or to one an
    // operator is looking into.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::human::parse_duration)]
    pub grace: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub retention: RetentionArgs,

    /// Show what would be kept and removed; change nothing.
    #[arg(long, env = "DRY_RUN", value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,

    /// Prune a repository (s3://bucket/prefix …) instead of the local root.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Recovery point objective: the newest complete backup of each service
    /// must be younger than this.
    #[arg(long, env = "IT_RPO", value_name = "DURATION", default_value = "24h", value_parser = crate::human::parse_duration)]
    pub rpo: std::time::Duration,

    /// Where PostgreSQL archives its WAL into the root or repository (`wal/`,
    /// `itbackup wal push`): the newest archived file must be younger than
    /// this (the RPO of continuous archiving; docs/postgres-pitr.md).
    #[arg(long, env = "IT_WAL_RPO", value_name = "DURATION", default_value = "5m", value_parser = crate::human::parse_duration)]
    pub wal_rpo: std::time::Duration,

    /// Services to report on (default: every service found in a complete backup,
    /// or all when there is none).
    #[arg(long, value_name = "LIST")]
    pub services: Option<ServiceList>,

    /// Re-hash and fully decode the newest backup of each service (as `itbackup verify`).
    #[arg(long)]
    pub verify: bool,

    /// Do not probe the servers (a backup host without access to them).
    #[arg(long)]
    pub offline: bool,

    /// Judge the backups in a repository (s3://bucket/prefix …) instead of the local root.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,

    #[command(flatten)]
    pub monitor: MonitorArgs,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Run every DURATION (24h, 6h, 2s …).
    #[arg(long, value_name = "DURATION", value_parser = crate::human::parse_duration, conflicts_with = "cron", required_unless_present = "cron")]
    pub every: Option<std::time::Duration>,

    /// Run at the times of a cron expression, in local time ("0 3 * * *": 03:00 daily).
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,

    /// Services to back up (default: all).
    #[arg(long, value_name = "LIST")]
    pub services: Option<ServiceList>,

    /// Upload each backup to this repository (as `backup --upload`); the
    /// retention policy then prunes the repository too.
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,

    /// After each backup, run the recovery drill too (see `itbackup drill`).
    #[arg(long)]
    pub drill: bool,

    /// Size of the drill's synthetic data.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DRILL_SCALE)]
    pub drill_scale: u64,

    /// After each backup, restore it into the sandbox servers this TOML file
    /// names and check it there (see `itbackup drill --backup`).
    #[arg(long, value_name = "FILE")]
    pub drill_target_config: Option<PathBuf>,

    /// Let the drill rewind stores that hold other data (see `itbackup drill --yes`).
    #[arg(long, short = 'y')]
    pub yes: bool,

    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub methods: MethodArgs,

    #[command(flatten)]
    pub hooks: HookArgs,

    #[command(flatten)]
    pub monitor: MonitorArgs,
}

#[derive(Debug, Args)]
pub struct WalArgs {
    #[command(subcommand)]
    pub command: WalCommand,
}

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Archive one WAL file: archive_command = 'itbackup wal push --root DIR %p'.
    ///
    /// Compressed (zstd), sealed with --encrypt-to or the config file's
    /// recipients, written as *.partial, fsynced and renamed, its record last.
    /// With --upload URL the file also goes to the repository's wal/ (checked by
    /// reading it back); with --no-local only there. Exit 0 only once every
    /// copy is durable: PostgreSQL then recycles the segment.
    Push(WalPushArgs),
    /// Hand back one archived file: restore_command = 'itbackup wal fetch --root DIR %f %p'.
    ///
    /// Both checksums of its record are checked before DEST appears; sealed
    /// files need --identity (or IT_AGE_IDENTITY, or the config file's
    /// identity). With --from URL the file comes from the repository's wal/.
    Fetch(WalFetchArgs),
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The file PostgreSQL archives (its %p: pg_wal/<name>, relative to the data directory).
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// Also archive into this repository (s3://bucket/prefix …; its wal/ under
    /// the prefix), as `backup --upload` does.
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,

    /// With --upload: keep no copy under the root (the file is staged there
    /// while it is compressed, then removed).
    #[arg(long, requires = "upload")]
    pub no_local: bool,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The name PostgreSQL asks for (its %f: a segment, NNNNNNNN.history …).
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Where PostgreSQL wants it (its %p, relative to the data directory).
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,

    /// Fetch from this repository (s3://bucket/prefix …) instead of the root.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runbook's RPO has two homes: `status --rpo`'s default and the
    /// drill's validation file (`rpo_objective_hours`). They must agree.
    #[test]
    fn the_status_rpo_default_is_the_runbooks_objective() {
        let cli = Cli::try_parse_from(["itbackup", "status"]).unwrap();
        let Command::Status(args) = cli.command else {
            panic!("not status: {:?}", cli.command);
        };
        assert_eq!(
            args.rpo,
            std::time::Duration::from_secs(crate::drill::RPO_OBJECTIVE_HOURS * 3600)
        );
    }
}
