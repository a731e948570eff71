//! Neo4j's settings: its `[neo4j]` section of the config file, its
//! environment variables and flags, and their defaults. `config.rs` combines
//! them with the other stores' and the common settings.

use serde::Deserialize;

use super::Neo4jMethod;
use crate::environment::Lookup;
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::timeout::resolve_timeouts;
use crate::timeout::{self, Timeouts};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neo4jFile {
    pub uri: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub database: Option<String>,
    pub method: Option<Neo4jMethod>,
    /// Path of neo4j-admin (dump method).
    pub admin: Option<String>,
    /// Shell commands that stop and start the server (dump method, local mode).
    pub stop_command: Option<String>,
    pub start_command: Option<String>,
    /// Rows per transaction and transactions in flight during a logical restore.
    pub batch_size: Option<usize>,
    pub transactions: Option<usize>,
    /// Send relationships grouped by start node (needs scratch space, faster).
    pub group_relationships: Option<bool>,
    /// How a logical restore loads: online transactions or neo4j-admin import.
    pub load: Option<Neo4jLoad>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
}

/// How a logical restore puts the graph back (`--neo4j-load`, `[neo4j] load`,
/// `IT_NEO4J_LOAD`). Only logical artifacts are loaded; a dump is always
/// `neo4j-admin database load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Neo4jLoad {
    /// Online: `UNWIND` transactions over Bolt; the server stays up.
    #[default]
    Transactional,
    /// Offline: CSV files through `neo4j-admin database import full`, the
    /// server stopped meanwhile (IT_NEO4J_STOP_CMD / START_CMD).
    Import,
}

impl Neo4jLoad {
    fn parse(text: &str) -> Result<Self> {
        match text {
            "transactional" => Ok(Neo4jLoad::Transactional),
            "import" => Ok(Neo4jLoad::Import),
            other => Err(Error::usage(format!(
                "IT_NEO4J_LOAD is '{other}': it is either transactional or import"
            ))),
        }
    }
}

/// How to reach Neo4j and how to back it up.
#[derive(Debug, Clone)]
pub struct Neo4jSettings {
    pub uri: String,
    pub user: String,
    pub password: Secret,
    pub database: String,
    pub method: Neo4jMethod,
    pub admin: String,
    pub stop_command: Option<String>,
    pub start_command: Option<String>,
    pub batch_size: usize,
    pub transactions: usize,
    pub group_relationships: bool,
    pub load: Neo4jLoad,
    pub timeouts: Timeouts,
}

impl Neo4jSettings {
    /// Flags > environment (`env`) > the file's `[neo4j]` > defaults.
    pub fn resolve(
        neo_file: Neo4jFile,
        flag_method: Option<Neo4jMethod>,
        env: Lookup,
    ) -> Result<Self> {
        Ok(Neo4jSettings {
            uri: env("NEO4J_URI")
                .or(neo_file.uri)
                .unwrap_or_else(|| "bolt://localhost:7687".into()),
            user: env("NEO4J_USER")
                .or(neo_file.user)
                .unwrap_or_else(|| "neo4j".into()),
            // The runbook's development default.
            password: env("NEO4J_PASSWORD")
                .map(Secret::new)
                .or(neo_file.password)
                .unwrap_or_else(|| Secret::new("test12345")),
            database: env("NEO4J_DATABASE")
                .or(neo_file.database)
                .unwrap_or_else(|| "neo4j".into()),
            method: flag_method
                .or(neo_file.method)
                .unwrap_or(Neo4jMethod::Logical),
            admin: env("IT_NEO4J_ADMIN")
                .or(neo_file.admin)
                .unwrap_or_else(|| "neo4j-admin".into()),
            stop_command: env("IT_NEO4J_STOP_CMD").or(neo_file.stop_command),
            start_command: env("IT_NEO4J_START_CMD").or(neo_file.start_command),
            // Measured at 1M nodes / 2M relationships on 2 cores: 2000 × 4
            // restores in 148-162 s against 192 s for 1000 × 3, at 86 MB peak.
            batch_size: neo_file.batch_size.unwrap_or(2000).max(1),
            transactions: neo_file.transactions.unwrap_or(4).clamp(1, 16),
            group_relationships: neo_file.group_relationships.unwrap_or(true),
            load: match env("IT_NEO4J_LOAD") {
                Some(text) => Neo4jLoad::parse(&text)?,
                None => neo_file.load.unwrap_or_default(),
            },
            timeouts: resolve_timeouts(
                "neo4j",
                timeout::NEO4J,
                neo_file.connect_timeout.as_deref(),
                neo_file.idle_timeout.as_deref(),
            )?,
        })
    }

    /// `--neo4j-load`, which beats the environment and the file (restore
    /// and drill only: it is not a backup's setting).
    pub fn with_load_flag(&mut self, flag: Option<Neo4jLoad>) {
        if let Some(load) = flag {
            self.load = load;
        }
    }
}
