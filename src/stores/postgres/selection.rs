//! Restoring some databases of a custom-format backup (`restore --databases`)
//! and restoring one under another name beside the live one (`--rename
//! FROM=TO`).
//!
//! A custom-format artifact holds one `pg_dump -Fc` per database, so any of
//! them can be put back alone: the selected databases go through the usual
//! replacement (renamed aside, loaded, then the old copies dropped), the
//! others and the roles are not touched (`--globals` applies the roles). A
//! renamed database is loaded into a new, empty database created from
//! template0 under an internal loading name, and takes the name TO once
//! loaded; the live FROM is never touched, a failed load drops only what
//! this restore created, and a killed one leaves only the loading name,
//! which the next run drops. Everything a selection needs is checked in
//! `prepare_restore`, before any store changes: the names are in the backup,
//! the format is custom, and every TO is a new name.
//!
//! The plain format (one pg_dumpall script) cannot be split this way: a
//! selection of it is refused.

use std::collections::BTreeMap;
use std::path::Path;

use super::custom::database_entries;
use super::replace::{drop_database, is_internal, loading_name, rename_database, INTERNAL_PREFIX};
use super::{quote_ident, Postgres, PostgresFormat, SVC};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::{Method, RestoreSelection};

/// PostgreSQL's longest identifier, in bytes.
const MAX_NAME_BYTES: usize = 63;

impl Postgres {
    /// Everything a selection needs that can fail, checked before anything
    /// changes: a custom-format artifact, names it holds, new names free.
    pub(super) async fn check_selection(
        &self,
        record: &ArtifactRecord,
        selection: &RestoreSelection,
    ) -> Result<()> {
        if selection.is_everything() {
            return Ok(());
        }
        let step = "check the selection";
        if PostgresFormat::of(record)? != PostgresFormat::Custom {
            return Err(Error::usage(
                "--databases and --rename need a custom-format backup (one dump per database); this one is plain (one pg_dumpall script): restore it whole",
            ));
        }
        let held: Vec<String> = database_entries(record)?
            .into_iter()
            .map(|e| e.name)
            .collect();
        if let Some(missing) = selection.named().find(|n| !held.iter().any(|h| h == n)) {
            return Err(Error::usage(format!(
                "the backup holds no database '{missing}' (it holds: {})",
                held.join(", ")
            )));
        }
        let client = self.connect("postgres", step).await?;
        let mut targets: Vec<&str> = Vec::new();
        for (from, to) in &selection.renames {
            if to.len() > MAX_NAME_BYTES || to.starts_with(INTERNAL_PREFIX) || is_internal(to) {
                return Err(Error::usage(format!(
                    "'{to}' cannot be a database name here (at most {MAX_NAME_BYTES} bytes, not starting with {INTERNAL_PREFIX})"
                )));
            }
            let restored_too = selection.only.iter().flatten().any(|n| n == to);
            if to == from || targets.contains(&to.as_str()) || restored_too {
                return Err(Error::usage(format!(
                    "--rename {from}={to}: {to} is also restored by this run; choose a name nothing else uses"
                )));
            }
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[to])
                .await
                .map_err(|e| Self::query_error(step, e))?
                .is_some();
            if exists {
                return Err(Error::usage(format!(
                    "--rename {from}={to}: the database {to} exists; a restore beside the live data never replaces one"
                ))
                .service(SVC)
                .hint(format!("choose another name, or drop {to} first if it is a leftover")));
            }
            targets.push(to);
        }
        Ok(())
    }

    /// Load the dump of a renamed database into the new database `to`: under
    /// its loading name first, renamed to `to` once loaded and analyzed.
    pub(super) async fn load_renamed(&self, to: &str, dump: &Path) -> Result<()> {
        self.load_beside(to, dump).await?;
        let step = format!("name database {to}");
        let loading = loading_name(to);
        let admin = self.connect("postgres", &step).await?;
        if let Err(e) = rename_database(&admin, &loading, to, &step).await {
            let _ = drop_database(&admin, &loading, &step).await;
            return Err(e);
        }
        Ok(())
    }

    /// Load a dump into a new database, created from template0, under the
    /// loading name of `name` (a killed run's leftover of it is dropped
    /// first); a failed load drops it again.
    pub(super) async fn load_beside(&self, name: &str, dump: &Path) -> Result<()> {
        let step = format!("create database {name}");
        let loading = loading_name(name);
        let admin = self.connect("postgres", &step).await?;
        drop_database(&admin, &loading, &step).await?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0",
                quote_ident(&loading)
            ))
            .await
            .map_err(|e| Self::query_error(&step, e))?;
        if let Err(e) = self.load_dump_into(&loading, dump).await {
            // Only what this restore created goes.
            return Err(match drop_database(&admin, &loading, &step).await {
                Ok(()) => e,
                Err(d) => e.hint(format!(
                    "the partial database {loading} could not be dropped ({}): drop it by hand",
                    d.message
                )),
            });
        }
        Ok(())
    }

    /// Drop the renamed databases this restore created, after a later step failed.
    pub(super) async fn drop_renamed(&self, names: &[&str]) {
        let Ok(admin) = self.connect("postgres", "drop restored copies").await else {
            return;
        };
        for name in names {
            if let Err(e) = drop_database(&admin, name, "drop restored copies").await {
                tracing::error!(database = %name, error = %e, "postgres: could not drop the restored copy");
            }
        }
    }
}

/// The record's counts of the selected databases, keyed by the names they
/// are restored under.
pub(super) fn expected_counts(
    record: &ArtifactRecord,
    selection: &RestoreSelection,
) -> BTreeMap<String, u64> {
    record
        .counts
        .iter()
        .filter_map(|(key, n)| {
            let (database, table) = key.split_once('/')?;
            selection
                .includes(database)
                .then(|| (format!("{}/{table}", selection.restored_name(database)), *n))
        })
        .collect()
}
