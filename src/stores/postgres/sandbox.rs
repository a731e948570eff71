//! PostgreSQL as a sandbox drill's server: marked by a database of its
//! own; cleaned by dropping every other database but `postgres`, whose user
//! schemas and large objects are dropped instead. Roles a restore created
//! stay: they are no data, and other databases of the sandbox may use them.

use async_trait::async_trait;

use super::drill::DRILL_DATABASE;
use super::{quote_ident, Postgres};
use crate::error::Result;
use crate::stores::sandbox::{SandboxServer, SandboxState, SANDBOX_MARK};

/// The databases every cluster has, which a clean sandbox keeps.
const BUILT_IN: [&str; 3] = ["postgres", "template0", "template1"];

/// The user schemas of the connected database (all but the system's).
const USER_SCHEMAS: &str = "SELECT nspname FROM pg_namespace \
     WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%' ORDER BY 1";

impl Postgres {
    async fn all_databases(
        &self,
        client: &tokio_postgres::Client,
        step: &str,
    ) -> Result<Vec<String>> {
        let rows = client
            .query("SELECT datname FROM pg_database ORDER BY 1", &[])
            .await
            .map_err(|e| Self::query_error(step, e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[async_trait]
impl SandboxServer for Postgres {
    async fn sandbox_state(&self) -> Result<SandboxState> {
        let step = "inspect sandbox";
        let admin = self.connect("postgres", step).await?;
        let databases = self.all_databases(&admin, step).await?;
        if databases.iter().any(|d| d == SANDBOX_MARK) {
            return Ok(SandboxState::Marked);
        }
        let mut held: Vec<String> = databases
            .into_iter()
            .filter(|d| !BUILT_IN.contains(&d.as_str()) && d != DRILL_DATABASE)
            .map(|d| format!("database {d}"))
            .collect();
        let relations: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'",
                &[],
            )
            .await
            .map_err(|e| Self::query_error(step, e))?
            .get(0);
        if relations > 0 {
            held.push(format!("{relations} relation(s) in database postgres"));
        }
        Ok(match held.is_empty() {
            true => SandboxState::Empty,
            false => SandboxState::Holds(held.join(", ")),
        })
    }

    async fn mark_sandbox(&self) -> Result<()> {
        let step = "mark sandbox";
        let admin = self.connect("postgres", step).await?;
        if self
            .all_databases(&admin, step)
            .await?
            .iter()
            .any(|d| d == SANDBOX_MARK)
        {
            return Ok(());
        }
        // Two statements: CREATE DATABASE cannot share a transaction.
        let mark = quote_ident(SANDBOX_MARK);
        for sql in [
            format!("CREATE DATABASE {mark}"),
            format!(
                "COMMENT ON DATABASE {mark} IS 'itbackup sandbox: drills restore real backups \
                 into this server and remove them afterwards'"
            ),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .map_err(|e| Self::query_error(step, e))?;
        }
        Ok(())
    }

    async fn clean_sandbox(&self) -> Result<()> {
        let step = "clean sandbox";
        let admin = self.connect("postgres", step).await?;
        for database in self.all_databases(&admin, step).await? {
            if BUILT_IN.contains(&database.as_str()) || database == SANDBOX_MARK {
                continue;
            }
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&database)
                ))
                .await
                .map_err(|e| Self::query_error(step, e))?;
        }
        let schemas = admin
            .query(USER_SCHEMAS, &[])
            .await
            .map_err(|e| Self::query_error(step, e))?;
        let mut sql = String::from("SELECT lo_unlink(oid) FROM pg_largeobject_metadata; ");
        for row in &schemas {
            sql.push_str(&format!(
                "DROP SCHEMA {} CASCADE; ",
                quote_ident(row.get(0))
            ));
        }
        // The schema `public` as a new cluster has it (owned by
        // pg_database_owner from PostgreSQL 15 on, open to all before).
        sql.push_str(
            "DO $$ BEGIN IF current_setting('server_version_num')::int >= 150000 THEN \
               CREATE SCHEMA public AUTHORIZATION pg_database_owner; \
               GRANT USAGE ON SCHEMA public TO PUBLIC; \
             ELSE CREATE SCHEMA public; GRANT ALL ON SCHEMA public TO PUBLIC; END IF; END $$;",
        );
        admin
            .batch_execute(&sql)
            .await
            .map_err(|e| Self::query_error(step, e))?;
        drop(admin);
        self.mark_sandbox().await
    }
}
