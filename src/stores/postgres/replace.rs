//! Replacing whole databases without destroying the old ones first.
//!
//! A restore used to load each dump over the live database (`pg_restore
//! --clean`, or pg_dumpall's `DROP DATABASE`): anything that failed half-way —
//! a schema changed since the backup, a dump that does not load — left the
//! database empty or mixed. Instead, every database the backup holds is first
//! renamed aside to its *safety name*, the backup is loaded into fresh
//! databases under the original names (with their comment, settings and
//! privileges: `pg_restore --create`), and only when every database loaded are
//! the safety copies dropped. On any failure the new databases are dropped and
//! the safety copies renamed back: the cluster is as it was before the restore.
//!
//! While it works the restore is connected to its own [`WORK_DB`], never to a
//! database it renames (`postgres` and `template1` included). The cost is
//! that the server holds both copies until the end: a restore needs free
//! space on the server for the databases it restores.
//!
//! Roles are shared by the whole cluster and cannot be renamed aside: the
//! restore applies the backup's roles (created if missing, else altered) and
//! a roll back puts them back as they were from a snapshot taken first
//! (`pg_dumpall --roles-only`, and which roles and memberships existed).
//!
//! A run killed half-way leaves safety copies behind. The next restore
//! recognises them by name: a safety copy holds the data from before the
//! interrupted restore, so it is kept and whatever is under the original name
//! (a partial load) is dropped, then the restore goes on as usual.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{blocking, quote_ident, tool_output_to_file, Postgres};
use crate::error::{Error, Result};

/// The database a restore connects to while it renames, creates and drops
/// the others. Created empty from template0 and dropped at the end.
pub const WORK_DB: &str = "itbackup_restore_work";

/// Prefix of every database itbackup creates for its own work: never backed
/// up, never taken for the user's data.
pub const INTERNAL_PREFIX: &str = "itbackup_";

/// The name `database` is kept under while a restore replaces it: derived
/// from the name (so the next run finds it after a kill) and short enough for
/// PostgreSQL's 63-byte identifiers whatever the original's length.
pub fn safety_name(database: &str) -> String {
    let hash = Sha256::digest(database.as_bytes());
    format!("{INTERNAL_PREFIX}old_{}", hex::encode(&hash[..8]))
}

/// The name a database restored beside the live data (`--rename FROM=TO`)
/// is loaded under before it takes the name TO: a run killed during the
/// load leaves this name, which the next run recognises and drops, never a
/// half-loaded database under the user's name.
pub fn loading_name(database: &str) -> String {
    let hash = Sha256::digest(database.as_bytes());
    format!("{INTERNAL_PREFIX}new_{}", hex::encode(&hash[..8]))
}

/// True for the work database, the safety copies and the databases being
/// loaded beside the live data: itbackup's own, never the user's data to
/// back up.
pub fn is_internal(database: &str) -> bool {
    database == WORK_DB
        || database
            .strip_prefix(INTERNAL_PREFIX)
            .and_then(|rest| {
                rest.strip_prefix("old_")
                    .or_else(|| rest.strip_prefix("new_"))
            })
            .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The safety copies in the cluster: a restore is running, or one was
/// interrupted and holds the data from before it.
pub(super) async fn safety_copies(admin: &Client) -> Result<Vec<String>> {
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'itbackup\\_old\\_%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| Postgres::query_error("list databases", e))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|name| is_internal(name) && name != WORK_DB)
        .collect())
}

/// Databases set aside by a restore in progress.
pub struct Replacement {
    admin: Client,
    /// Original names, in the order they were set aside.
    set_aside: Vec<String>,
    roles: RolesBefore,
}

/// The cluster's roles before the restore changed any.
struct RolesBefore {
    /// `pg_dumpall --roles-only`: attributes, passwords, settings, memberships.
    dump: PathBuf,
    names: BTreeSet<String>,
    /// (role, member) pairs.
    memberships: BTreeSet<(String, String)>,
}

const ROLE_NAMES: &str = "SELECT rolname FROM pg_roles";
const MEMBERSHIPS: &str = "SELECT g.rolname, m.rolname FROM pg_auth_members a \
     JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member";

/// How many times a rename or drop is tried while sessions keep reconnecting.
const ATTEMPTS: u32 = 20;

impl Postgres {
    /// Create the work database and set aside every one of `databases` that
    /// exists. On failure, what was already set aside is put back.
    pub(super) async fn begin_replacement(
        &self,
        databases: &[String],
        scratch: &Path,
    ) -> Result<Replacement> {
        let step = "set aside the databases to replace";
        // "postgres" falls back to template1, then to a killed run's work
        // database (when both were renamed aside), which is then reused.
        let bootstrap = self.connect("postgres", step).await?;
        let on_work_db: bool = bootstrap
            .query_one("SELECT current_database() = $1", &[&WORK_DB])
            .await
            .map_err(|e| Self::query_error(step, e))?
            .get(0);
        let admin = if on_work_db {
            bootstrap
        } else {
            drop_database(&bootstrap, WORK_DB, step).await?;
            bootstrap
                .batch_execute(&format!(
                    "CREATE DATABASE {} TEMPLATE template0",
                    quote_ident(WORK_DB)
                ))
                .await
                .map_err(|e| Self::query_error(step, e))?;
            drop(bootstrap);
            self.connect(WORK_DB, step).await?
        };
        // The cluster's own databases, which a plain restore also sets aside:
        // a killed one may have left them under their safety names, and every
        // restore needs them (the roles are applied through template1).
        for database in ["postgres", "template1"] {
            if !databases.iter().any(|d| d == database) {
                put_back(&admin, database).await?;
            }
        }
        let roles = self.snapshot_roles(&admin, scratch).await?;
        let mut replacement = Replacement {
            admin,
            set_aside: Vec::new(),
            roles,
        };
        for database in databases {
            if let Err(e) = self.set_aside(&replacement.admin, database).await {
                return Err(self.roll_back(replacement, e).await);
            }
            replacement.set_aside.push(database.clone());
        }
        Ok(replacement)
    }

    async fn set_aside(&self, admin: &Client, database: &str) -> Result<()> {
        let step = format!("set aside database {database}");
        let safety = safety_name(database);
        if state(admin, &safety, &step).await? == State::HalfDropped {
            // Killed while dropping it: every database had loaded, so what
            // is under the original name is the restored data.
            tracing::warn!(
                database,
                safety,
                "postgres: an interrupted restore was dropping {safety} when it stopped; dropping the rest of it"
            );
            drop_database(admin, &safety, &step).await?;
        }
        if exists(admin, &safety, &step).await? {
            tracing::warn!(
                database,
                safety,
                "postgres: an interrupted restore left the data from before it in {safety}; keeping that copy and replacing what is under {database}"
            );
            drop_database(admin, database, &step).await
        } else if exists(admin, database, &step).await? {
            rename_database(admin, database, &safety, &step).await
        } else {
            Ok(())
        }
    }

    /// `--switch`: for each of `names`, end the sessions on the live
    /// database and rename it aside (it is then in `set_aside`, for the roll
    /// back), and rename its loaded copy in. How long the switch took: the
    /// applications' downtime.
    pub(super) async fn switch_in(
        &self,
        replacement: &mut Replacement,
        names: &[String],
    ) -> Result<Duration> {
        let began = std::time::Instant::now();
        for name in names {
            self.set_aside(&replacement.admin, name).await?;
            replacement.set_aside.push(name.clone());
            let step = format!("switch database {name}");
            rename_database(&replacement.admin, &loading_name(name), name, &step).await?;
        }
        Ok(began.elapsed())
    }

    /// `--keep-old`: the databases a switch set aside are renamed to
    /// `<name>_before_<YYYYmmddHHMMSS>` instead of being dropped. One that
    /// cannot be renamed stays under its safety name, which the next
    /// restore takes for an interrupted one's: said in the log.
    pub(super) async fn keep_set_aside(&self, replacement: &Replacement) {
        let stamp = jiff::Zoned::now().strftime("%Y%m%d%H%M%S").to_string();
        for name in &replacement.set_aside {
            let suffix = format!("_before_{stamp}");
            let mut head = name.as_str();
            while head.len() + suffix.len() > 63 {
                let mut cut = head.len() - 1;
                while !head.is_char_boundary(cut) {
                    cut -= 1;
                }
                head = &head[..cut];
            }
            let kept = format!("{head}{suffix}");
            let step = format!("keep the old database {name}");
            let safety = safety_name(name);
            match rename_database(&replacement.admin, &safety, &kept, &step).await {
                Ok(()) => {
                    tracing::info!(database = %name, kept = %kept, "postgres: the database from before the switch is kept")
                }
                Err(e) => {
                    tracing::error!(database = %name, safety = %safety, "postgres: the database from before the switch could not be renamed to {kept} ({e}); it is under {safety}: rename it now, the next restore would drop it")
                }
            }
        }
    }

    /// After a failure before or during a switch: the loaded copies not
    /// switched in are dropped.
    pub(super) async fn drop_loaded_beside(&self, replacement: &Replacement, names: &[String]) {
        for name in names {
            let loading = loading_name(name);
            if let Err(e) =
                drop_database(&replacement.admin, &loading, "drop restored copies").await
            {
                tracing::error!(database = %loading, error = %e, "postgres: could not drop the restored copy");
            }
        }
    }

    /// Every database loaded: drop the safety copies and the work database.
    pub(super) async fn commit_replacement(&self, replacement: Replacement) -> Result<()> {
        let step = "drop the replaced databases";
        for database in &replacement.set_aside {
            drop_database(&replacement.admin, &safety_name(database), step).await?;
        }
        drop(replacement.admin);
        let bootstrap = self.connect("postgres", step).await?;
        drop_database(&bootstrap, WORK_DB, step).await
    }

    async fn snapshot_roles(&self, admin: &Client, scratch: &Path) -> Result<RolesBefore> {
        let step = "snapshot the roles (pg_dumpall --roles-only)";
        let dump = scratch.join("roles-before-restore.sql");
        let cmd = self
            .tool("pg_dumpall")
            .args(["--roles-only", "--no-password"])
            // postgres and template1 may be renamed aside by now.
            .arg(format!("--database={}", super::conninfo_dbname(WORK_DB)));
        let file = dump.clone();
        blocking(move || tool_output_to_file(&cmd, &file, step)).await?;
        Ok(RolesBefore {
            dump,
            names: role_names(admin, step).await?,
            memberships: memberships(admin, step).await?,
        })
    }

    /// Put the roles back as [`RolesBefore`] saw them, in one transaction:
    /// roles the backup added dropped, memberships it added revoked, every
    /// other role's settings reset, then the snapshot replayed (attributes,
    /// passwords, settings, memberships).
    async fn put_roles_back(&self, admin: &Client, roles: &RolesBefore) -> Result<()> {
        let step = "put the roles back";
        let mut undo = String::new();
        for (role, member) in memberships(admin, step).await? {
            if !roles.memberships.contains(&(role.clone(), member.clone())) {
                undo += &format!(
                    "REVOKE {} FROM {};\n",
                    quote_ident(&role),
                    quote_ident(&member)
                );
            }
        }
        for name in role_names(admin, step).await? {
            if !roles.names.contains(&name) {
                undo += &format!("DROP ROLE {};\n", quote_ident(&name));
            } else if !name.starts_with("pg_") {
                undo += &format!("ALTER ROLE {} RESET ALL;\n", quote_ident(&name));
            }
        }
        self.run_sql_file(
            &crate::artifact::ArtifactSource::File(roles.dump.clone()),
            WORK_DB,
            step,
            Some(undo),
        )
        .await
    }

    /// A load failed with `cause`: drop what was loaded, rename every safety
    /// copy back, put the roles back, and say so in the error that is returned.
    pub(super) async fn roll_back(&self, replacement: Replacement, cause: Error) -> Error {
        let step = "put the databases back";
        let mut unrestored = Vec::new();
        for database in &replacement.set_aside {
            let safety = safety_name(database);
            let put_back = async {
                drop_database(&replacement.admin, database, step).await?;
                if state(&replacement.admin, &safety, step).await? == State::Valid {
                    rename_database(&replacement.admin, &safety, database, step).await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            if let Err(e) = put_back {
                tracing::error!(
                    database,
                    safety,
                    "postgres: could not put the database back: {e}"
                );
                unrestored.push(format!("{database} (its data is in {safety})"));
            }
        }
        let roles = self
            .put_roles_back(&replacement.admin, &replacement.roles)
            .await;
        drop(replacement.admin);
        if let Ok(bootstrap) = self.connect("postgres", step).await {
            let _ = drop_database(&bootstrap, WORK_DB, step).await;
        }
        let mut cause = cause;
        match roles {
            Ok(()) => cause
                .message
                .push_str("; the roles were put back as they were before the restore"),
            Err(e) => {
                tracing::error!("postgres: could not put the roles back: {e}");
                cause.message.push_str(&format!(
                    "; the roles could NOT be put back ({}): they are as in the backup; their previous definitions were in the restore's scratch directory",
                    e.message
                ));
            }
        }
        let names = replacement.set_aside.join(", ");
        if unrestored.is_empty() {
            cause.message.push_str(&format!(
                "; every database this restore had set aside ({names}) was put back as it was before the restore"
            ));
            cause
        } else {
            cause.message.push_str(&format!(
                "; these databases could NOT be put back: {} — rename the copy back (ALTER DATABASE … RENAME TO …) or run the restore again, which keeps and reuses those copies",
                unrestored.join(", ")
            ));
            cause
        }
    }
}

/// Put back `database` from the safety copy an interrupted restore left, if
/// any: that copy holds the data from before it, and whatever is under the
/// name is a partial load. A copy left half dropped belonged to a restore
/// that had loaded everything: the rest of it goes.
async fn put_back(admin: &Client, database: &str) -> Result<()> {
    let step = format!("put back database {database} from an interrupted restore");
    let safety = safety_name(database);
    match state(admin, &safety, &step).await? {
        State::HalfDropped => drop_database(admin, &safety, &step).await,
        State::Missing => Ok(()),
        State::Valid => {
            tracing::warn!(
                database,
                safety,
                "postgres: an interrupted restore left {database} aside as {safety}; putting it back"
            );
            drop_database(admin, database, &step).await?;
            rename_database(admin, &safety, database, &step).await
        }
    }
}

async fn role_names(admin: &Client, step: &str) -> Result<BTreeSet<String>> {
    let rows = admin
        .query(ROLE_NAMES, &[])
        .await
        .map_err(|e| Postgres::query_error(step, e))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

async fn memberships(admin: &Client, step: &str) -> Result<BTreeSet<(String, String)>> {
    let rows = admin
        .query(MEMBERSHIPS, &[])
        .await
        .map_err(|e| Postgres::query_error(step, e))?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// What `pg_database` says of a database.
#[derive(Debug, PartialEq, Eq)]
enum State {
    Missing,
    Valid,
    /// A `DROP DATABASE` that was cut off marks the database invalid
    /// (`datconnlimit = -2`, PostgreSQL 15.4 and later) before it removes
    /// its files: nothing may connect to it, alter or rename it; it can
    /// only be dropped.
    HalfDropped,
}

async fn state(admin: &Client, database: &str, step: &str) -> Result<State> {
    let row = admin
        .query_opt(
            "SELECT datconnlimit = -2 FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .map_err(|e| Postgres::query_error(step, e))?;
    Ok(match row {
        None => State::Missing,
        Some(row) if row.get::<_, bool>(0) => State::HalfDropped,
        Some(_) => State::Valid,
    })
}

async fn exists(admin: &Client, database: &str, step: &str) -> Result<bool> {
    Ok(state(admin, database, step).await? != State::Missing)
}

/// Run `sql` on `database`'s behalf after ending its other sessions, again
/// while new sessions keep arriving ("being accessed by other users").
async fn without_sessions(
    admin: &Client,
    database: &str,
    statements: &[String],
    step: &str,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await
            .map_err(|e| Postgres::query_error(step, e))?;
        // One statement per call: a multi-statement string is a transaction
        // block, where CREATE/DROP DATABASE cannot run.
        let mut outcome = Ok(());
        for sql in statements {
            outcome = admin.batch_execute(sql).await;
            if outcome.is_err() {
                break;
            }
        }
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                return Err(Postgres::query_error(step, e).hint(format!(
                    "sessions keep connecting to database {database}: stop the applications that use it, then run the restore again"
                )))
            }
            Err(e) => return Err(Postgres::query_error(step, e)),
        }
    }
}

pub(super) async fn rename_database(
    admin: &Client,
    from: &str,
    to: &str,
    step: &str,
) -> Result<()> {
    let sql = format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(from),
        quote_ident(to)
    );
    without_sessions(admin, from, &[sql], step).await
}

/// Drop `database` if it exists: a template (template1's safety copy) too,
/// and one a killed run left half dropped.
pub(super) async fn drop_database(admin: &Client, database: &str, step: &str) -> Result<()> {
    let name = quote_ident(database);
    let drop = format!("DROP DATABASE IF EXISTS {name}");
    match state(admin, database, step).await? {
        State::Missing => Ok(()),
        State::HalfDropped => without_sessions(admin, database, &[drop], step).await,
        State::Valid => {
            let untemplate = format!("ALTER DATABASE {name} IS_TEMPLATE false");
            without_sessions(admin, database, &[untemplate, drop], step).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_names_are_stable_distinct_and_short() {
        let long = "x".repeat(63);
        assert_eq!(safety_name("app"), safety_name("app"));
        assert_ne!(safety_name("app"), safety_name("App"));
        assert!(safety_name(&long).len() <= 63);
        assert!(safety_name("app").starts_with(INTERNAL_PREFIX));
        assert!(is_internal(&safety_name("app")) && is_internal(WORK_DB));
        assert!(!is_internal("itbackup_old_app") && !is_internal("app"));
        assert!(is_internal(&loading_name("app")));
        assert_ne!(loading_name("app"), safety_name("app"));
    }
}
