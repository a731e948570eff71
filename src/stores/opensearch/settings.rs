//! OpenSearch's settings: its `[opensearch]` section of the config file, its
//! environment variables and flags, and their defaults. `config.rs` combines
//! them with the other stores' and the common settings.

use std::time::Duration;

use serde::Deserialize;

use super::OpenSearchMethod;
use crate::archive::ArchiveCompression;
use crate::environment::Lookup;
use crate::error::{Error, Result};
use crate::human::duration_setting;
use crate::secret::Secret;
use crate::timeout::resolve_timeouts;
use crate::timeout::{self, Timeouts};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenSearchFile {
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub method: Option<OpenSearchMethod>,
    /// A snapshot repository the cluster has registered: the repository method's.
    pub repository: Option<String>,
    pub indices: Option<String>,
    /// `gzip` (the runbook's .tar.gz) or `zstd` for snapshot archives.
    pub snapshot_compression: Option<ArchiveCompression>,
    /// Parallel slices per index for the logical export.
    pub slices: Option<usize>,
    /// `_bulk` requests in flight during a logical restore.
    pub bulk_requests: Option<usize>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    /// How long a red cluster is waited for before a run gives up on it.
    pub health_wait: Option<String>,
}

/// How long a red cluster is waited for by default.
pub const DEFAULT_HEALTH_WAIT: Duration = Duration::from_secs(30);

/// How to reach OpenSearch and how to back it up.
#[derive(Debug, Clone)]
pub struct OpenSearchSettings {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `None`: choose (the repository method when a repository is named,
    /// else snapshot when path.repo is reachable, logical otherwise).
    pub method: Option<OpenSearchMethod>,
    /// The registered snapshot repository of the repository method.
    pub repository: Option<String>,
    pub indices: Option<String>,
    pub snapshot_compression: ArchiveCompression,
    pub slices: usize,
    pub bulk_requests: usize,
    pub timeouts: Timeouts,
    /// A red cluster is polled this long before a run is refused: a primary
    /// that is initialising (an index being created, closed, opened or
    /// restored) turns the cluster red for a moment, and a backup at 3 a.m.
    /// must not fail on that.
    pub health_wait: Duration,
}

impl OpenSearchSettings {
    /// Flags > environment (`env`) > the file's `[opensearch]` > defaults.
    /// `flag_method`, `flag_repository`, `flag_indices`: the command line's
    /// `--opensearch-method`, `--opensearch-repository` and `--indices`, which
    /// beat the environment and the file.
    pub fn resolve(
        os_file: OpenSearchFile,
        flag_method: Option<OpenSearchMethod>,
        flag_repository: Option<String>,
        flag_indices: Option<String>,
        env: Lookup,
    ) -> Result<Self> {
        Ok(OpenSearchSettings {
            url: env("OPENSEARCH_URL")
                .or(os_file.url)
                .unwrap_or_else(|| "http://localhost:9200".into())
                .trim_end_matches('/')
                .to_string(),
            username: env("OPENSEARCH_USER").or(os_file.username),
            password: env("OPENSEARCH_PASSWORD")
                .map(Secret::new)
                .or(os_file.password),
            method: flag_method.or(os_file.method),
            repository: flag_repository
                .or_else(|| env("IT_OPENSEARCH_REPOSITORY"))
                .or(os_file.repository),
            indices: flag_indices.or(os_file.indices),
            snapshot_compression: os_file
                .snapshot_compression
                .unwrap_or(ArchiveCompression::Gzip),
            slices: os_file.slices.unwrap_or(2).clamp(1, 16),
            bulk_requests: os_file.bulk_requests.unwrap_or(3).clamp(1, 16),
            timeouts: resolve_timeouts(
                "opensearch",
                timeout::OPENSEARCH,
                os_file.connect_timeout.as_deref(),
                os_file.idle_timeout.as_deref(),
            )?,
            health_wait: duration_setting(
                [
                    (
                        env("IT_OPENSEARCH_HEALTH_WAIT"),
                        "IT_OPENSEARCH_HEALTH_WAIT".into(),
                    ),
                    (os_file.health_wait, "health_wait under [opensearch]".into()),
                ],
                DEFAULT_HEALTH_WAIT,
            )
            .map_err(Error::usage)?,
        })
    }
}
