//! The one moment of a coordinated backup (`backup --consistent`): what
//! the stores see of it, and its settings.
//!
//! Each store's backup tells the [`Moment`] when its position is taken (its
//! snapshots exported, its points in time opened, its snapshot's shards
//! started); `freeze.rs` keeps the writers paused until every store has, or
//! until `max_freeze` runs out. A store that never tells holds the freeze
//! until its whole backup has ended, which is always correct and only
//! slower. See docs/consistency.md.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::human::duration_setting;
use crate::service::Service;

/// The stores that have not taken their position yet; `None` when the
/// backup is not coordinated (every store reads when it is ready).
#[derive(Clone, Default)]
pub struct Moment(Option<Arc<tokio::sync::watch::Sender<BTreeSet<Service>>>>);

impl Moment {
    /// A backup without a coordinated moment.
    pub fn none() -> Self {
        Moment(None)
    }

    /// A moment that `services` must each reach.
    pub fn of(services: &[Service]) -> Self {
        let (sender, _) = tokio::sync::watch::channel(services.iter().copied().collect());
        Moment(Some(Arc::new(sender)))
    }

    /// Whether the stores should take their positions up front (all
    /// snapshots exported, all points in time opened) before the long work.
    pub fn is_coordinated(&self) -> bool {
        self.0.is_some()
    }

    /// `service`'s position is taken: its backup no longer needs the
    /// writers paused. Called again (or for a store that is not waited for)
    /// it changes nothing.
    pub fn reached(&self, service: Service) {
        if let Some(waiting) = &self.0 {
            waiting.send_if_modified(|set| set.remove(&service));
        }
    }

    /// The stores still to reach the moment.
    pub fn waiting(&self) -> Vec<Service> {
        self.0
            .as_ref()
            .map(|w| w.borrow().iter().copied().collect())
            .unwrap_or_default()
    }

    /// Resolves once every store has reached the moment.
    pub async fn all_reached(&self) {
        if let Some(waiting) = &self.0 {
            let mut receiver = waiting.subscribe();
            // The sender lives in `self`: the channel cannot close here.
            let _ = receiver.wait_for(|set| set.is_empty()).await;
        }
    }
}

/// What happens when `max_freeze` runs out before every store has taken
/// its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OnFreezeTimeout {
    /// Thaw, stop the stores' work and fail the run: no backup is made.
    Fail,
    /// Thaw and finish the backup without the guarantee; the manifest and
    /// the log say so.
    Continue,
}

impl OnFreezeTimeout {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFreezeTimeout::Fail => "fail",
            OnFreezeTimeout::Continue => "continue",
        }
    }
}

/// `[consistency]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyFile {
    /// Every backup (the scheduled ones too) is coordinated.
    pub consistent: Option<bool>,
    pub freeze_hook: Option<String>,
    pub thaw_hook: Option<String>,
    /// A duration ("10s").
    pub max_freeze: Option<String>,
    pub on_freeze_timeout: Option<OnFreezeTimeout>,
}

/// The default bound of a freeze: writers paused longer than this are an
/// outage of their own.
pub const DEFAULT_MAX_FREEZE: Duration = Duration::from_secs(10);

/// How a coordinated backup freezes and thaws the platform's writers.
#[derive(Debug, Clone)]
pub struct FreezeSettings {
    pub consistent: bool,
    /// `sh -c` command that returns once the writers are paused.
    pub freeze_hook: Option<String>,
    /// `sh -c` command that lets them go again.
    pub thaw_hook: Option<String>,
    /// From the freeze hook's start until every store has its position.
    pub max_freeze: Duration,
    pub on_timeout: OnFreezeTimeout,
}

impl FreezeSettings {
    /// The file's `[consistency]`, then the flags over it (`flags` fields
    /// that are `None` leave the file's value).
    pub fn resolve(file: ConsistencyFile, flags: FreezeFlags) -> Result<Self> {
        let max_freeze = duration_setting(
            [
                (flags.max_freeze, "--max-freeze".into()),
                (file.max_freeze, "max_freeze under [consistency]".into()),
            ],
            DEFAULT_MAX_FREEZE,
        )
        .map_err(Error::usage)?;
        let settings = FreezeSettings {
            consistent: flags.consistent || file.consistent.unwrap_or(false),
            freeze_hook: flags.freeze_hook.or(file.freeze_hook),
            thaw_hook: flags.thaw_hook.or(file.thaw_hook),
            max_freeze,
            on_timeout: flags
                .on_freeze_timeout
                .or(file.on_freeze_timeout)
                .unwrap_or(OnFreezeTimeout::Fail),
        };
        // A writer paused by a hook must be let go by one.
        if settings.freeze_hook.is_some() != settings.thaw_hook.is_some() {
            return Err(Error::usage(
                "a freeze hook needs a thaw hook and a thaw hook a freeze hook (--freeze-hook and --thaw-hook, or freeze_hook and thaw_hook under [consistency])",
            ));
        }
        if settings.freeze_hook.is_some() && !settings.consistent {
            return Err(Error::usage(
                "--freeze-hook and --thaw-hook take effect with --consistent (or consistent = true under [consistency])",
            ));
        }
        Ok(settings)
    }
}

/// The backup command's flags for the freeze (all optional over the file).
#[derive(Debug, Default)]
pub struct FreezeFlags {
    pub consistent: bool,
    pub freeze_hook: Option<String>,
    pub thaw_hook: Option<String>,
    pub max_freeze: Option<String>,
    pub on_freeze_timeout: Option<OnFreezeTimeout>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_moment_is_reached_once_every_store_has_told() {
        let moment = Moment::of(&[Service::Postgres, Service::Neo4j]);
        assert!(moment.is_coordinated());
        moment.reached(Service::Postgres);
        moment.reached(Service::Postgres);
        assert_eq!(moment.waiting(), vec![Service::Neo4j]);
        let waiting = tokio::time::timeout(Duration::from_millis(50), moment.all_reached()).await;
        assert!(waiting.is_err(), "Neo4j has not told yet");
        moment.reached(Service::Neo4j);
        tokio::time::timeout(Duration::from_secs(1), moment.all_reached())
            .await
            .expect("all reached");
        // A backup without a moment never waits.
        Moment::none().all_reached().await;
        assert!(!Moment::none().is_coordinated());
    }

    #[test]
    fn hooks_come_in_pairs_and_only_with_consistent() {
        let flags = |freeze: Option<&str>, thaw: Option<&str>, consistent| FreezeFlags {
            consistent,
            freeze_hook: freeze.map(String::from),
            thaw_hook: thaw.map(String::from),
            ..Default::default()
        };
        let resolve = |f| FreezeSettings::resolve(ConsistencyFile::default(), f);
        assert!(resolve(flags(Some("a"), None, true)).is_err());
        assert!(resolve(flags(None, Some("b"), true)).is_err());
        assert!(resolve(flags(Some("a"), Some("b"), false)).is_err());
        let ok = resolve(flags(Some("a"), Some("b"), true)).unwrap();
        assert_eq!(ok.max_freeze, DEFAULT_MAX_FREEZE);
        assert_eq!(ok.on_timeout, OnFreezeTimeout::Fail);
        let file = ConsistencyFile {
            consistent: Some(true),
            max_freeze: Some("3s".into()),
            on_freeze_timeout: Some(OnFreezeTimeout::Continue),
            ..Default::default()
        };
        let from_file = FreezeSettings::resolve(file, FreezeFlags::default()).unwrap();
        assert!(from_file.consistent);
        assert_eq!(from_file.max_freeze, Duration::from_secs(3));
        assert_eq!(from_file.on_timeout, OnFreezeTimeout::Continue);
        let zero = FreezeFlags {
            max_freeze: Some("0s".into()),
            ..Default::default()
        };
        assert!(FreezeSettings::resolve(ConsistencyFile::default(), zero).is_err());
    }
}
