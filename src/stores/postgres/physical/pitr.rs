//! Restoring a base backup, and with `restore --until`, replaying the
//! archived WAL up to a moment, a position or the end (point-in-time
//! recovery). PostgreSQL does the replay; itbackup makes sure it can
//! succeed before anything is stopped, and that a failure leaves the
//! cluster as it was.
//!
//! Before the server is stopped ([`Postgres::prepare_physical_restore`]):
//! the target is after the base backup; the data directory (`IT_PG_DATA`)
//! is a cluster of this same system (its identifier, read by
//! `pg_controldata`) and major version, or empty; its parent can hold a
//! second copy beside it; the stop and start commands are set; every WAL
//! segment from the backup to the target is in the archive and intact
//! (see `wal::chain`), and, for a sealed or remote archive, staged as a
//! plain local one the server can read without keys or credentials.
//!
//! Still before the stop, the base backup is written into a new data
//! directory beside the live one (`<data>.itbackup-new`), every file checked
//! against the backup's own manifest, with the recovery settings.
//!
//! Then ([`Postgres::restore_physical`]): a marker beside the data
//! directory records the run; the server is stopped; the old data
//! directory is renamed aside (same file system: instant, and kept) and the
//! new one takes its name; the server is started and waited for until it
//! has promoted; the result is checked
//! (the server answers on a new timeline and, for `latest`, has replayed
//! every archived segment). Any failure on the way puts the old data
//! directory back (the attempt is kept beside it for inspection) and
//! starts the server again if it was running. A run killed in between is
//! undone the same way by the next run that takes the server's lock.

use std::path::{Path, PathBuf};

use super::datadir::{marker_path, reachable_by, server_running, sibling, write_marker, Marker};
use super::{read_artifact, PhysicalDetails};
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::postgres::wal::chain::{self, Archive, Chain, ChainEnd, Depth};
use crate::stores::postgres::wal::LocalArchive;
use crate::stores::postgres::{blocking, Postgres, SVC};
use crate::stores::{RestoreContext, RestoreSelection, Store};

/// Where a point-in-time restore stops replaying the archived WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Every archived segment.
    Latest,
    /// Commits up to and including this moment.
    Time(jiff::Timestamp),
    /// WAL up to this position.
    Lsn(super::lsn::Lsn),
}

impl RecoveryTarget {
    /// `latest`, an RFC 3339 time, or a WAL position (`0/81000028`).
    pub fn parse(text: &str) -> std::result::Result<RecoveryTarget, String> {
        if text == "latest" {
            return Ok(RecoveryTarget::Latest);
        }
        if let Some(lsn) = super::lsn::Lsn::parse(text) {
            return Ok(RecoveryTarget::Lsn(lsn));
        }
        text.parse::<jiff::Timestamp>()
            .map(RecoveryTarget::Time)
            .map_err(|_| {
                format!("'{text}' is not latest, an RFC 3339 time (2026-12-01T10:41:59Z) or a WAL position (0/81000028)")
            })
    }

    fn describe(self) -> String {
        match self {
            RecoveryTarget::Latest => "the last archived WAL".into(),
            RecoveryTarget::Time(t) => format!("{t}"),
            RecoveryTarget::Lsn(lsn) => format!("WAL position {lsn}"),
        }
    }
}

/// `restore --until`: a target of PostgreSQL's own, or `consistent`, the
/// moment the backup set's other stores hold (resolved by the restore from
/// the set's manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Target(RecoveryTarget),
    Consistent,
}

impl Until {
    /// `consistent`, or what [`RecoveryTarget::parse`] reads.
    pub fn parse(text: &str) -> std::result::Result<Until, String> {
        if text == "consistent" {
            return Ok(Until::Consistent);
        }
        RecoveryTarget::parse(text)
            .map(Until::Target)
            .map_err(|e| format!("{e}, or consistent"))
    }
}

/// What the checks before the stop found, for the restore that follows.
#[derive(Debug)]
pub struct PreparedPitr {
    pub(super) details: PhysicalDetails,
    pub(super) target: Option<RecoveryTarget>,
    pub(super) chain: Chain,
    /// The archive `restore_command` reads: the root's, or the staged copy.
    pub(super) fetch_root: PathBuf,
    pub(super) data: PathBuf,
    pub(super) owner: (u32, u32),
    /// The new data directory, written beside the live one.
    pub(super) staged: PathBuf,
}

impl Postgres {
    pub(in crate::stores::postgres) fn plan_physical_restore(
        &self,
        selection: &RestoreSelection,
    ) -> Vec<String> {
        let data = self
            .settings
            .data_dir
            .as_ref()
            .map_or("IT_PG_DATA (not set)".into(), |d| d.display().to_string());
        let until = selection
            .until
            .map_or("the base backup's own end (no --until)".into(), |t| {
                t.describe()
            });
        vec![
            format!("check that every archived WAL segment from the base backup to {until} is present and intact, and that {data} is this cluster's data directory (pg_controldata)"),
            format!("write the base backup into {data}.itbackup-new beside the live directory, every file checked against its backup_manifest, with recovery.signal and the recovery settings (restore_command = itbackup wal fetch, recovery target {until}, then promote)"),
            format!("stop the server ({})", self.settings.stop_command.as_deref().unwrap_or("IT_PG_STOP_CMD, not set")),
            format!("rename {data} aside to {data}.itbackup-old-<time> (kept), and {data}.itbackup-new to {data}"),
            format!("start the server ({}) and wait until it has replayed the WAL and promoted; on any failure put the old data directory back", self.settings.start_command.as_deref().unwrap_or("IT_PG_START_CMD, not set")),
        ]
    }

    /// Everything that can be checked before the server is stopped.
    pub(in crate::stores::postgres) async fn prepare_physical_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let details = PhysicalDetails::of(record)?;
        let target = ctx.selection.until;
        if let Some(RecoveryTarget::Time(t)) = target {
            let consistent: jiff::Timestamp = details.consistent_at.parse().map_err(|_| {
                Error::damaged(
                    "read manifest",
                    "details.physical.consistent_at is not a time",
                )
                .service(SVC)
            })?;
            if t < consistent {
                return Err(Error::usage(format!(
                    "--until {t} is before this base backup was consistent ({consistent}); a restore can only go forward from a base backup"
                ))
                .hint("restore from an older physical backup (without --path, itbackup picks the newest one before the target); nothing was changed"));
            }
        }
        if let Some(RecoveryTarget::Lsn(lsn)) = target {
            if super::lsn::Lsn::parse(&details.stop_lsn).is_some_and(|stop| lsn < stop) {
                return Err(Error::usage(format!(
                    "--until {lsn} is before this base backup's end ({})",
                    details.stop_lsn
                ))
                .hint("restore from an older physical backup; nothing was changed"));
            }
        }
        self.lifecycle("stop")?;
        self.lifecycle("start")?;
        let data = self.data_dir()?;
        let owner = self.check_data_dir(&data, &details, record).await?;
        let end = match target {
            None => ChainEnd::Backup,
            Some(RecoveryTarget::Latest) => ChainEnd::Latest,
            Some(RecoveryTarget::Time(t)) => ChainEnd::Time(t),
            Some(RecoveryTarget::Lsn(lsn)) => ChainEnd::Lsn(lsn),
        };
        let start = details.chain_start();
        let identities = ctx
            .recovery
            .identity
            .as_deref()
            .map(crate::seal::Identities::load)
            .transpose()?;
        let archive = Archive::at(
            &ctx.recovery.archive_root,
            ctx.recovery.archive_url.as_deref(),
        )?;
        // A sealed or remote archive is staged, plain, where the server can
        // read it; a plain local one is read in place.
        let sealed = identities.is_some();
        let staged = matches!(archive, Archive::Remote(_)) || sealed;
        let stage_root = ctx.scratch.join("pitr-wal");
        let stage = if staged {
            let stage = LocalArchive::new(&stage_root);
            crate::artifact::create_private_dir(&stage_root)
                .and_then(|_| crate::artifact::create_private_dir(&stage.dir))
                .map_err(|e| io_error(Some(SVC), "stage WAL", stage_root.display(), e))?;
            Some(stage)
        } else {
            None
        };
        let chain = chain::check(
            &archive,
            &start,
            end,
            identities.as_ref(),
            ctx.scratch,
            match &stage {
                Some(stage) => Depth::Stage(stage),
                None => Depth::Hash,
            },
        )
        .await?;
        let fetch_root = if staged {
            // The server's user reads the staged archive through the scratch directory.
            reachable_by(ctx.scratch, &stage_root, owner)?;
            stage_root
        } else {
            ctx.recovery.archive_root.clone()
        };
        tracing::info!(
            segments = chain.segments.len(),
            timeline = chain.timeline,
            last = chain
                .segments
                .last()
                .map(String::as_str)
                .unwrap_or("(in the base backup)"),
            "postgres: the WAL chain to the target is complete and intact"
        );
        let staged = sibling(&data, ".itbackup-new");
        self.stage_data_dir(ctx.artifact, &details, &staged, owner)
            .await?;
        let prepared = PreparedPitr {
            details,
            target,
            chain,
            fetch_root,
            data,
            owner,
            staged,
        };
        if let Err(e) = self.write_recovery_settings(&prepared) {
            let _ = std::fs::remove_dir_all(&prepared.staged);
            return Err(e);
        }
        *self.prepared.lock().expect("not poisoned") = Some(prepared);
        Ok(())
    }

    /// Stop, replace, recover, check; on failure put everything back.
    pub(in crate::stores::postgres) async fn restore_physical(&self) -> Result<()> {
        let prepared = self
            .prepared
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| {
                Error::failure("restore", "the physical restore was not prepared").service(SVC)
            })?;
        let data = prepared.data.clone();
        let was_running = server_running(&data);
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S").to_string();
        let holds = std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some());
        let old = holds.then(|| sibling(&data, &format!(".itbackup-old-{stamp}")));
        write_marker(
            &data,
            &Marker {
                old: old.clone(),
                was_running,
                staged: Some(prepared.staged.clone()),
            },
        )?;
        let stopped = crate::lock::StoppedServer::of(SVC, &self.address());
        if was_running {
            stopped.record(SVC, "restore (physical)")?;
            if let Err(e) = self.stop_and_wait(&data).await {
                // Nothing was changed: the server may still be running.
                let _ = std::fs::remove_dir_all(&prepared.staged);
                let _ = std::fs::remove_file(marker_path(&data));
                if server_running(&data) {
                    stopped.clear();
                }
                return Err(e.hint(
                    "the server was not stopped and nothing was changed; check IT_PG_STOP_CMD",
                ));
            }
        }
        let replaced = self.swap_and_recover(&prepared, old.as_deref()).await;
        match replaced {
            Ok(()) => {
                let _ = std::fs::remove_file(marker_path(&data));
                stopped.clear();
                if let Some(old) = &old {
                    tracing::warn!(
                        "postgres: the data directory from before the restore is kept in {}; remove it once the restored cluster is confirmed",
                        old.display()
                    );
                }
                Ok(())
            }
            Err(e) => {
                let put_back = self.roll_back_data_dir(&data).await;
                match put_back {
                    Ok(note) => {
                        stopped.clear();
                        Err(Error {
                            message: format!("{}; {note}", e.message),
                            ..e
                        })
                    }
                    Err(rollback) => Err(Error {
                        message: format!(
                            "{}; putting the old data directory back failed too: {}",
                            e.message, rollback.message
                        ),
                        ..e
                    }),
                }
            }
        }
    }

    /// The stopped server's data directory is renamed aside and the staged
    /// one takes its name; then the server is started and recovers.
    async fn swap_and_recover(&self, prepared: &PreparedPitr, old: Option<&Path>) -> Result<()> {
        let data = &prepared.data;
        let step = "replace data directory";
        if let Some(old) = old {
            std::fs::rename(data, old).map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
        } else if data.exists() {
            std::fs::remove_dir(data).map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
        }
        std::fs::rename(&prepared.staged, data)
            .map_err(|e| io_error(Some(SVC), step, prepared.staged.display(), e))?;
        crate::artifact::sync_dir(data.parent().unwrap_or(Path::new(".")))
            .map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
        self.run_lifecycle("start").await?;
        self.wait_for_promotion(data).await?;
        self.check_recovered(prepared).await
    }

    /// Write the base backup into a new directory beside the live one, every
    /// file checked against its backup_manifest, with the recovery settings:
    /// all before the server is stopped, so that its downtime is a rename,
    /// a start and the replay.
    async fn stage_data_dir(
        &self,
        artifact: &crate::artifact::ArtifactSource,
        details: &PhysicalDetails,
        staged: &Path,
        owner: (u32, u32),
    ) -> Result<()> {
        let step = "write the new data directory";
        if staged.exists() {
            // A killed run's; this run holds the server's lock.
            std::fs::remove_dir_all(staged)
                .map_err(|e| io_error(Some(SVC), step, staged.display(), e))?;
        }
        std::fs::create_dir(staged)
            .and_then(|_| std::os::unix::fs::chown(staged, Some(owner.0), Some(owner.1)))
            .and_then(|_| {
                std::fs::set_permissions(
                    staged,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
            })
            .map_err(|e| io_error(Some(SVC), step, staged.display(), e))?;
        let artifact = artifact.clone();
        let into = staged.to_path_buf();
        let algorithm = details.file_checksums;
        let written = blocking(move || {
            let summary = read_artifact(
                &artifact,
                Some(&super::basetar::Extract {
                    into: &into,
                    owner: Some(owner),
                }),
                algorithm,
            )?;
            super::basetar::sync_tree(&into)
                .map_err(|e| io_error(Some(SVC), "write data directory", into.display(), e))?;
            Ok(summary)
        })
        .await
        .and_then(|summary| super::check_summary(&summary, details));
        if written.is_err() {
            let _ = std::fs::remove_dir_all(staged);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_latest_a_time_or_a_position() {
        assert_eq!(RecoveryTarget::parse("latest"), Ok(RecoveryTarget::Latest));
        assert!(matches!(
            RecoveryTarget::parse("2026-12-01T10:41:59Z"),
            Ok(RecoveryTarget::Time(_))
        ));
        assert!(matches!(
            RecoveryTarget::parse("0/81000028"),
            Ok(RecoveryTarget::Lsn(_))
        ));
        assert!(RecoveryTarget::parse("yesterday").is_err());
    }
}
