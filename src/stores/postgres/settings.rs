//! PostgreSQL's settings: its `[postgres]` section of the config file, the
//! libpq environment variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`),
//! `IT_PG_BIN`, `IT_PG_DATA`, `IT_PG_STOP_CMD`, `IT_PG_START_CMD`, the
//! `--postgres-format` flag, and their defaults.
//! `config.rs` combines them with the other stores' and the common settings.

use std::path::PathBuf;

use serde::Deserialize;

use super::PostgresFormat;
use crate::environment::Lookup;
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::timeout::resolve_timeouts;
use crate::timeout::{self, Timeouts};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresFile {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub format: Option<PostgresFormat>,
    pub jobs: Option<usize>,
    pub bin_dir: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub stop_command: Option<String>,
    pub start_command: Option<String>,
    pub content_digests: Option<bool>,
}

/// How to reach PostgreSQL and how to dump it.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub format: PostgresFormat,
    /// Parallel jobs of pg_restore, and databases dumped at once (default: number of cores).
    pub jobs: usize,
    /// Directory of pg_dump/pg_restore/psql; `None` means look them up on PATH.
    pub bin_dir: Option<PathBuf>,
    pub timeouts: Timeouts,
    /// The server's data directory, which a point-in-time restore replaces
    /// (`IT_PG_DATA`, `[postgres] data_dir`).
    pub data_dir: Option<PathBuf>,
    /// Shell commands that stop and start the server around a point-in-time
    /// restore (`IT_PG_STOP_CMD`, `IT_PG_START_CMD`).
    pub stop_command: Option<String>,
    pub start_command: Option<String>,
    /// Record a content digest of every table at backup time (custom
    /// format): a second read of each row's content on the server, beside
    /// pg_dump. On by default; `[postgres] content_digests = false` for
    /// clusters where that read costs more than the check is worth.
    pub content_digests: bool,
}

impl PostgresSettings {
    /// Flags > environment (`env`) > the file's `[postgres]` > defaults.
    pub fn resolve(
        pg_file: PostgresFile,
        flag_format: Option<PostgresFormat>,
        env: Lookup,
    ) -> Result<Self> {
        let port = match env("PGPORT") {
            Some(p) => p
                .parse()
                .map_err(|_| Error::usage(format!("PGPORT '{p}' is not a port number")))?,
            None => pg_file.port.unwrap_or(5432),
        };
        Ok(PostgresSettings {
            host: env("PGHOST")
                .or(pg_file.host)
                .unwrap_or_else(|| "localhost".into()),
            port,
            user: env("PGUSER")
                .or(pg_file.user)
                .unwrap_or_else(|| "postgres".into()),
            password: env("PGPASSWORD").map(Secret::new).or(pg_file.password),
            format: flag_format
                .or(pg_file.format)
                .unwrap_or(PostgresFormat::Custom),
            jobs: pg_file.jobs.unwrap_or_else(default_jobs).max(1),
            bin_dir: env("IT_PG_BIN").map(PathBuf::from).or(pg_file.bin_dir),
            timeouts: resolve_timeouts(
                "postgres",
                timeout::POSTGRES,
                pg_file.connect_timeout.as_deref(),
                pg_file.idle_timeout.as_deref(),
            )?,
            data_dir: env("IT_PG_DATA").map(PathBuf::from).or(pg_file.data_dir),
            stop_command: env("IT_PG_STOP_CMD").or(pg_file.stop_command),
            start_command: env("IT_PG_START_CMD").or(pg_file.start_command),
            content_digests: pg_file.content_digests.unwrap_or(true),
        })
    }
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
