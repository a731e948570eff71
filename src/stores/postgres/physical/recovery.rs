//! Recovery proper: the settings that make PostgreSQL replay the archive
//! to the target and promote, the wait for it, and the check of where it
//! ended.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::datadir::server_running;
use super::pitr::{PreparedPitr, RecoveryTarget};
use crate::error::{io_error, Error, Result};
use crate::stores::postgres::{Postgres, SVC};

impl Postgres {
    /// `recovery.signal` and the recovery settings, at the end of
    /// `postgresql.auto.conf` (where a later setting wins; PostgreSQL
    /// ignores them once promoted).
    /// Into the staged data directory, before the server is stopped.
    pub(super) fn write_recovery_settings(&self, prepared: &PreparedPitr) -> Result<()> {
        let data = &prepared.staged;
        let step = "write recovery settings";
        let exe = std::env::current_exe()
            .map_err(|e| io_error(Some(SVC), step, "itbackup's own path", e))?;
        let fetch = format!(
            "{} wal fetch --root {} %f %p",
            shell_quote(&exe.to_string_lossy()),
            shell_quote(&prepared.fetch_root.to_string_lossy())
        );
        let mut settings = vec![
            format!("restore_command = {}", conf_quote(&fetch)),
            "recovery_target_timeline = 'latest'".to_string(),
            "recovery_target_action = 'promote'".to_string(),
        ];
        // One target at most: PostgreSQL refuses a second, even an empty one.
        match prepared.target {
            None => settings.push("recovery_target = 'immediate'".into()),
            Some(RecoveryTarget::Latest) => {}
            Some(RecoveryTarget::Time(t)) => settings.push(format!(
                "recovery_target_time = '{}'",
                t.strftime("%Y-%m-%d %H:%M:%S%.6f+00")
            )),
            Some(RecoveryTarget::Lsn(lsn)) => {
                settings.push(format!("recovery_target_lsn = '{lsn}'"))
            }
        }
        let auto = data.join("postgresql.auto.conf");
        // The base backup's own file may hold an earlier restore's settings
        // (a target time of then): they are dropped, so that only this
        // restore's apply.
        let kept: String = crate::artifact::read_small_text(&auto, 16 * 1024 * 1024)
            .unwrap_or_default()
            .lines()
            .filter(|line| !is_recovery_setting(line))
            .map(|line| format!("{line}\n"))
            .collect();
        let text = format!(
            "{kept}# itbackup restore ({}): recovery settings, ignored once the server has promoted\n{}\n",
            jiff::Timestamp::now(),
            settings.join("\n")
        );
        let written = auto.with_extension("conf.itbackup");
        let write = || -> std::io::Result<()> {
            let mut file = crate::artifact::create_private_file(&written)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            let (uid, gid) = prepared.owner;
            std::os::unix::fs::chown(&written, Some(uid), Some(gid))?;
            std::fs::rename(&written, &auto)?;
            let signal = data.join("recovery.signal");
            std::fs::File::create(&signal)?.sync_all()?;
            std::os::unix::fs::chown(&signal, Some(uid), Some(gid))
        };
        write().map_err(|e| io_error(Some(SVC), step, auto.display(), e))
    }

    /// Wait until the server answers and has left recovery. Recovery takes as
    /// long as the WAL to replay: the bound is on the server dying, or on no
    /// answer at all for the connect timeout's worth of tries.
    pub(super) async fn wait_for_promotion(&self, data: &Path) -> Result<()> {
        let step = "wait for recovery";
        let mut unanswered_since = Instant::now();
        loop {
            if !server_running(data) {
                return Err(Error::failure(
                    step,
                    "the server stopped during recovery (a WAL segment it needed could not be read, or the target was not reached)",
                )
                .service(SVC)
                .hint("read the server's log for the FATAL line"));
            }
            match self.connect("postgres", step).await {
                Ok(client) => {
                    unanswered_since = Instant::now();
                    let row = client
                        .query_one("SELECT pg_is_in_recovery()", &[])
                        .await
                        .map_err(|e| Self::query_error(step, e))?;
                    if !row.get::<_, bool>(0) {
                        return Ok(());
                    }
                }
                Err(e) if unanswered_since.elapsed() > Duration::from_secs(600) => {
                    return Err(e.hint("the server runs but has not answered for 10 minutes since it was started for recovery"))
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The server answers on a timeline after the backup's; for `latest`, it
    /// replayed every segment the chain check found.
    pub(super) async fn check_recovered(&self, prepared: &PreparedPitr) -> Result<()> {
        let step = "check recovery";
        let client = self.connect("postgres", step).await?;
        let row = client
            .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
            .await
            .map_err(|e| Self::query_error(step, e))?;
        let current: String = row.get(0);
        let timeline = u32::from_str_radix(current.get(..8).unwrap_or(""), 16).unwrap_or(0);
        if timeline <= prepared.chain.timeline.max(prepared.details.timeline) {
            return Err(Error::mismatch(
                step,
                format!("the server is on timeline {timeline} after recovery; a promotion starts a new one after {}", prepared.chain.timeline),
            )
            .service(SVC));
        }
        if let (Some(RecoveryTarget::Latest), Some(last)) =
            (prepared.target, prepared.chain.segments.last())
        {
            let history = format!("{timeline:08X}.history");
            let text = crate::artifact::read_small_text(
                &prepared.data.join("pg_wal").join(&history),
                1024 * 1024,
            )
            .map_err(|e| io_error(Some(SVC), step, history.clone(), e))?;
            let switch = text
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(super::lsn::Lsn::parse)
                .next_back()
                .unwrap_or_default();
            let bytes = prepared.details.wal_segment_bytes;
            let reached =
                super::lsn::segment_name(prepared.chain.timeline, switch.segment(bytes), bytes);
            if reached[8..] < last[8..] {
                return Err(Error::mismatch(
                    step,
                    format!("recovery ended at {switch} (segment {reached}), before the last archived segment {last}: commits archived after it are missing"),
                )
                .service(SVC)
                .hint("a segment could not be read during recovery; verify the WAL archive"));
            }
        }
        tracing::info!(timeline, "postgres: recovered and promoted");
        Ok(())
    }
}

/// A line of postgresql.auto.conf that sets a recovery setting (or is the
/// comment an earlier itbackup restore wrote above them).
pub(super) fn is_recovery_setting(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("# itbackup restore")
        || ["restore_command", "recovery_target"]
            .iter()
            .any(|key| line.starts_with(key))
}

/// A word for `sh`: single-quoted.
pub(super) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A string value for postgresql.conf: single-quoted, quotes doubled.
pub(super) fn conf_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_command_survives_quotes_in_paths() {
        let fetch = format!("{} wal fetch", shell_quote("/opt/it's/itbackup"));
        assert_eq!(fetch, "'/opt/it'\\''s/itbackup' wal fetch");
        assert_eq!(
            conf_quote(&fetch),
            "'''/opt/it''\\''''s/itbackup'' wal fetch'"
        );
    }
}
