//! `drill --cross-store`: while the drill's backup runs, a writer puts
//! every event id into every store (a row, a document, a node linked to the
//! one before it), the way the platform keeps one world in three stores.
//! After the restore the three id sets are compared: with `--consistent`
//! (the freeze and thaw hooks pause this writer) they must be identical;
//! without, the report measures how far apart the stores came back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::moment::{FreezeSettings, OnFreezeTimeout};
use crate::service::Service;
use crate::stores::{DrillEvents, Store};

/// Events written before the backup starts, so that every store has some,
/// and after it ends, so that the report shows what the backup left out.
const EVENTS_AROUND_BACKUP: u64 = 10;
/// How many missing ids a report lists per store (it counts them all).
const LISTED: usize = 100;

/// The running writer.
pub struct CrossStoreWriter {
    /// Where the freeze hook asks it to pause (`pause`) and it answers (`paused`).
    signals: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl CrossStoreWriter {
    /// Create each store's empty event store and start writing; returns
    /// once a few events are in all of them.
    pub async fn start(stores: &[Box<dyn Store>]) -> Result<Self> {
        let mut writers = Vec::new();
        for store in stores {
            store.drill_events_create().await?;
            writers.push(store.drill_events_writer().await?);
        }
        let signals = tempfile::Builder::new()
            .prefix("itbackup-drill-writer-")
            .tempdir()
            .map_err(|e| Error::failure("drill: start the writer", e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(write_events(
            writers,
            signals.path().to_path_buf(),
            stop.clone(),
            written.clone(),
        ));
        let writer = CrossStoreWriter {
            signals,
            stop,
            written,
            task,
        };
        match writer.wait_for(EVENTS_AROUND_BACKUP).await {
            Ok(()) => Ok(writer),
            Err(e) => Err(writer.stop().await.err().unwrap_or(e)),
        }
    }

    /// Wait (at most a minute) until `more` events beyond those written now are in.
    async fn wait_for(&self, more: u64) -> Result<()> {
        let target = self.written.load(Ordering::SeqCst) + more;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.written.load(Ordering::SeqCst) < target {
            if self.task.is_finished() || tokio::time::Instant::now() > deadline {
                return Err(Error::failure(
                    "drill: write events",
                    format!("the writer wrote fewer than {more} events in 60 s"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// `backup --consistent` whose hooks pause this writer (and wait for it
    /// to finish the event in hand), bounded by `max_freeze`.
    pub fn freeze(&self, max_freeze: Duration) -> FreezeSettings {
        let dir = shell_quote(self.signals.path());
        FreezeSettings {
            consistent: true,
            freeze_hook: Some(format!(
                "touch {dir}/pause; while [ ! -e {dir}/paused ]; do sleep 0.02; done"
            )),
            thaw_hook: Some(format!("rm -f {dir}/pause {dir}/paused")),
            max_freeze,
            on_timeout: OnFreezeTimeout::Fail,
        }
    }

    /// After the backup: write a few more events (which no backup holds),
    /// then stop; the number of events written.
    pub async fn finish(self) -> Result<u64> {
        let more = self.wait_for(EVENTS_AROUND_BACKUP).await;
        let written = self.stop().await?;
        more.map(|()| written)
    }

    /// Stop after the event in hand; the number of events written.
    async fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        let ended = self
            .task
            .await
            .map_err(|e| Error::failure("drill: write events", e.to_string()))?;
        ended.map(|()| self.written.load(Ordering::SeqCst))
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

async fn write_events(
    mut writers: Vec<Box<dyn DrillEvents>>,
    signals: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> Result<()> {
    let (pause, paused) = (signals.join("pause"), signals.join("paused"));
    let mut id = 0;
    let result = async {
        while !stop.load(Ordering::SeqCst) {
            if pause.exists() {
                // The event in hand is in every store: tell the freeze hook.
                let _ = std::fs::write(&paused, b"");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            id += 1;
            for writer in writers.iter_mut() {
                writer.write(id).await?;
            }
            written.store(id, Ordering::SeqCst);
        }
        Ok(())
    }
    .await;
    // A writer that stopped holds no freeze hook waiting.
    let _ = std::fs::write(&paused, b"");
    result
}

/// One store's events after the restore.
#[derive(Debug, Clone, Serialize)]
pub struct StoreEvents {
    /// Events the store holds.
    pub restored: u64,
    /// Events some other store holds and this one does not.
    pub missing: u64,
    /// The first of them (at most 100).
    pub missing_ids: Vec<u64>,
}

/// The cross-store comparison, in `synthetic-validation.json`.
#[derive(Debug, Clone, Serialize)]
pub struct CrossStoreReport {
    /// Whether the backup was taken with `--consistent` (hooks pausing the writer).
    pub consistent: bool,
    /// Events the writer put into every store during the drill.
    pub written: u64,
    /// Events that came back in at least one store, and in all of them.
    pub in_any_store: u64,
    pub in_every_store: u64,
    pub stores: BTreeMap<Service, StoreEvents>,
    /// Every store holds the same events.
    pub agree: bool,
}

impl CrossStoreReport {
    /// Compare the id sets the stores hold now.
    pub async fn of(stores: &[Box<dyn Store>], consistent: bool, written: u64) -> Result<Self> {
        let mut held = BTreeMap::new();
        for store in stores {
            held.insert(store.service(), store.drill_event_ids().await?);
        }
        Ok(Self::compare(&held, consistent, written))
    }

    fn compare(held: &BTreeMap<Service, BTreeSet<u64>>, consistent: bool, written: u64) -> Self {
        let any: BTreeSet<u64> = held.values().flatten().copied().collect();
        let every = any
            .iter()
            .filter(|id| held.values().all(|ids| ids.contains(id)))
            .count() as u64;
        let stores: BTreeMap<Service, StoreEvents> = held
            .iter()
            .map(|(service, ids)| {
                let missing: Vec<u64> = any.difference(ids).copied().collect();
                (
                    *service,
                    StoreEvents {
                        restored: ids.len() as u64,
                        missing: missing.len() as u64,
                        missing_ids: missing.into_iter().take(LISTED).collect(),
                    },
                )
            })
            .collect();
        CrossStoreReport {
            consistent,
            written,
            in_any_store: any.len() as u64,
            in_every_store: every,
            agree: stores.values().all(|s| s.missing == 0),
            stores,
        }
    }

    /// One line per store that misses events.
    pub fn differences(&self) -> Vec<String> {
        self.stores
            .iter()
            .filter(|(_, s)| s.missing > 0)
            .map(|(service, s)| {
                format!(
                    "cross-store: {service} lacks {} event(s) other stores hold (first: {:?})",
                    s.missing,
                    &s.missing_ids[..s.missing_ids.len().min(10)]
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_what_each_store_lacks() {
        let held = BTreeMap::from([
            (Service::Postgres, BTreeSet::from([1, 2, 3, 4])),
            (Service::Opensearch, BTreeSet::from([1, 2, 3])),
            (Service::Neo4j, BTreeSet::from([1, 2, 3, 4, 5])),
        ]);
        let report = CrossStoreReport::compare(&held, false, 9);
        assert!(!report.agree);
        assert_eq!(report.in_any_store, 5);
        assert_eq!(report.in_every_store, 3);
        assert_eq!(report.stores[&Service::Postgres].missing_ids, vec![5]);
        assert_eq!(report.stores[&Service::Opensearch].missing_ids, vec![4, 5]);
        assert_eq!(report.stores[&Service::Neo4j].missing, 0);
        assert_eq!(report.differences().len(), 2);
        let same = BTreeMap::from([
            (Service::Postgres, BTreeSet::from([1, 2])),
            (Service::Neo4j, BTreeSet::from([1, 2])),
        ]);
        assert!(CrossStoreReport::compare(&same, true, 2).agree);
    }
}
