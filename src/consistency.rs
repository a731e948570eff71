//! Where in each store's history a backup stands, and how far apart the
//! stores of one backup set are: the *consistency window*.
//!
//! Every store is backed up on its own, so one backup set is not one moment
//! across the platform. Each artifact records the position its data
//! represents (`ArtifactRecord::position`) and the manifest sums them up
//! (`Manifest::consistency`): the earliest and latest moment any store's data
//! was current, and the time between them. What each position means per
//! method, and what the window does and does not promise, is in
//! `docs/consistency.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::service::Service;

/// The position one artifact's data represents: a point (`taken_at`) when
/// the store was read in one consistent view, a span (`from`, `until`) when
/// it was read over a time without one (Neo4j's online export, PostgreSQL's
/// databases each from its own snapshot). Neo4j has no store-specific
/// part: Community 5 tells no transaction id (`SHOW DATABASE … YIELD
/// lastCommittedTxn` answers null), so its position is its times alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// What the time is taken from: `exported_snapshot`, `base_backup_stop`,
    /// `snapshot_start`, `pit_created`, `export_span`, `server_stopped`.
    pub basis: String,
    /// A point: when the data the artifact holds was current (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<String>,
    /// A span: the data was read between `from` and `until` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresPosition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opensearch: Option<OpenSearchPosition>,
}

/// PostgreSQL's WAL position of the data: the exported snapshot's (the
/// earliest and, over several databases, the latest) or the base backup's stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostgresPosition {
    pub timeline: u32,
    /// `X/Y`, the position at `taken_at` (or at `from`).
    pub lsn: String,
    /// The position at `until`, for a span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn_until: Option<String>,
}

/// OpenSearch's sequence numbers per index at the moment the data was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSearchPosition {
    pub indices: BTreeMap<String, IndexSeqNo>,
}

/// The primaries' sequence numbers of one index (`_stats?level=shards`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSeqNo {
    /// How many primary shards the index has.
    pub primaries: u32,
    /// The highest `max_seq_no` of any primary (-1: nothing written yet).
    pub max_seq_no: i64,
    /// The lowest `global_checkpoint` of any primary.
    pub global_checkpoint: i64,
    /// Every primary, listed only up to `MAX_SHARDS_LISTED` of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardSeqNo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSeqNo {
    pub shard: u32,
    pub max_seq_no: i64,
    pub global_checkpoint: i64,
}

/// An index with more primaries than this records only its max/min: the
/// manifest stays small for clusters of big indices.
pub const MAX_SHARDS_LISTED: usize = 16;

impl Position {
    /// A single moment.
    pub fn point(basis: &str, at: jiff::Timestamp) -> Self {
        Position {
            basis: basis.into(),
            taken_at: Some(at.to_string()),
            from: None,
            until: None,
            postgres: None,
            opensearch: None,
        }
    }

    /// The data was read from `from` to `until`; equal ends make a point.
    pub fn span(basis: &str, from: jiff::Timestamp, until: jiff::Timestamp) -> Self {
        if from >= until {
            return Self::point(basis, from);
        }
        Position {
            taken_at: None,
            from: Some(from.to_string()),
            until: Some(until.to_string()),
            ..Self::point(basis, from)
        }
    }

    /// The earliest and latest moment the data was current; None when the
    /// times do not parse (a hand-made manifest): such a store is left out
    /// of the window rather than failing the reader.
    pub fn bounds(&self) -> Option<(jiff::Timestamp, jiff::Timestamp)> {
        let parse = |s: &Option<String>| s.as_deref().and_then(|t| t.parse().ok());
        match (parse(&self.taken_at), parse(&self.from), parse(&self.until)) {
            (Some(at), _, _) => Some((at, at)),
            (None, Some(from), Some(until)) => Some((from, until)),
            _ => None,
        }
    }

    pub fn is_span(&self) -> bool {
        self.taken_at.is_none()
    }
}

/// The manifest's summary of the positions: how far apart the stores are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consistency {
    /// The earliest moment any store's data was current (RFC 3339).
    pub earliest: String,
    /// The latest moment any store's data was current.
    pub latest: String,
    /// `latest − earliest`, in seconds (millisecond precision).
    pub window_seconds: f64,
    /// Each store's point or span, as its position records it.
    pub stores: BTreeMap<Service, StoreWindow>,
    /// A coordinated backup's freeze (`backup --consistent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<FreezeRecord>,
}

/// How a coordinated backup's moment went: while the writers were paused
/// (from the freeze hook's start to the thaw hook's end), which stores
/// took their positions. With `held`, the set is one moment of everything
/// the hooks paused, however wide the window of the positions' clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreezeRecord {
    /// `held`: every store took its position inside the freeze. `exceeded`:
    /// `max_freeze` ran out first and the backup went on without the
    /// guarantee (`--on-freeze-timeout continue`).
    pub outcome: String,
    /// Whether freeze and thaw hooks paused the writers (without them the
    /// positions were only taken together, writers going on).
    pub hooks: bool,
    pub from: String,
    pub until: String,
    pub seconds: f64,
    pub max_seconds: f64,
    /// The stores that had not taken their position when the freeze ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outside: Vec<Service>,
}

impl FreezeRecord {
    pub fn held(&self) -> bool {
        self.outcome == "held"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreWindow {
    /// `point` or `span`.
    pub kind: String,
    pub from: String,
    pub until: String,
}

impl Consistency {
    /// The summary over the stores' positions (each artifact record's); None when none
    /// does (an older backup, or a store that records none).
    pub fn of<'a>(
        positions: impl IntoIterator<Item = (Service, Option<&'a Position>)>,
    ) -> Option<Self> {
        let mut stores = BTreeMap::new();
        let mut earliest: Option<jiff::Timestamp> = None;
        let mut latest: Option<jiff::Timestamp> = None;
        for (service, position) in positions {
            let Some(position) = position else {
                continue;
            };
            let Some((from, until)) = position.bounds() else {
                continue;
            };
            earliest = Some(earliest.map_or(from, |e| e.min(from)));
            latest = Some(latest.map_or(until, |l| l.max(until)));
            let kind = if position.is_span() { "span" } else { "point" };
            stores.insert(
                service,
                StoreWindow {
                    kind: kind.into(),
                    from: from.to_string(),
                    until: until.to_string(),
                },
            );
        }
        let (earliest, latest) = (earliest?, latest?);
        let millis = latest.duration_since(earliest).as_millis();
        Some(Consistency {
            earliest: earliest.to_string(),
            latest: latest.to_string(),
            window_seconds: millis as f64 / 1000.0,
            stores,
            freeze: None,
        })
    }

    /// The moment every store but `beside` holds: the latest end of their
    /// points and spans, and the store it is taken from. Replaying `beside`
    /// (PostgreSQL's WAL) to it aligns it with them; what remains apart is
    /// their own window.
    pub fn moment_beside(&self, beside: Service) -> Option<(jiff::Timestamp, Service)> {
        self.stores
            .iter()
            .filter(|(service, _)| **service != beside)
            .filter_map(|(service, window)| {
                window
                    .until
                    .parse::<jiff::Timestamp>()
                    .ok()
                    .map(|t| (t, *service))
            })
            .max()
    }

    /// One line: "consistency window 3.2 s (postgres 03:00:01.2 … neo4j 03:00:04.4)".
    pub fn describe(&self) -> String {
        let first = self.stores.iter().min_by(|a, b| a.1.from.cmp(&b.1.from));
        let last = self.stores.iter().max_by(|a, b| a.1.until.cmp(&b.1.until));
        let ends = match (first, last) {
            (Some((s1, w1)), Some((s2, w2))) => {
                format!(" ({s1} {} … {s2} {})", clock(&w1.from), clock(&w2.until))
            }
            _ => String::new(),
        };
        let freeze = match &self.freeze {
            Some(f) if f.held() && f.hooks => {
                format!("; writers paused {:.1} s, every store inside", f.seconds)
            }
            Some(f) if f.held() => "; positions taken together, writers not paused".to_string(),
            Some(f) => format!(
                "; freeze exceeded {:.0} s, {} outside it",
                f.max_seconds,
                f.outside
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        format!(
            "consistency window {:.1} s{ends}{freeze}",
            self.window_seconds
        )
    }
}

/// `HH:MM:SS.s` of an RFC 3339 time, UTC; the time itself if it does not parse.
fn clock(time: &str) -> String {
    match time.parse::<jiff::Timestamp>() {
        Ok(t) => format!(
            "{}.{}",
            t.strftime("%H:%M:%S"),
            t.subsec_nanosecond() / 100_000_000
        ),
        Err(_) => time.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_window_spans_the_earliest_point_to_the_latest_span_end() {
        let mut manifest = crate::manifest::tests::sample();
        let mut pg = manifest.artifacts[&Service::Postgres].clone();
        pg.position = Some(Position::point(
            "exported_snapshot",
            at("2025-02-01T03:00:01.2Z"),
        ));
        let mut neo = pg.clone();
        neo.position = Some(Position::span(
            "export_span",
            at("2025-02-01T03:00:02Z"),
            at("2025-02-01T03:00:04.4Z"),
        ));
        let mut os = pg.clone();
        os.position = None;
        manifest.artifacts.insert(Service::Postgres, pg);
        manifest.artifacts.insert(Service::Neo4j, neo);
        manifest.artifacts.insert(Service::Opensearch, os);
        let summary = Consistency::of(
            manifest
                .artifacts
                .iter()
                .map(|(s, r)| (*s, r.position.as_ref())),
        )
        .unwrap();
        assert_eq!(summary.window_seconds, 3.2);
        assert_eq!(summary.earliest, "2025-02-01T03:00:01.2Z");
        assert_eq!(summary.latest, "2025-02-01T03:00:04.4Z");
        assert_eq!(
            summary.stores.len(),
            2,
            "a store without a position is left out"
        );
        assert_eq!(summary.stores[&Service::Neo4j].kind, "span");
        assert_eq!(summary.stores[&Service::Postgres].kind, "point");
        assert_eq!(
            summary.describe(),
            "consistency window 3.2 s (postgres 03:00:01.2 … neo4j 03:00:04.4)"
        );
        // PostgreSQL aligned to the others: the end of Neo4j's span.
        assert_eq!(
            summary.moment_beside(Service::Postgres),
            Some((at("2025-02-01T03:00:04.4Z"), Service::Neo4j))
        );
        // Nothing beside Neo4j but PostgreSQL's point.
        assert_eq!(
            summary.moment_beside(Service::Neo4j),
            Some((at("2025-02-01T03:00:01.2Z"), Service::Postgres))
        );
    }

    #[test]
    fn no_positions_no_summary() {
        let manifest = crate::manifest::tests::sample();
        assert!(Consistency::of(
            manifest
                .artifacts
                .iter()
                .map(|(s, r)| (*s, r.position.as_ref()))
        )
        .is_none());
    }
}
