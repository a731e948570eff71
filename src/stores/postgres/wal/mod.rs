//! Continuous WAL archiving: `itbackup wal push` is PostgreSQL's
//! `archive_command`, `itbackup wal fetch` its `restore_command`
//! (docs/postgres-pitr.md). With a base backup, the archived WAL lets a
//! restore reach any moment since, instead of the last nightly dump.
//!
//! Layout: `<root>/wal/` (a repository: `<url>/wal/`) holds one stored file
//! per archived file, `<name>.zst` or `<name>.zst.age`, and its record
//! `<name>.json` (see [`record`] for why a sidecar, written last). Segments,
//! timeline history files, `.backup` labels and a promotion's `.partial`
//! segment are all archived the same way.
//!
//! What PostgreSQL requires of these commands, and why the code is shaped
//! so:
//! * exit 0 only once the file is durable: PostgreSQL recycles the segment
//!   then (fsync of the file and its directory, the record last);
//! * never overwrite an archived file with different content (two clusters
//!   pointed at one root, a restored server that did not switch timeline):
//!   refused, exit 2, the archived file kept; the same content again (a
//!   retry after a crash between our exit and PostgreSQL noting it) succeeds;
//! * `fetch` is asked for files that do not exist (the segment after the
//!   last, history files of future timelines): exit non-zero, one line. Any
//!   exit status from 1 to 125 means "not there" to PostgreSQL (only a
//!   signal or 126/127 abort recovery), so the documented `not_found` (3)
//!   is used as is; a damaged file is `damaged_backup` (4) and never reaches
//!   `pg_wal`.
//!
//! No lock is taken: every name is written by one push at a time (PostgreSQL
//! archives one file after the other) and readers only believe records, so
//! a backup, a prune or a restore of the same root never has to wait for,
//! or stall, archiving.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::artifact::Digest256;
use crate::error::{io_error, Error, Result};
use crate::seal::{Identities, Recipients};
use crate::service::Service;

pub mod chain;
mod local;
mod name;
mod record;
mod remote;
pub mod retain;
mod stream;

pub use local::{LocalArchive, WAL_DIR};
pub use name::WalName;
pub use record::WalRecord;
pub use remote::RemoteArchive;

const SVC: Service = Service::Postgres;

/// What a push found: the file stored now, or stored already with the same content.
#[derive(Debug, Clone)]
pub enum Pushed {
    Archived(WalRecord),
    Already(WalRecord),
}

impl Pushed {
    fn record(&self) -> &WalRecord {
        match self {
            Pushed::Archived(r) | Pushed::Already(r) => r,
        }
    }
}

/// A different file is archived under `name` at `location`: refused.
pub fn conflict(
    name: &WalName,
    location: &str,
    archived: &WalRecord,
    offered: &Digest256,
) -> Error {
    Error::usage(format!(
        "{name} is archived in {location} already with different content ({} bytes, sha256 {}; this one: {} bytes, sha256 {}); the archived file is kept",
        archived.bytes, archived.sha256, offered.bytes, offered.sha256
    ))
    .service(SVC)
    .hint("each cluster needs a WAL archive of its own (another --root or repository prefix); a server restored from a backup must start a new timeline before it archives")
}

/// What `wal push` did.
#[derive(Debug, Serialize)]
pub struct PushOutcome {
    pub name: String,
    /// `segment`, `partial`, `history` or `backup_label`.
    pub kind: &'static str,
    /// False when every copy held this very file already.
    pub archived: bool,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub encrypted: bool,
    pub local: Option<PathBuf>,
    pub remote: Option<String>,
    pub seconds: f64,
}

/// What `wal fetch` did.
#[derive(Debug, Serialize)]
pub struct FetchOutcome {
    pub name: String,
    pub dest: PathBuf,
    pub bytes: u64,
    pub from: String,
    pub seconds: f64,
}

/// What `wal push` is asked (`wal push`'s arguments as plain values: the
/// stores sit below the command line, see docs/architecture.md, "Layers").
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The file PostgreSQL archives (`%p`).
    pub path: PathBuf,
    pub upload: Option<String>,
    pub no_local: bool,
}

/// What `wal fetch` is asked.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The name PostgreSQL asks for (`%f`).
    pub name: String,
    /// Where it wants it (`%p`).
    pub dest: PathBuf,
    pub from: Option<String>,
}

#[derive(Debug, Clone)]
pub enum WalRequest {
    Push(PushRequest),
    Fetch(FetchRequest),
}

/// Where the archive is and its keys, resolved from the settings.
#[derive(Debug, Clone)]
pub struct WalSettings {
    /// The root given (flag, variable or config file); `None` when only the
    /// default applies, which `wal` refuses: PostgreSQL runs these commands
    /// in its data directory, and the default root would put the archive
    /// inside the cluster it is meant to save.
    pub root: Option<PathBuf>,
    pub encrypt_to: Vec<String>,
    pub identity: Option<PathBuf>,
}

impl WalSettings {
    fn root(&self) -> Result<&Path> {
        self.root.as_deref().ok_or_else(|| {
            Error::usage(
                "wal push and wal fetch need the archive's root: --root DIR (or IT_BACKUP_ROOT, or root in the config file)",
            )
            .hint("archive_command = 'itbackup wal push --root /backups %p'")
        })
    }
}

/// Run `wal push` or `wal fetch`. A success is one log line on standard
/// error (PostgreSQL's log), and JSON on standard output with `--json`.
pub async fn run(settings: &WalSettings, request: &WalRequest, json: bool) -> Result<()> {
    match request {
        WalRequest::Push(request) => {
            let outcome = push(settings, request).await?;
            let stored = crate::human::size(outcome.stored_bytes);
            let plain = crate::human::size(outcome.bytes);
            let mut copies: Vec<String> = Vec::new();
            copies.extend(outcome.local.iter().map(|p| p.display().to_string()));
            copies.extend(outcome.remote.iter().cloned());
            let what = if outcome.archived {
                "archived"
            } else {
                "already archived (same content)"
            };
            tracing::info!(
                "{} {what}: {plain} stored as {stored} in {} ({:.2} s)",
                outcome.name,
                copies.join(" and "),
                outcome.seconds
            );
            print_json(json, &outcome);
        }
        WalRequest::Fetch(request) => {
            let outcome = fetch(settings, request).await?;
            tracing::info!(
                "{} restored from {} ({:.2} s)",
                outcome.name,
                outcome.from,
                outcome.seconds
            );
            print_json(json, &outcome);
        }
    }
    Ok(())
}

fn print_json(json: bool, outcome: &impl Serialize) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(outcome).expect("serializes")
        );
    }
}

/// The name PostgreSQL archives a file under: the last component of `%p`.
fn name_of(path: &Path) -> Result<WalName> {
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    WalName::parse(file)
}

async fn push(settings: &WalSettings, args: &PushRequest) -> Result<PushOutcome> {
    let started = Instant::now();
    let root = settings.root()?;
    let name = name_of(&args.path)?;
    let recipients = Recipients::parse(&settings.encrypt_to)?;
    let recipients = recipients.as_ref();
    let mut archived = false;
    let mut local_copy = None;
    let mut pushed = None;
    if !args.no_local {
        let archive = LocalArchive::new(root);
        let done = archive.push(&args.path, &name, recipients)?;
        archived |= matches!(done, Pushed::Archived(_));
        local_copy = Some((archive, done.record().clone()));
        pushed = Some(done);
    }
    let mut remote_location = None;
    if let Some(url) = &args.upload {
        let remote = RemoteArchive::open(url)?;
        let done = match &local_copy {
            Some((archive, record)) => {
                remote
                    .push(&name, &archive.stored_path(record), record)
                    .await?
            }
            None => push_remote_only(root, &remote, &args.path, &name, recipients).await?,
        };
        archived |= matches!(done, Pushed::Archived(_));
        remote_location = Some(format!("{url}/{WAL_DIR}"));
        pushed = Some(done);
    }
    let record = pushed.expect("a local or remote copy").record().clone();
    Ok(PushOutcome {
        name: name.to_string(),
        kind: name.kind().as_str(),
        archived,
        bytes: record.bytes,
        stored_bytes: record.file_bytes,
        encrypted: record.encryption.is_some(),
        local: local_copy.map(|(archive, _)| archive.dir),
        remote: remote_location,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `--no-local`: compress into a staging directory under the root and upload
/// from there, unless the repository holds this name already.
async fn push_remote_only(
    root: &Path,
    remote: &RemoteArchive,
    source: &Path,
    name: &WalName,
    recipients: Option<&Recipients>,
) -> Result<Pushed> {
    if let Some(existing) = remote.record(name).await? {
        let offered = stream::digest_source(source)?;
        if let Some(pushed) = remote.accept_existing(name, existing, &offered).await? {
            return Ok(pushed);
        }
    }
    let staging = crate::remote::staging_dir(root, "wal")?;
    let stored_name = WalRecord::stored_name(name, recipients.is_some());
    let (pending, plain) = stream::store(source, staging.path(), &stored_name, recipients)?;
    pending
        .commit()
        .map_err(|e| io_error(Some(SVC), "archive WAL", pending.target.display(), e))?;
    let record = local::new_record(name, plain, stored_name, pending.digest.clone(), recipients);
    remote.upload(name, &pending.target, &record).await
}

async fn fetch(settings: &WalSettings, args: &FetchRequest) -> Result<FetchOutcome> {
    let started = Instant::now();
    let name = WalName::parse(&args.name)?;
    let identities = settings
        .identity
        .as_deref()
        .map(Identities::load)
        .transpose()?;
    let (record, from) = match &args.from {
        Some(url) => {
            let archive = RemoteArchive::open(url)?;
            let record = archive
                .fetch(&name, &args.dest, identities.as_ref())
                .await?;
            (record, format!("{url}/{WAL_DIR}"))
        }
        None => {
            let archive = LocalArchive::new(settings.root()?);
            let record = archive.fetch(&name, &args.dest, identities.as_ref())?;
            (record, archive.dir.display().to_string())
        }
    };
    Ok(FetchOutcome {
        name: name.to_string(),
        dest: args.dest.clone(),
        bytes: record.bytes,
        from,
        seconds: started.elapsed().as_secs_f64(),
    })
}
