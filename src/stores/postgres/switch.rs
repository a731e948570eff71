//! `restore --switch`: restore beside the live databases, then switch names.
//!
//! The in-place restore (`replace.rs`) renames every live database aside
//! before it loads the backup: the applications are down from the first
//! rename to the last load. With `--switch` each selected database is
//! loaded beside the live one, under its loading name, while the live one
//! keeps serving; the loaded copies' row counts are checked against the
//! manifest; only then, in one short step per database, the sessions on the
//! live database are ended, it is renamed aside (to its safety name) and the
//! copy renamed in. The downtime is that step (logged, in milliseconds).
//! Anything that fails before the switch — a dump that does not load, a
//! count that differs — drops the copies and leaves the live databases as
//! they were; a failure during the switch renames every switched database
//! back. The old databases are dropped once every switch succeeded, or
//! kept as `<name>_before_<YYYYmmddHHMMSS>` with `--keep-old`. The roles
//! (with `--globals`, or a restore of everything) are applied before the
//! loads and put back on any failure, as in the in-place restore.
//!
//! A copy is created from template0 with the server's defaults, like a
//! `--rename` copy: the database-level comment and settings (`ALTER
//! DATABASE … SET`) are not carried over, and its owner is the restoring
//! role. A run killed during the switch leaves the old database under its
//! safety name, which the next restore recognises (see `replace.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::replace::loading_name;
use super::{Postgres, SVC};
use crate::error::Result;
use crate::manifest::ArtifactRecord;
use crate::stores::RestoreContext;

impl Postgres {
    pub(super) async fn restore_switching(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
        globals: &Path,
        dumps: &[(String, PathBuf)],
    ) -> Result<()> {
        let names: Vec<String> = dumps.iter().map(|(name, _)| name.clone()).collect();
        let mut replacement = self.begin_replacement(&[], ctx.scratch).await?;
        let switched = async {
            if ctx.selection.includes_globals() {
                self.restore_globals(globals).await?;
            }
            for (name, dump) in dumps {
                self.load_beside(name, dump).await?;
                tracing::info!(database = %name, "postgres: restored beside the live database");
            }
            self.check_beside(record, &names).await?;
            self.switch_in(&mut replacement, &names).await
        }
        .await;
        match switched {
            Ok(downtime) => {
                tracing::info!(
                    databases = %names.join(", "),
                    downtime_ms = downtime.as_millis() as u64,
                    "postgres: switched to the restored databases"
                );
                if ctx.selection.keep_old {
                    self.keep_set_aside(&replacement).await;
                }
                self.commit_replacement(replacement).await
            }
            Err(e) => {
                self.drop_loaded_beside(&replacement, &names).await;
                Err(self.roll_back(replacement, e).await)
            }
        }
    }

    /// The loaded copies' row counts against the manifest's, before any
    /// live database is touched.
    async fn check_beside(&self, record: &ArtifactRecord, names: &[String]) -> Result<()> {
        let mut expected = BTreeMap::new();
        let mut found = BTreeMap::new();
        for name in names {
            let prefix = format!("{name}/");
            expected.extend(
                record
                    .counts
                    .iter()
                    .filter(|(key, _)| key.starts_with(&prefix))
                    .map(|(key, n)| (key.clone(), *n)),
            );
            let loading = loading_name(name);
            let mut counts = BTreeMap::new();
            self.count_rows_in_parallel(&loading, &mut counts).await?;
            found.extend(counts.into_iter().map(|(key, n)| {
                let table = key.split_once('/').map_or(key.as_str(), |(_, t)| t);
                (format!("{name}/{table}"), n)
            }));
        }
        crate::stores::compare_counts(SVC, &expected, &found).map_err(|e| {
            e.hint("nothing was switched: the live databases are as they were, the restored copies are dropped")
        })
    }
}
