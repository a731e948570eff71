//! Where in the WAL a logical dump stands (the manifest's `position`).
//!
//! `custom` reads the position in the same statement that exports each
//! database's snapshot, so the LSN is the server's at the moment the dump's
//! view was fixed; `plain` cannot see pg_dumpall's snapshots and records the
//! span it ran over. The base backup's position is its stop point
//! (`physical/mod.rs`). See `docs/consistency.md`.

use crate::consistency::{Position, PostgresPosition};
use crate::error::Result;

use super::Postgres;

/// The WAL position and time (the server's clock) at one moment. A standby
/// has no current insert position: its last replayed one stands for it.
/// The timeline needs `pg_control_checkpoint()`, which a role without the
/// right may not call: it is then left out rather than failing the dump
/// (a failed statement would end the snapshot's transaction).
pub(super) const WAL_POINT_COLUMNS: &str = "\
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
    CASE WHEN has_function_privilege('pg_control_checkpoint()', 'execute') \
         THEN (pg_control_checkpoint()).timeline_id END, \
    extract(epoch from clock_timestamp())::float8";

#[derive(Debug, Clone)]
pub(super) struct WalPoint {
    pub at: jiff::Timestamp,
    pub lsn: String,
    pub timeline: Option<u32>,
}

impl WalPoint {
    /// The point from the row of `WAL_POINT_COLUMNS`, starting at column `first`.
    pub fn from_row(row: &tokio_postgres::Row, first: usize) -> WalPoint {
        let lsn: Option<String> = row.get(first);
        let timeline: Option<i32> = row.get(first + 1);
        let epoch: f64 = row.get(first + 2);
        let micros = (epoch * 1_000_000.0).round() as i64;
        WalPoint {
            at: jiff::Timestamp::from_microsecond(micros)
                .unwrap_or_else(|_| jiff::Timestamp::now()),
            lsn: lsn.unwrap_or_default(),
            timeline: timeline.and_then(|t| u32::try_from(t).ok()),
        }
    }
}

impl Postgres {
    /// The server's WAL point now (plain: before and after pg_dumpall).
    pub(super) async fn wal_point_now(&self, step: &str) -> Result<WalPoint> {
        let client = self.connect("postgres", step).await?;
        let row = client
            .query_one(&format!("SELECT {WAL_POINT_COLUMNS}"), &[])
            .await
            .map_err(|e| Self::query_error(step, e))?;
        Ok(WalPoint::from_row(&row, 0))
    }
}

/// The position of a dump made of `points` (one per database's snapshot):
/// a point when there is one moment, else the span from the earliest to the
/// latest, each end with its LSN.
pub(super) fn position_of(basis: &str, points: &[WalPoint]) -> Option<Position> {
    let first = points.iter().min_by_key(|p| p.at)?;
    let last = points.iter().max_by_key(|p| p.at)?;
    let mut position = Position::span(basis, first.at, last.at);
    let span = position.is_span();
    position.postgres = Some(PostgresPosition {
        timeline: first.timeline.or(last.timeline).unwrap_or(0),
        lsn: first.lsn.clone(),
        lsn_until: span.then(|| last.lsn.clone()),
    });
    Some(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: &str, lsn: &str) -> WalPoint {
        WalPoint {
            at: at.parse().unwrap(),
            lsn: lsn.into(),
            timeline: Some(1),
        }
    }

    #[test]
    fn several_snapshots_make_a_span_with_an_lsn_at_each_end() {
        let points = [
            point("2025-01-01T00:00:02Z", "0/30"),
            point("2025-01-01T00:00:01Z", "0/10"),
            point("2025-01-01T00:00:03Z", "0/50"),
        ];
        let position = position_of("exported_snapshot", &points).unwrap();
        assert_eq!(position.from.as_deref(), Some("2025-01-01T00:00:01Z"));
        assert_eq!(position.until.as_deref(), Some("2025-01-01T00:00:03Z"));
        let pg = position.postgres.unwrap();
        assert_eq!(
            (pg.lsn.as_str(), pg.lsn_until.as_deref()),
            ("0/10", Some("0/50"))
        );

        let one = position_of("exported_snapshot", &points[..1]).unwrap();
        assert_eq!(one.taken_at.as_deref(), Some("2025-01-01T00:00:02Z"));
        assert_eq!(one.postgres.unwrap().lsn_until, None);
        assert!(position_of("exported_snapshot", &[]).is_none());
    }
}
