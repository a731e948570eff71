//! What both formats share: running an SQL file of `pg_dumpall` with psql,
//! its roles made idempotent on the way.

use std::io::{self, BufRead, Write};

use crate::artifact::ArtifactSource;
use crate::error::{io_error, Result};
use crate::process::{self};

use super::{blocking, conninfo_dbname, quote_ident, Postgres, SVC};

impl Postgres {
    /// Run an SQL file from pg_dumpall with psql, roles made idempotent on
    /// the way. With a `prelude` (statements of itbackup's own, sent first
    /// as they are), prelude and file run as one transaction: all or nothing.
    pub(super) async fn run_sql_file(
        &self,
        file: &ArtifactSource,
        database: &str,
        step: &'static str,
        prelude: Option<String>,
    ) -> Result<()> {
        let current_user = self.settings.user.clone();
        let source = file.clone();
        let mut cmd =
            self.tool("psql")
                .args(["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1"]);
        if prelude.is_some() {
            cmd = cmd.arg("--single-transaction");
        }
        let cmd = cmd.arg("-d").arg(conninfo_dbname(database));
        blocking(move || {
            let input = source
                .open()
                .map_err(|e| io_error(Some(SVC), step, &source, e))?;
            process::run_feeding(&cmd, SVC, step, |stdin| {
                stdin.write_all(prelude.unwrap_or_default().as_bytes())?;
                make_roles_idempotent(input, stdin, &current_user)
            })
        })
        .await
        .map(|_| ())
    }
}

/// Make `pg_dumpall` output runnable against a cluster that already has the
/// roles, streaming line by line (COPY data passes untouched):
/// * `CREATE ROLE x;` only when x is missing;
/// * no role is ever dropped: the bootstrap superuser cannot be, the
///   connecting role must not be (the restore goes on connecting as it), and
///   any role may own objects in databases the backup does not hold;
/// * the connecting role is not altered either (its password!);
/// * `DROP DATABASE x;` (template1, postgres) becomes `DROP DATABASE IF
///   EXISTS x;`: the restore has renamed them aside (see [`super::replace`]).
fn make_roles_idempotent(
    input: impl BufRead,
    out: &mut dyn Write,
    current_user: &str,
) -> io::Result<()> {
    let me = pg_ident(current_user);
    let own_alter = format!("ALTER ROLE {me} WITH ");
    let mut in_copy = false;
    for line in input.split(b'\n') {
        let line = line?;
        if in_copy {
            in_copy = line != b"\\.";
            out.write_all(&line)?;
            out.write_all(b"\n")?;
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        if text.starts_with("COPY ") && text.ends_with("FROM stdin;") {
            in_copy = true;
        }
        if let Some(role) = text
            .strip_prefix("CREATE ROLE ")
            .and_then(|r| r.strip_suffix(';'))
        {
            writeln!(out, "DO $itbackup$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $itbackup$;")?;
        } else if let Some(role) = text.strip_prefix("DROP ROLE ") {
            writeln!(out, "-- itbackup: roles are never dropped: {role}")?;
        } else if text.starts_with(&own_alter) {
            writeln!(out, "-- itbackup: kept the connecting role {me} as it is")?;
        } else if let Some(database) = text
            .strip_prefix("DROP DATABASE ")
            .filter(|rest| !rest.starts_with("IF EXISTS "))
        {
            writeln!(out, "DROP DATABASE IF EXISTS {database}")?;
        } else {
            out.write_all(&line)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// An identifier as pg_dumpall prints it: bare when it is a plain lower-case name.
fn pg_ident(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_become_idempotent_and_the_connecting_role_is_spared() {
        let input = "DROP ROLE IF EXISTS postgres;\nCREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'x';\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER PASSWORD 'SCRAM';\nCOPY t (a) FROM stdin;\nCREATE ROLE data;\n\\.\n";
        let mut out = Vec::new();
        make_roles_idempotent(input.as_bytes(), &mut out, "postgres").unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("BEGIN CREATE ROLE app; EXCEPTION WHEN duplicate_object"));
        assert!(out.contains("ALTER ROLE app WITH LOGIN PASSWORD 'x';"));
        assert!(!out.contains("SCRAM") && !out.contains("DROP ROLE IF EXISTS postgres"));
        assert!(
            out.contains("\nCREATE ROLE data;\n\\.\n"),
            "COPY data is left alone: {out}"
        );
    }

    #[test]
    fn no_role_is_dropped_and_databases_are_dropped_only_if_they_exist() {
        let input = "DROP DATABASE IF EXISTS app;\nDROP ROLE IF EXISTS postgres;\nDROP ROLE IF EXISTS admin;\nDROP ROLE app;\nDROP DATABASE template1;\nDROP DATABASE postgres;\n";
        let mut out = Vec::new();
        make_roles_idempotent(input.as_bytes(), &mut out, "admin").unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.lines().any(|l| l.starts_with("DROP ROLE")), "{out}");
        assert!(out.contains("DROP DATABASE IF EXISTS app;\n"), "{out}");
        assert!(
            out.contains("DROP DATABASE IF EXISTS template1;\n"),
            "{out}"
        );
        assert!(out.contains("DROP DATABASE IF EXISTS postgres;\n"), "{out}");
    }
}
