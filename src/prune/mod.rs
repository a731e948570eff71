//! Retention: which backups a restic-style policy keeps, which debris of
//! interrupted runs has outlived its grace period, and removing the rest safely.
//!
//! The policy itself ([`apply`]) is a pure function over backup times, so it
//! is the same for every place backups live: a local root or a repository
//! ([`Repository`], which lists and removes; `locations.rs` turns what it
//! holds into [`Item`]s).

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Serialize;

use crate::artifact::PARTIAL_SUFFIX;
use crate::catalog::{self, BackupEntry};
use crate::drill::VALIDATION_FILE;
use crate::error::{io_error, Error, Result};
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::repository::Repository;
use crate::service::Service;
use crate::stores::postgres::wal::retain::{self as wal_retention, WalPrune, WalStart};

mod locations;

/// Prefix of the restore's scratch directories (`tempdir_in(root)` in restore.rs).
const RESTORE_SCRATCH_PREFIX: &str = ".itbackup-restore-";

/// How many backups to keep, per rule; a backup kept by any rule stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl Policy {
    /// No rule given: nothing would be kept but the newest backup.
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
    }
}

/// A complete backup as the policy sees it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub time: Timestamp,
}

/// What the policy says about one complete backup.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub name: String,
    pub time: Timestamp,
    pub keep: bool,
    /// Every rule that keeps it (`last`, `daily 2025-02-01`, …).
    pub reasons: Vec<String>,
}

/// Apply `policy` restic's way: backups newest first; each rule keeps the
/// newest backup of each of its N most recent periods (`last`: every backup is
/// its own period). Periods are calendar days, ISO weeks and months in `tz`.
/// The newest backup is always kept, whatever the policy. Returns the
/// decisions newest first.
pub fn apply(policy: &Policy, snapshots: &[Snapshot], tz: &TimeZone) -> Vec<Decision> {
    let mut ordered: Vec<&Snapshot> = snapshots.iter().collect();
    ordered.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.name.cmp(&a.name)));

    struct Rule {
        label: &'static str,
        remaining: u32,
        last_period: Option<String>,
    }
    let mut rules = [
        Rule {
            label: "last",
            remaining: policy.keep_last,
            last_period: None,
        },
        Rule {
            label: "daily",
            remaining: policy.keep_daily,
            last_period: None,
        },
        Rule {
            label: "weekly",
            remaining: policy.keep_weekly,
            last_period: None,
        },
        Rule {
            label: "monthly",
            remaining: policy.keep_monthly,
            last_period: None,
        },
    ];
    let mut decisions = Vec::with_capacity(ordered.len());
    for (index, snapshot) in ordered.iter().enumerate() {
        let date = snapshot.time.to_zoned(tz.clone()).date();
        let week = date.iso_week_date();
        let mut reasons = Vec::new();
        for rule in rules.iter_mut().filter(|r| r.remaining > 0) {
            let period = match rule.label {
                "last" => index.to_string(),
                "daily" => date.to_string(),
                "weekly" => format!("{}-W{:02}", week.year(), week.week()),
                _ => format!("{}-{:02}", date.year(), date.month()),
            };
            if rule.last_period.as_deref() != Some(period.as_str()) {
                rule.remaining -= 1;
                reasons.push(if rule.label == "last" {
                    "last".to_string()
                } else {
                    format!("{} {period}", rule.label)
                });
                rule.last_period = Some(period);
            }
        }
        if index == 0 {
            reasons.push("newest complete backup".into());
        }
        decisions.push(Decision {
            name: snapshot.name.clone(),
            time: snapshot.time,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    decisions
}

/// What lies in a backup location.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum ItemKind {
    /// A backup with a valid manifest; its time is the manifest's `started_at`.
    Complete { time: Timestamp },
    /// What an interrupted or failed run left: no manifest, only files itbackup writes.
    Incomplete,
    /// A manifest that does not validate (damaged, or from a newer itbackup):
    /// never removed automatically, an operator decides.
    Damaged { problem: String },
    /// Not written by itbackup, or a symbolic link: never touched.
    Foreign { problem: String },
}

/// One entry of a backup location.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub name: String,
    #[serde(flatten)]
    pub kind: ItemKind,
    /// Newest modification of the entry or anything directly in it.
    pub modified: Timestamp,
    pub bytes: u64,
    /// Its manifest, when it is complete: where its PostgreSQL base
    /// backup's WAL begins (the archive keeps everything from the oldest
    /// kept one on), what it keeps outside its directory.
    #[serde(skip)]
    pub manifest: Option<Manifest>,
}

/// What prune does (or would do) with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Remove,
    /// Not for prune to decide: damaged manifests and foreign entries.
    Leave,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedItem {
    #[serde(flatten)]
    pub item: Item,
    pub action: Action,
    pub reasons: Vec<String>,
}

/// The plan: every entry with its action, newest complete backups first.
pub fn plan(
    policy: &Policy,
    items: Vec<Item>,
    grace: Duration,
    now: Timestamp,
    tz: &TimeZone,
) -> Vec<PlannedItem> {
    let snapshots: Vec<Snapshot> = items
        .iter()
        .filter_map(|item| match item.kind {
            ItemKind::Complete { time } => Some(Snapshot {
                name: item.name.clone(),
                time,
            }),
            _ => None,
        })
        .collect();
    let decisions = apply(policy, &snapshots, tz);
    let mut complete = std::collections::HashMap::new();
    let mut others = Vec::new();
    for item in items {
        match &item.kind {
            ItemKind::Complete { .. } => {
                complete.insert(item.name.clone(), item);
            }
            ItemKind::Incomplete => {
                let age = now.duration_since(item.modified);
                // A modification time in the future (clock skew) counts as fresh.
                let old = !age.is_negative() && age.unsigned_abs() >= grace;
                let reason = if old {
                    format!(
                        "incomplete, untouched for {}",
                        crate::human::age(age.unsigned_abs())
                    )
                } else {
                    format!(
                        "incomplete, but changed {} ago: within the {} grace period",
                        crate::human::age(age.unsigned_abs()),
                        crate::human::age(grace)
                    )
                };
                others.push(PlannedItem {
                    item,
                    action: if old { Action::Remove } else { Action::Keep },
                    reasons: vec![reason],
                });
            }
            ItemKind::Damaged { problem } | ItemKind::Foreign { problem } => {
                let reason = format!("{problem}; left for an operator");
                others.push(PlannedItem {
                    item,
                    action: Action::Leave,
                    reasons: vec![reason],
                });
            }
        }
    }
    let mut planned: Vec<PlannedItem> = decisions
        .into_iter()
        .filter_map(|d| {
            let item = complete.remove(&d.name)?;
            Some(PlannedItem {
                item,
                action: if d.keep { Action::Keep } else { Action::Remove },
                reasons: if d.keep {
                    d.reasons
                } else {
                    vec!["no rule keeps it".into()]
                },
            })
        })
        .collect();
    planned.extend(others);
    planned
}

#[derive(Debug, Serialize)]
pub struct PruneOutcome {
    pub location: String,
    pub dry_run: bool,
    pub policy: Policy,
    pub grace_seconds: u64,
    pub items: Vec<PlannedItem>,
    pub removed: usize,
    pub freed_bytes: u64,
    /// The WAL archive of the location, when it has one.
    pub wal: Option<WalPrune>,
}

pub struct PruneRequest {
    pub policy: Policy,
    pub grace: Duration,
    pub dry_run: bool,
    /// The stores, for what a backup keeps in them (an OpenSearch
    /// repository-method snapshot), which goes with the backup.
    pub stores: crate::stores::StoreSettings,
}

/// Plan, and unless it is a dry run, remove what the plan says, holding the
/// location's lock throughout so that no backup or restore runs meanwhile.
pub async fn run(repository: &Repository, request: &PruneRequest) -> Result<PruneOutcome> {
    if request.policy.is_empty() {
        return Err(Error::usage(
            "no retention rule given: pass at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly",
        ));
    }
    // A dry run changes nothing, so it may look while a backup runs.
    let _lock = if request.dry_run {
        None
    } else {
        repository.lock("prune")?
    };
    let items = locations::items(repository).await?;
    let mut planned = plan(
        &request.policy,
        items,
        request.grace,
        Timestamp::now(),
        &TimeZone::system(),
    );
    let mut removed = 0;
    let mut freed_bytes = 0;
    if request.dry_run {
        for entry in planned.iter_mut().filter(|p| p.action == Action::Remove) {
            for (service, record) in entry.item.manifest.iter().flat_map(|m| m.artifacts.iter()) {
                if let Some(what) =
                    crate::stores::open(*service, &request.stores)?.kept_outside(record)
                {
                    entry
                        .reasons
                        .push(format!("its {what} would be removed with it"));
                }
            }
        }
    } else {
        for entry in planned.iter_mut().filter(|p| p.action == Action::Remove) {
            let bytes = entry.item.bytes;
            for outside in remove_outside(&request.stores, repository, &entry.item).await? {
                entry.reasons.push(format!("{outside} removed with it"));
            }
            remove(repository, &entry.item).await?;
            tracing::info!(backup = %entry.item.name, reason = %entry.reasons.join(", "), "removed");
            removed += 1;
            freed_bytes += bytes;
        }
    }
    // After the backups: a kept base backup's WAL is never removed, and a
    // prune that fails on the way removed backups before their WAL.
    let kept: Vec<WalStart> = planned
        .iter()
        .filter(|p| p.action == Action::Keep)
        .filter_map(|p| p.item.manifest.as_ref().and_then(WalStart::of))
        .collect();
    let archive = crate::stores::postgres::wal::chain::Archive::of(repository)?;
    let wal = wal_retention::prune(&archive, &kept, request.dry_run).await?;
    Ok(PruneOutcome {
        location: repository.describe(),
        dry_run: request.dry_run,
        policy: request.policy,
        grace_seconds: request.grace.as_secs(),
        items: planned,
        removed,
        freed_bytes,
        wal,
    })
}

/// What the backup `item` keeps in the stores (an OpenSearch
/// repository-method snapshot), or what a killed backup left in them that
/// its unfinished directory claims, goes first: a failure keeps the
/// directory that names it, for the next prune. Says what went.
async fn remove_outside(
    stores: &crate::stores::StoreSettings,
    repository: &Repository,
    item: &Item,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (service, record) in item.manifest.iter().flat_map(|m| m.artifacts.iter()) {
        let store = crate::stores::open(*service, stores)?;
        if let Some(what) = store.remove_outside(record).await? {
            tracing::info!(backup = %item.name, %what, "removed with the backup");
            removed.push(what);
        }
    }
    if let (ItemKind::Incomplete, Repository::Local(root)) = (&item.kind, repository) {
        let dir = root.join(&item.name);
        // A store the configuration cannot open claimed nothing here.
        for store in Service::ALL
            .iter()
            .filter_map(|service| crate::stores::open(*service, stores).ok())
        {
            for what in store.remove_claimed(&dir).await? {
                tracing::info!(backup = %item.name, %what, "removed, claimed by the killed backup");
                removed.push(what);
            }
        }
    }
    Ok(removed)
}

/// Remove one entry of the plan; what is damaged or not ours never goes,
/// whatever a plan says.
async fn remove(repository: &Repository, item: &Item) -> Result<()> {
    if matches!(
        item.kind,
        ItemKind::Foreign { .. } | ItemKind::Damaged { .. }
    ) {
        return Err(Error::failure(
            "remove backup",
            format!(
                "refusing to remove {} in {}",
                item.name,
                repository.describe()
            ),
        ));
    }
    repository.remove(&item.name).await
}

/// The request for the command-line policy.
pub fn request(
    args: &crate::cli::RetentionArgs,
    dry_run: bool,
    stores: &crate::stores::StoreSettings,
) -> PruneRequest {
    PruneRequest {
        stores: stores.clone(),
        policy: Policy {
            keep_last: args.keep_last,
            keep_daily: args.keep_daily,
            keep_weekly: args.keep_weekly,
            keep_monthly: args.keep_monthly,
        },
        grace: args.grace,
        dry_run,
    }
}
