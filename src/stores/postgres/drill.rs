//! The drill's synthetic data in PostgreSQL: a database of its own.

use async_trait::async_trait;
use futures::StreamExt;

use super::{quote_ident, Postgres};
use crate::error::{Error, Result};
use crate::stores::{DrillData, DrillEvents, DrillInventory, UnorderedDigest};

/// The drill's database; nothing else of the user's is created or dropped.
pub const DRILL_DATABASE: &str = "itbackup_drill";
const DRILL_TABLE: &str = "drill_items";
/// `drill --cross-store`'s events, beside the items (not in the inventory).
const EVENTS_TABLE: &str = "drill_events";
/// Databases every cluster has: they hold no user data when they hold no tables.
const SYSTEM_DATABASES: [&str; 1] = ["postgres"];

impl Postgres {
    async fn drill_database_exists(&self, step: &str) -> Result<bool> {
        let admin = self.connect("postgres", step).await?;
        Ok(self
            .databases(&admin)
            .await?
            .iter()
            .any(|d| d == DRILL_DATABASE))
    }
}

#[async_trait]
impl DrillData for Postgres {
    fn drill_location(&self) -> String {
        format!("database {DRILL_DATABASE}")
    }

    async fn holds_only_drill_data(&self) -> Result<bool> {
        let client = self.connect("postgres", "drill: inspect").await?;
        for database in self.databases(&client).await? {
            if database == DRILL_DATABASE {
                continue;
            }
            if !SYSTEM_DATABASES.contains(&database.as_str()) {
                return Ok(false);
            }
            let db = self.connect(&database, "drill: inspect").await?;
            let tables: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') \
                       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                       AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'",
                    &[],
                )
                .await
                .map_err(|e| Self::query_error("drill: inspect", e))?
                .get(0);
            if tables > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn drill_populate(&self, scale: u64) -> Result<()> {
        let step = "drill: populate";
        self.drill_wipe().await?;
        let admin = self.connect("postgres", step).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(DRILL_DATABASE)))
            .await
            .map_err(|e| Self::query_error(step, e))?;
        let db = self.connect(DRILL_DATABASE, step).await?;
        // Types a real application uses, generated server-side in one statement.
        db.batch_execute(&format!(
            "CREATE TABLE {DRILL_TABLE} (
                 id bigint PRIMARY KEY,
                 name text NOT NULL,
                 amount numeric(12, 2),
                 payload jsonb,
                 tags text[],
                 blob bytea,
                 seen timestamptz,
                 key uuid);
             INSERT INTO {DRILL_TABLE}
             SELECT i, 'item ' || i || ' ünïcödé',
                    (i * 7919 % 1000000) / 100.0,
                    jsonb_build_object('i', i, 'even', i % 2 = 0, 'nested', jsonb_build_object('k', md5(i::text))),
                    ARRAY['t' || (i % 10), 't' || (i % 7)],
                    decode(md5(i::text), 'hex'),
                    timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second',
                    md5(i::text)::uuid
             FROM generate_series(1::bigint, {scale}::bigint) AS i;
             CREATE INDEX ON {DRILL_TABLE} (seen);
             ANALYZE {DRILL_TABLE};"
        ))
        .await
        .map_err(|e| Self::query_error(step, e))
    }

    async fn drill_inventory(&self) -> Result<DrillInventory> {
        let step = "drill: inventory";
        if !self.drill_database_exists(step).await? {
            return Ok(UnorderedDigest::default().finish());
        }
        let db = self.connect(DRILL_DATABASE, step).await?;
        // Every row in COPY's text form, streamed.
        let stream = db
            .copy_out(&format!("COPY {DRILL_TABLE} TO STDOUT"))
            .await
            .map_err(|e| Self::query_error(step, e))?;
        futures::pin_mut!(stream);
        let mut digest = UnorderedDigest::default();
        let mut pending = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Self::query_error(step, e))?;
            pending.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
                digest.add(&pending[start..start + end]);
                start += end + 1;
            }
            pending.drain(..start);
        }
        if !pending.is_empty() {
            return Err(
                Error::failure(step, "COPY output ended in the middle of a row")
                    .service(super::SVC),
            );
        }
        Ok(digest.finish())
    }

    async fn drill_wipe(&self) -> Result<()> {
        let step = "drill: remove data";
        let admin = self.connect("postgres", step).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(DRILL_DATABASE)
            ))
            .await
            .map_err(|e| Self::query_error(step, e))
    }

    async fn drill_events_create(&self) -> Result<()> {
        let step = "drill: create the event table";
        let db = self.connect(DRILL_DATABASE, step).await?;
        db.batch_execute(&format!(
            "DROP TABLE IF EXISTS {EVENTS_TABLE}; CREATE TABLE {EVENTS_TABLE} (id bigint PRIMARY KEY)"
        ))
        .await
        .map_err(|e| Self::query_error(step, e))
    }

    async fn drill_events_writer(&self) -> Result<Box<dyn DrillEvents>> {
        let client = self.connect(DRILL_DATABASE, "drill: write events").await?;
        Ok(Box::new(EventWriter { client }))
    }

    async fn drill_event_ids(&self) -> Result<std::collections::BTreeSet<u64>> {
        let step = "drill: read events";
        if !self.drill_database_exists(step).await? {
            return Ok(Default::default());
        }
        let db = self.connect(DRILL_DATABASE, step).await?;
        let rows = db
            .query(&format!("SELECT id FROM {EVENTS_TABLE}"), &[])
            .await;
        match rows {
            Ok(rows) => Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect()),
            // No event table (a restore without it): no events.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                Ok(Default::default())
            }
            Err(e) => Err(Self::query_error(step, e)),
        }
    }

    async fn drill_remove_one(&self) -> Result<()> {
        let step = "drill: remove one row";
        let db = self.connect(DRILL_DATABASE, step).await?;
        db.batch_execute(&format!(
            "DELETE FROM {DRILL_TABLE} WHERE id = (SELECT max(id) FROM {DRILL_TABLE})"
        ))
        .await
        .map_err(|e| Self::query_error(step, e))
    }
}

struct EventWriter {
    client: tokio_postgres::Client,
}

#[async_trait]
impl DrillEvents for EventWriter {
    async fn write(&mut self, id: u64) -> Result<()> {
        self.client
            .execute(
                &format!("INSERT INTO {EVENTS_TABLE} (id) VALUES ($1)"),
                &[&(id as i64)],
            )
            .await
            .map(|_| ())
            .map_err(|e| Postgres::query_error("drill: write an event", e))
    }
}
