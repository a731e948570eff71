//! The rows of the user's tables: exact counts, and content digests that the
//! server computes in the same scan as the count, so that a digest costs no
//! second read of the table and no row is sent here.
//!
//! A table's digest is the sum, as a decimal number, of the 64-bit hash
//! (`hashtextextended`) of each row's text (`t.*::text`, the row as a
//! composite value, in the database's encoding); equal for equal
//! multisets of rows whatever order they are read in. Row text depends on
//! session settings, so every connection that digests sets
//! [`ROW_TEXT_SETTINGS`] first: the backup's and the check's alike.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;

use super::{count_key, quote_ident, Postgres};

/// What a row's text depends on beyond its values: dates, times and
/// intervals, floats, bytea, money, and the names `reg*` types print (the
/// search path; everything the digest query calls is in pg_catalog).
const ROW_TEXT_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET lc_monetary = 'C'; SET search_path = pg_catalog";

/// The digest of the rows of the table aliased `t`: PostgreSQL's own 64-bit
/// text hash (the one hash partitioning relies on, so it stays the same
/// across releases) of each row's bytes (`COLLATE "C"`: whatever the
/// database's collation), summed as an exact numeric. Measured on 3 million
/// pgbench rows: 1.7 s, most of it building the rows' text (SHA-256 took
/// 3.8 s, md5 4.3 s, pg_dump of the table 2.2 s); it runs beside pg_dump.
/// Not a cryptographic hash: it tells a lost or changed row, which is its
/// job; whoever can rewrite a backup can rewrite its manifest too.
const ROWS_DIGEST: &str = "coalesce(sum(hashtextextended((t.*::text) COLLATE \"C\", 0)), 0)::text";

/// What is read of each table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reading {
    /// Its rows are counted.
    Count,
    /// Its rows are counted and digested (a full read of their content).
    CountAndDigest,
}

/// What was read of a database's tables, by [`count_key`].
#[derive(Debug, Default)]
pub(super) struct TableRows {
    pub(super) counts: BTreeMap<String, u64>,
    /// Only for [`Reading::CountAndDigest`].
    pub(super) digests: BTreeMap<String, String>,
}

impl Postgres {
    /// A connection to `database` for `reading`: one that digests has the
    /// session settings row text depends on.
    pub(super) async fn connect_to_read(
        &self,
        database: &str,
        reading: Reading,
        step: &str,
    ) -> Result<tokio_postgres::Client> {
        let client = self.connect(database, step).await?;
        if reading == Reading::CountAndDigest {
            client
                .batch_execute(ROW_TEXT_SETTINGS)
                .await
                .map_err(|e| Self::query_error(step, e))?;
        }
        Ok(client)
    }

    /// The user tables of the connected database, largest first: (schema, name, bytes).
    async fn tables(
        client: &impl tokio_postgres::GenericClient,
        step: &str,
    ) -> Result<Vec<(String, String, i64)>> {
        let rows = client
            .query(
                "SELECT n.nspname, c.relname, pg_relation_size(c.oid) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                 ORDER BY 3 DESC, 1, 2",
                &[],
            )
            .await
            .map_err(|e| Self::query_error(step, e))?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    /// The rows of one table (not of its partitions or children): their
    /// number, and their digest when `reading` asks for it. One scan either way.
    async fn read_table(
        client: &impl tokio_postgres::GenericClient,
        schema: &str,
        name: &str,
        reading: Reading,
        step: &str,
    ) -> Result<(u64, Option<String>)> {
        let row = client
            .query_one(&table_query(schema, name, reading), &[])
            .await
            .map_err(|e| Self::query_error(step, e))?;
        Ok((row.get::<_, i64>(0) as u64, row.get(1)))
    }

    /// Every table, one after another on `client` (at backup time: inside
    /// the dump's snapshot, beside pg_dump), and the large objects' count.
    pub(super) async fn read_rows(
        client: &impl tokio_postgres::GenericClient,
        database: &str,
        reading: Reading,
        into: &mut TableRows,
    ) -> Result<()> {
        let step = "count rows";
        for (schema, name, _) in Self::tables(client, step).await? {
            let (count, digest) = Self::read_table(client, &schema, &name, reading, step).await?;
            let key = count_key(database, &schema, &name);
            if let Some(digest) = digest {
                into.digests.insert(key.clone(), digest);
            }
            into.counts.insert(key, count);
        }
        Self::count_large_objects(client, database, &mut into.counts).await
    }

    /// Large objects live outside the user's tables: counted on their own, so
    /// that a restore that lost them fails its count check. Not digested:
    /// their content would be read whole into memory by `lo_get` (which fails
    /// beyond 1 GB), and their metadata rows hold owner OIDs that differ
    /// from server to server.
    async fn count_large_objects(
        client: &impl tokio_postgres::GenericClient,
        database: &str,
        counts: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        let (schema, name) = ("pg_catalog", "pg_largeobject_metadata");
        let (count, _) =
            Self::read_table(client, schema, name, Reading::Count, "count large objects").await?;
        counts.insert(count_key(database, schema, name), count);
        Ok(())
    }

    /// Exact row counts of every table and of the large objects, on `jobs`
    /// connections at once (after a restore, when nothing else needs the
    /// server).
    pub(super) async fn count_rows_in_parallel(
        &self,
        database: &str,
        counts: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        let client = self.connect(database, "count large objects").await?;
        Self::count_large_objects(&client, database, counts).await?;
        drop(client);
        let rows = self
            .read_tables_in_parallel(database, Reading::Count, &|_| true)
            .await?;
        counts.extend(rows.counts);
        Ok(())
    }

    /// The tables of `database` whose key `wanted` takes, read on `jobs`
    /// connections at once, each table going to the connection with the
    /// least bytes so far.
    async fn read_tables_in_parallel(
        &self,
        database: &str,
        reading: Reading,
        wanted: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<TableRows> {
        let step = "count rows";
        let client = self.connect(database, step).await?;
        let tables: Vec<_> = Self::tables(&client, step)
            .await?
            .into_iter()
            .filter(|(schema, name, _)| wanted(&count_key(database, schema, name)))
            .collect();
        drop(client);
        let shares = shares_by_size(tables, self.settings.jobs);
        let read = futures::future::try_join_all(shares.into_iter().map(|tables| async move {
            let client = self.connect_to_read(database, reading, step).await?;
            let mut read = Vec::with_capacity(tables.len());
            for (schema, name) in tables {
                let rows = Self::read_table(&client, &schema, &name, reading, step).await?;
                read.push((count_key(database, &schema, &name), rows));
            }
            Ok::<_, Error>(read)
        }))
        .await?;
        let mut rows = TableRows::default();
        for (key, (count, digest)) in read.into_iter().flatten() {
            if let Some(digest) = digest {
                rows.digests.insert(key.clone(), digest);
            }
            rows.counts.insert(key, count);
        }
        Ok(rows)
    }

    /// The digests of the tables `record.digests` names that the server
    /// holds now, computed as the backup did; see [`Store::content_digests`].
    ///
    /// [`Store::content_digests`]: crate::stores::Store::content_digests
    pub(super) async fn table_digests(
        &self,
        record: &ArtifactRecord,
    ) -> Result<BTreeMap<String, String>> {
        if record.digests.is_empty() {
            return Ok(BTreeMap::new());
        }
        let admin = self.connect("postgres", "list databases").await?;
        let present = self.databases(&admin).await?;
        drop(admin);
        let wanted = |key: &str| record.digests.contains_key(key);
        let mut digests = BTreeMap::new();
        for database in databases_named(record.digests.keys(), &present) {
            let rows = self
                .read_tables_in_parallel(database, Reading::CountAndDigest, &wanted)
                .await?;
            digests.extend(rows.digests);
        }
        Ok(digests)
    }
}

/// The query that reads one table: its row count and, for
/// [`Reading::CountAndDigest`], its digest ([`ROWS_DIGEST`]), else NULL.
fn table_query(schema: &str, name: &str, reading: Reading) -> String {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(name));
    match reading {
        Reading::Count => format!("SELECT count(*), NULL::text FROM ONLY {table}"),
        Reading::CountAndDigest => format!("SELECT count(*), {ROWS_DIGEST} FROM ONLY {table} AS t"),
    }
}

/// The tables split into at most `jobs` shares of about equal bytes,
/// largest tables first, so that no connection is left with all the big ones.
fn shares_by_size(tables: Vec<(String, String, i64)>, jobs: usize) -> Vec<Vec<(String, String)>> {
    let jobs = jobs.clamp(1, tables.len().max(1));
    let mut shares: Vec<(i64, Vec<(String, String)>)> = vec![(0, Vec::new()); jobs];
    for (schema, name, bytes) in tables {
        let share = shares.iter_mut().min_by_key(|s| s.0).expect("jobs >= 1");
        share.0 += bytes.max(1);
        share.1.push((schema, name));
    }
    shares.into_iter().map(|(_, tables)| tables).collect()
}

/// The databases of `present` that some key (`<database>/<schema>.<table>`)
/// names. Matched against the server's names rather than split at a `/`,
/// which a database's name may hold itself.
fn databases_named<'a>(
    keys: impl Iterator<Item = &'a String>,
    present: &'a [String],
) -> Vec<&'a str> {
    let keys: BTreeSet<&String> = keys.collect();
    present
        .iter()
        .filter(|database| {
            let prefix = format!("{database}/");
            keys.range::<String, _>(&prefix..)
                .next()
                .is_some_and(|key| key.starts_with(&prefix))
        })
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_counted_and_digested_in_one_scan_of_it_alone() {
        let count = table_query("my schema", "odd\"name", Reading::Count);
        assert_eq!(
            count,
            "SELECT count(*), NULL::text FROM ONLY \"my schema\".\"odd\"\"name\""
        );
        let digest = table_query("public", "items", Reading::CountAndDigest);
        assert!(
            digest.starts_with("SELECT count(*), coalesce(sum(")
                && digest.ends_with("FROM ONLY \"public\".\"items\" AS t"),
            "{digest}"
        );
        // The whole row through the alias, never a column that might be named t.
        assert!(digest.contains("t.*::text"), "{digest}");
    }

    #[test]
    fn databases_are_found_by_their_keys_even_with_a_slash_in_the_name() {
        let keys = [
            count_key("app", "public", "items"),
            count_key("a/b", "s.x", "t.y"),
            count_key("other", "public", "t"),
        ];
        let present = ["a/b", "app", "apple", "unrelated"].map(String::from);
        assert_eq!(databases_named(keys.iter(), &present), ["a/b", "app"]);
        // `a` could hold a schema `b/s.x` too: it is read, and only the
        // tables whose keys are recorded exactly are digested.
        let present = ["a", "a/b"].map(String::from);
        assert_eq!(databases_named(keys.iter(), &present), ["a", "a/b"]);
    }

    #[test]
    fn tables_are_shared_by_bytes_largest_first() {
        let table = |name: &str, bytes| ("public".to_string(), name.to_string(), bytes);
        let shares = shares_by_size(
            vec![
                table("big", 100),
                table("mid", 60),
                table("small", 50),
                table("empty", 0),
            ],
            2,
        );
        let names: Vec<Vec<&str>> = shares
            .iter()
            .map(|share| share.iter().map(|(_, name)| name.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["big", "empty"], vec!["mid", "small"]]);
        assert_eq!(shares_by_size(Vec::new(), 4).len(), 1, "one empty share");
    }
}
