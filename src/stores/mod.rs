//! The data stores, each behind the same trait.
//!
//! The orchestration (backup, restore, verify, drill) only knows [`Store`];
//! the stores are listed once, in [`registry::REGISTRY`]; each store's
//! methods implement [`method::Method`].

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;

use crate::artifact::PendingArtifact;
use crate::error::{Context, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::service::Service;

pub mod method;
pub mod neo4j;
pub mod opensearch;
pub mod postgres;
pub mod registry;
pub mod sandbox;

pub use method::Method;

/// What a server says about itself when probed.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub endpoint: String,
}

/// Where and under which timestamp a backup is being written.
pub struct BackupContext<'a> {
    pub dir: &'a Path,
    pub timestamp: &'a str,
    /// Where the artifacts go: files in `dir`, or uploads straight into a
    /// repository (`backup --upload URL --no-local`).
    pub artifacts: &'a crate::artifact::Artifacts,
    /// The coordinated moment (`backup --consistent`): a store tells it when
    /// its position is taken, and takes it up front when it is coordinated.
    pub moment: &'a crate::moment::Moment,
}

/// A finished backup of one store: its files (still `*.partial`) and its record.
pub struct StoreBackup {
    pub service: Service,
    /// The artifact named in the manifest; committed with the rest of the set.
    pub artifact: PendingArtifact,
    pub record: ArtifactRecord,
}

impl StoreBackup {
    /// The backup of a store whose artifact is written: the artifact's name,
    /// checksum and size, and the end time, go into its record.
    pub fn finished(
        service: Service,
        artifact: PendingArtifact,
        mut record: ArtifactRecord,
    ) -> Self {
        record.file = artifact.file_name();
        record.sha256 = artifact.digest.sha256.clone();
        record.bytes = artifact.digest.bytes;
        record.finished_at = jiff::Timestamp::now().to_string();
        StoreBackup {
            service,
            artifact,
            record,
        }
    }
}

/// Where a restore reads from.
pub struct RestoreContext<'a> {
    /// The artifact (a local file, or a repository's object streamed), its
    /// checksum already checked against the manifest.
    pub artifact: &'a crate::artifact::ArtifactSource,
    /// A private scratch directory on the same side as the backup.
    pub scratch: &'a Path,
    /// What of the artifact to put back, and under which names.
    pub selection: &'a RestoreSelection,
    /// How far past its backup a store replays its archived log.
    pub recovery: &'a RestoreRecovery,
}

/// Where a store whose backup is a physical copy finds the log it replays
/// after it (`restore --until`; PostgreSQL's WAL archive, `itbackup wal push`).
#[derive(Debug, Clone, Default)]
pub struct RestoreRecovery {
    /// The archive's root: the root the backup was read from.
    pub archive_root: std::path::PathBuf,
    /// The repository the backup came from (its archive is there instead).
    pub archive_url: Option<String>,
    /// The key that opens a sealed archive.
    pub identity: Option<std::path::PathBuf>,
}

/// What of a store's artifact a restore puts back (`restore --databases`,
/// `--rename`): everything, by default. A part is what the store's artifact
/// is made of and can restore on its own (a PostgreSQL database).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreSelection {
    /// Only these parts; `None`: every part (and the cluster-wide state).
    pub only: Option<Vec<String>>,
    /// Restore the part FROM under the name TO, beside the live FROM, which
    /// stays untouched. A renamed part is restored even when `only` omits it.
    pub renames: Vec<(String, String)>,
    /// With a selection: the cluster-wide state too (PostgreSQL's roles).
    pub globals: bool,
    /// `--until`: how far past a physical backup its archived log is
    /// replayed; `None`: the backup's own consistent point.
    pub until: Option<postgres::physical::RecoveryTarget>,
    /// `--switch`: restore beside the live parts, check them, then switch
    /// names in one short step (PostgreSQL, custom format).
    pub switch: bool,
    /// `--keep-old`: with `switch`, keep what was live under another name.
    pub keep_old: bool,
}

impl RestoreSelection {
    /// Everything the artifact holds, under its own names.
    pub const EVERYTHING: RestoreSelection = RestoreSelection {
        only: None,
        renames: Vec::new(),
        globals: false,
        until: None,
        switch: false,
        keep_old: false,
    };

    pub fn is_everything(&self) -> bool {
        self.only.is_none() && self.renames.is_empty()
    }

    /// Whether the part `name` of the artifact is restored.
    pub fn includes(&self, name: &str) -> bool {
        self.is_everything()
            || self.only.iter().flatten().any(|n| n == name)
            || self.renames.iter().any(|(from, _)| from == name)
    }

    /// Whether the cluster-wide state (roles) is restored.
    pub fn includes_globals(&self) -> bool {
        self.is_everything() || self.globals
    }

    /// The name the part `name` is restored under.
    pub fn restored_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.renames
            .iter()
            .find(|(from, _)| from == name)
            .map_or(name, |(_, to)| to.as_str())
    }

    /// Every part named by the selection (`only` and the renames' FROM).
    pub fn named(&self) -> impl Iterator<Item = &str> {
        self.only
            .iter()
            .flatten()
            .map(String::as_str)
            .chain(self.renames.iter().map(|(from, _)| from.as_str()))
    }
}

/// What the drill finds of its own data in a store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DrillInventory {
    /// Records: rows, documents, or nodes plus relationships.
    pub count: u64,
    /// Order-independent digest of every record's content.
    pub digest: String,
}

/// Synthetic data of the recovery drill (`itbackup drill`), kept apart from the
/// user's data: its own database, index prefix or label.
#[async_trait]
pub trait DrillData: Send + Sync {
    /// Where the drill's data lives in this store, for messages.
    fn drill_location(&self) -> String;

    /// True when the store holds nothing but drill data (or nothing at all), so
    /// that rewinding it to a backup cannot lose anything of the user's.
    async fn holds_only_drill_data(&self) -> Result<bool>;

    /// Create `scale` synthetic records, replacing earlier drill data.
    async fn drill_populate(&self, scale: u64) -> Result<()>;

    /// Count and digest of the drill data now in the store.
    async fn drill_inventory(&self) -> Result<DrillInventory>;

    /// Remove the drill data.
    async fn drill_wipe(&self) -> Result<()>;

    /// Remove one drill record (fault injection: proves the drill can fail).
    async fn drill_remove_one(&self) -> Result<()>;

    /// Create the drill's (empty) event store beside its data, for
    /// `drill --cross-store`: a table, an index or a label of its own, left
    /// out of the inventory and removed by [`DrillData::drill_wipe`].
    async fn drill_events_create(&self) -> Result<()>;

    /// A writer of events into it, holding its own connection.
    async fn drill_events_writer(&self) -> Result<Box<dyn DrillEvents>>;

    /// The event ids it holds now.
    async fn drill_event_ids(&self) -> Result<std::collections::BTreeSet<u64>>;
}

/// Writes one event, by id, into a store: the drill's cross-store writer
/// puts every id into every store, as the platform keeps one world in three.
#[async_trait]
pub trait DrillEvents: Send {
    async fn write(&mut self, id: u64) -> Result<()>;
}

/// Sum of per-record SHA-256 prefixes: equal for equal multisets of records,
/// whatever order a store returns them in.
#[derive(Debug, Default)]
pub struct UnorderedDigest {
    sum: u128,
    count: u64,
}

impl UnorderedDigest {
    pub fn add(&mut self, record: &[u8]) {
        self.add_fields(&[record]);
    }

    /// Add the record made of `fields` joined by NUL bytes, hashed where
    /// they lie instead of copied into one buffer first.
    pub fn add_fields(&mut self, fields: &[&[u8]]) {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        for (n, field) in fields.iter().enumerate() {
            if n > 0 {
                hasher.update([0]);
            }
            hasher.update(field);
        }
        let hash = hasher.finalize();
        let prefix = u128::from_be_bytes(hash[..16].try_into().expect("16 bytes"));
        self.sum = self.sum.wrapping_add(prefix);
        self.count += 1;
    }

    /// Add the records of `other` (digested apart, in parallel, say): the
    /// sum of two parts is the digest of the whole.
    pub fn merge(&mut self, other: &UnorderedDigest) {
        self.sum = self.sum.wrapping_add(other.sum);
        self.count += other.count;
    }

    /// How many records were added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest: 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }

    pub fn finish(&self) -> DrillInventory {
        DrillInventory {
            count: self.count,
            digest: self.hex(),
        }
    }
}

#[async_trait]
pub trait Store: DrillData + sandbox::SandboxServer + Send + Sync {
    fn service(&self) -> Service;

    /// The server's address as configured (credentials included, never
    /// shown): what the store lock ([`crate::lock::server_key`]) is keyed by.
    fn address(&self) -> String;

    /// Connect and ask the server for its version; fails with a clear error when
    /// the server is unreachable or refuses our credentials.
    async fn probe(&self) -> Result<ServerInfo>;

    /// What must hold of the server before a restore of `record` begins:
    /// that it answers, unless the store restores with its server stopped
    /// (and may find it down: a physical PostgreSQL restore after a crash).
    async fn check_before_restore(&self, _record: &ArtifactRecord) -> Result<()> {
        self.probe().await.map(|_| ())
    }

    /// Undo what a killed run of this host left in the server's way (a
    /// server it stopped and never started again). Called with the server's
    /// lock held, so no live run is in the middle of it.
    async fn recover_from_killed_run(&self) -> Result<()> {
        Ok(())
    }

    /// The steps and commands a backup would run (passwords masked), for `--dry-run`.
    fn backup_plan(&self, ctx: &BackupContext<'_>) -> Vec<String>;

    /// Write this store's artifact into `ctx.dir` (as `*.partial`).
    async fn backup(&self, ctx: &BackupContext<'_>) -> Result<StoreBackup>;

    /// Decode the artifact end to end (its checksum has been checked already);
    /// touches no server, but where the backup's data lives in it (an
    /// OpenSearch repository-method snapshot).
    async fn check_artifact(
        &self,
        artifact: &crate::artifact::ArtifactSource,
        record: &ArtifactRecord,
    ) -> Result<()>;

    /// Remove what the backup of `record` keeps outside its directory (an
    /// OpenSearch repository-method snapshot), when prune removes the
    /// backup: first, so that a failure keeps the backup that names it.
    /// Says what it removed; gone already is done.
    async fn remove_outside(&self, _record: &ArtifactRecord) -> Result<Option<String>> {
        Ok(None)
    }

    /// Remove what a killed backup of this store claimed outside its
    /// unfinished directory `dir` (an OpenSearch snapshot it started), when
    /// prune removes that directory: first, so that a failure keeps the
    /// claim for the next prune. Says what it removed.
    async fn remove_claimed(&self, _dir: &Path) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// What the backup of `record` keeps outside its directory (see
    /// [`Store::remove_outside`]), described for people: `list`, `status`
    /// and prune's plan show it. Read from the record, offline.
    fn kept_outside(&self, _record: &ArtifactRecord) -> Option<String> {
        None
    }

    /// Whether [`Store::prepare_restore`] decodes the artifact end to end
    /// itself, checking it as [`Store::check_artifact`] does, before anything
    /// is changed (a physical PostgreSQL restore writes it out beside the live
    /// data): the restore's own decode is then skipped, not done twice.
    fn decodes_before_restoring(&self, _record: &ArtifactRecord) -> bool {
        false
    }

    /// The steps and commands a restore would run, for `--dry-run`.
    fn restore_plan(&self, record: &ArtifactRecord, selection: &RestoreSelection) -> Vec<String>;

    /// The local work a restore needs done before it may change anything:
    /// extracting into `ctx.scratch`, checking the free space of a disk it
    /// will write to. The restore prepares every requested store before it
    /// restores any, so a full disk stops it while no store has been touched.
    async fn prepare_restore(
        &self,
        _ctx: &RestoreContext<'_>,
        _record: &ArtifactRecord,
    ) -> Result<()> {
        Ok(())
    }

    /// Replace the store's data with the artifact's (after [`Store::prepare_restore`]).
    async fn restore(&self, ctx: &RestoreContext<'_>, record: &ArtifactRecord) -> Result<()>;

    /// Current object counts in the store for the keys the record has counts for.
    async fn counts(&self, record: &ArtifactRecord) -> Result<BTreeMap<String, u64>>;

    /// The content digests the live server's data has now, for every key
    /// `record.digests` holds (under the same keys), computed the same way
    /// as at backup time; a key whose table or index is missing is left
    /// out. A full read of that data: used after a restore (the sandbox
    /// drill) to compare with the record, never by every restore.
    async fn content_digests(&self, _record: &ArtifactRecord) -> Result<BTreeMap<String, String>> {
        Ok(BTreeMap::new())
    }

    /// Whether a restore can put back parts of this store's artifacts
    /// ([`RestoreSelection`]); a store that cannot refuses any selection before
    /// anything changes.
    fn restores_parts(&self) -> bool {
        false
    }

    /// Whether the artifact of `record` holds a part named `name` (a
    /// PostgreSQL database, an OpenSearch index): where `--rename FROM=TO`
    /// goes.
    fn holds_part(&self, _record: &ArtifactRecord, _name: &str) -> bool {
        false
    }

    /// The counts a restore of `selection` must find: the record's, for the
    /// parts restored, under the names they are restored as.
    fn expected_counts(
        &self,
        record: &ArtifactRecord,
        _selection: &RestoreSelection,
    ) -> BTreeMap<String, u64> {
        record.counts.clone()
    }
}

/// Take the store lock of every store's server (in service order), or fail
/// naming the run that holds one; `command` is what this run records. Then
/// each store recovers from whatever a killed run left behind.
pub async fn lock_servers(
    stores: &[Box<dyn Store>],
    command: &str,
) -> Result<Vec<crate::lock::StoreLock>> {
    let mut keyed: Vec<(Service, String)> = stores
        .iter()
        .map(|s| {
            (
                s.service(),
                crate::lock::server_key(s.service(), &s.address()),
            )
        })
        .collect();
    keyed.sort();
    let locks = keyed
        .iter()
        .map(|(service, key)| crate::lock::StoreLock::acquire(*service, key, command))
        .collect::<Result<Vec<_>>>()?;
    for store in stores {
        store.recover_from_killed_run().await?;
    }
    Ok(locks)
}

/// Run blocking work (child processes, file I/O) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    service: Service,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .step(Some(service), "background task")?
}

/// The leading dotted numbers of a version string: "15.18 (Debian 15.18-0)"
/// → [15, 18], "2.19.6" → [2, 19, 6]; empty when it starts with none.
pub(crate) fn version_numbers(version: &str) -> Vec<u32> {
    version
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap_or("")
        .split('.')
        .map_while(|part| part.parse().ok())
        .collect()
}

/// The first `significant` numbers of a version (2: major.minor), for comparing
/// releases.
pub(crate) fn release(version: &str, significant: usize) -> Vec<u32> {
    version_numbers(version)
        .into_iter()
        .take(significant)
        .collect()
}

/// Refuse, before anything is changed, to restore a backup taken on a newer
/// server than this one, compared on the first `significant` numbers of the
/// versions (1: the major; 2: major.minor). Older servers cannot load what
/// newer ones wrote, and the restore would fail after the old data was gone.
/// Versions that do not parse are let through.
pub(crate) fn refuse_newer_backup(
    service: Service,
    significant: usize,
    backup_version: &str,
    server_version: &str,
    hint: &str,
) -> Result<()> {
    let (backup, server) = (
        release(backup_version, significant),
        release(server_version, significant),
    );
    if backup.len() < significant || server.len() < significant || backup <= server {
        return Ok(());
    }
    Err(Error::failure(
        "check versions",
        format!(
            "the backup was taken on {service} {backup_version}, newer than this server's {server_version}: an older server cannot load it"
        ),
    )
    .service(service)
    .hint(format!("{hint}; nothing was changed")))
}

/// What opening a store needs: each store's resolved settings (from its own
/// `settings.rs`) and where the stores' tools run. `config::Settings` holds
/// it; stores never see the rest of the configuration.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Where the stores' own tools run: this host, or their compose containers.
    pub target: crate::target::Target,
    pub postgres: postgres::settings::PostgresSettings,
    pub opensearch: opensearch::settings::OpenSearchSettings,
    pub neo4j: neo4j::settings::Neo4jSettings,
}

/// The store for `service`, configured from `settings`.
pub fn open(service: Service, settings: &StoreSettings) -> Result<Box<dyn Store>> {
    Ok((registry::registered(service).open)(settings))
}

/// What each complete backup of `backups` keeps outside its directory
/// ([`Store::kept_outside`]), for `list`.
pub fn fill_kept_outside(backups: &mut [crate::catalog::BackupEntry], settings: &StoreSettings) {
    for entry in backups.iter_mut() {
        let Some(manifest) = &entry.manifest else {
            continue;
        };
        entry.kept_outside = manifest
            .artifacts
            .iter()
            .filter_map(|(service, record)| open(*service, settings).ok()?.kept_outside(record))
            .collect();
    }
}

/// Compare counts after a restore with the manifest's; every difference is named.
pub fn compare_counts(
    service: Service,
    expected: &BTreeMap<String, u64>,
    actual: &BTreeMap<String, u64>,
) -> Result<()> {
    let mut differences = Vec::new();
    for (key, want) in expected {
        match actual.get(key) {
            Some(got) if got == want => {}
            Some(got) => differences.push(format!("{key}: expected {want}, found {got}")),
            None => differences.push(format!("{key}: expected {want}, found nothing")),
        }
    }
    if differences.is_empty() {
        return Ok(());
    }
    let shown: Vec<_> = differences.iter().take(20).cloned().collect();
    let more = differences.len().saturating_sub(shown.len());
    let mut message = format!(
        "restored counts differ from the manifest in {} place(s):\n  {}",
        differences.len(),
        shown.join("\n  ")
    );
    if more > 0 {
        message.push_str(&format!("\n  … and {more} more"));
    }
    Err(Error::mismatch("compare counts", message)
        .service(service)
        .hint("something wrote to the store during the restore, or the restore was incomplete; stop the writers and run the restore again"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_in_parts_merge_into_the_digest_of_the_whole_in_any_order() {
        let records: Vec<String> = (0..10).map(|i| format!("record {i}")).collect();
        let mut whole = UnorderedDigest::default();
        records.iter().for_each(|r| whole.add(r.as_bytes()));
        let (mut odd, mut even) = (UnorderedDigest::default(), UnorderedDigest::default());
        for (i, record) in records.iter().enumerate().rev() {
            let part = if i % 2 == 1 { &mut odd } else { &mut even };
            part.add(record.as_bytes());
        }
        even.merge(&odd);
        assert_eq!(even.finish(), whole.finish());
        assert_eq!(even.count(), 10);
        assert_eq!(even.hex().len(), 32);
        assert_ne!(odd.hex(), whole.hex());
    }

    #[test]
    fn a_record_of_fields_is_its_fields_joined_by_nul() {
        let mut fields = UnorderedDigest::default();
        fields.add_fields(&[b"id-1", b"", b"{\"a\":1}"]);
        let mut joined = UnorderedDigest::default();
        joined.add(b"id-1\0\0{\"a\":1}");
        assert_eq!(fields.finish(), joined.finish());
        let mut moved = UnorderedDigest::default();
        moved.add_fields(&[b"id-1", b"{\"a\":1}", b""]);
        assert_ne!(moved.hex(), fields.hex(), "a field's place counts");
    }

    #[test]
    fn version_numbers_read_the_leading_dotted_numbers() {
        assert_eq!(version_numbers("15.18 (Debian 15.18-0+deb12u1)"), [15, 18]);
        assert_eq!(version_numbers("2.19.6"), [2, 19, 6]);
        assert_eq!(version_numbers("5.26.12"), [5, 26, 12]);
        assert!(version_numbers("unknown").is_empty());
    }

    #[test]
    fn only_a_backup_from_a_newer_server_is_refused() {
        let check = |significant, backup, server| {
            refuse_newer_backup(Service::Postgres, significant, backup, server, "upgrade").is_ok()
        };
        assert!(
            check(1, "15.18 (Debian)", "15.2"),
            "a newer minor of the same major"
        );
        assert!(check(1, "14.9", "15.2"), "an older major");
        assert!(!check(1, "16.1", "15.18"), "a newer major");
        assert!(check(2, "2.11.0", "2.19.6"));
        assert!(
            !check(2, "2.19.6", "2.11.0"),
            "a newer minor where minors count"
        );
        assert!(check(2, "2.19.6", "2.19.1"), "patch levels do not count");
        assert!(
            check(1, "unknown", "15.2"),
            "what does not parse is let through"
        );
        let err = refuse_newer_backup(Service::Postgres, 1, "16.1", "15.18", "upgrade first")
            .unwrap_err();
        assert!(
            err.message.contains("newer than this server's 15.18"),
            "{}",
            err.message
        );
        assert!(err.hint.unwrap().contains("nothing was changed"));
    }
}
