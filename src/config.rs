//! Settings, resolved in one place: flags > environment > config file > defaults.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{Cli, MethodArgs};
use crate::error::{Error, Result};
use crate::service::Service;
use crate::stores::neo4j::Neo4jMethod;
use crate::stores::opensearch::settings::{OpenSearchFile, OpenSearchSettings};
use crate::stores::postgres::settings::{PostgresFile, PostgresSettings};
use crate::target::{Compose, Target};
use crate::timeout::{self, Timeouts};

pub const DEFAULT_ROOT: &str = "artifacts/backup";
pub const DEFAULT_CONFIG_FILE: &str = "itbackup.toml";

/// A password or key: never printed, never logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// The optional TOML file. Every key is optional; unknown keys are an error so typos show.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub root: Option<PathBuf>,
    #[serde(default)]
    pub postgres: PostgresFile,
    #[serde(default)]
    pub opensearch: OpenSearchFile,
    #[serde(default)]
    pub neo4j: Neo4jFile,
    #[serde(default)]
    pub encryption: EncryptionFile,
    #[serde(default)]
    pub remote: RemoteFile,
}

/// `[remote]`: the repository's network bounds (durations like "10s", "2m").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteFile {
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
}

/// `[encryption]`: public recipients to seal backups to, and the private
/// identity file that opens them (a path; the key itself never goes here).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionFile {
    pub recipients: Option<Vec<String>>,
    pub identity: Option<PathBuf>,
}

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
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
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
    pub timeouts: Timeouts,
}

/// Everything a run needs to know, resolved once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    /// Where the stores' own tools run: this host, or their compose containers.
    pub target: Target,
    pub postgres: PostgresSettings,
    pub opensearch: OpenSearchSettings,
    pub neo4j: Neo4jSettings,
    /// age recipients (public keys, or files of them) every artifact is sealed to.
    pub encrypt_to: Vec<String>,
    /// age identity file that opens sealed artifacts.
    pub identity: Option<PathBuf>,
}

/// A variable of the environment; set but empty counts as unset.
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Settings {
    /// Resolve settings from the parsed command line, the environment and the file.
    pub fn resolve(cli: &Cli, methods: Option<&MethodArgs>) -> Result<Self> {
        let file = load_file(cli.config.as_deref())?;
        let postgres = PostgresSettings::resolve(file.postgres, methods)?;
        let opensearch = OpenSearchSettings::resolve(file.opensearch, methods)?;
        let neo_file = file.neo4j;
        let neo4j = Neo4jSettings {
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
            method: methods
                .and_then(|m| m.neo4j_method)
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
            timeouts: resolve_timeouts(
                "neo4j",
                timeout::NEO4J,
                neo_file.connect_timeout.as_deref(),
                neo_file.idle_timeout.as_deref(),
            )?,
        };
        timeout::set_remote(resolve_timeouts(
            "remote",
            timeout::REMOTE,
            file.remote.connect_timeout.as_deref(),
            file.remote.idle_timeout.as_deref(),
        )?);
        let encrypt_to = if !cli.encrypt_to.is_empty() {
            cli.encrypt_to.clone()
        } else {
            file.encryption.recipients.unwrap_or_default()
        };
        Ok(Settings {
            encrypt_to,
            identity: cli.identity.clone().or(file.encryption.identity),
            target: resolve_target(cli.compose),
            neo4j,
            opensearch,
            root: cli
                .root
                .clone()
                .or(file.root)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            postgres,
        })
    }
}

/// Compose mode: `--compose`, `IT_COMPOSE_FILES` (`:` or `,` between files) or
/// `IT_COMPOSE_PROJECT`; service names from `IT_COMPOSE_SERVICE_<STORE>`.
fn resolve_target(flag: bool) -> Target {
    let files = env("IT_COMPOSE_FILES");
    let project = env("IT_COMPOSE_PROJECT");
    if !flag && files.is_none() && project.is_none() {
        return Target::Local;
    }
    let services = Service::ALL
        .iter()
        .filter_map(|s| {
            env(&format!("IT_COMPOSE_SERVICE_{}", s.as_str().to_uppercase())).map(|n| (*s, n))
        })
        .collect();
    Target::Compose(Compose {
        docker: env("IT_DOCKER").unwrap_or_else(|| "docker".into()),
        files: files
            .as_deref()
            .map(Compose::parse_files)
            .unwrap_or_default(),
        project,
        services,
    })
}

/// The connect and idle bounds of `scope`: `IT_<SCOPE>_CONNECT_TIMEOUT` and
/// `IT_<SCOPE>_IDLE_TIMEOUT` beat `connect_timeout`/`idle_timeout` in the
/// file's `[scope]` section, which beat the defaults.
pub fn resolve_timeouts(
    scope: &'static str,
    defaults: (u64, u64),
    file_connect: Option<&str>,
    file_idle: Option<&str>,
) -> Result<Timeouts> {
    let mut timeouts = Timeouts::new(scope, defaults);
    for (phase, file) in [
        (timeout::Phase::Connect, file_connect),
        (timeout::Phase::Idle, file_idle),
    ] {
        let variable = timeouts.variable(phase);
        let (text, origin) = match (env(&variable), file) {
            (Some(text), _) => (text, variable),
            (None, Some(text)) => (text.to_string(), format!("[{scope}] in the config file")),
            (None, None) => continue,
        };
        let value = crate::schedule::parse_duration(&text)
            .map_err(|e| Error::usage(format!("{origin}: {e}")))?;
        match phase {
            timeout::Phase::Connect => timeouts.connect = value,
            timeout::Phase::Idle => timeouts.idle = value,
        }
    }
    Ok(timeouts)
}

fn load_file(explicit: Option<&Path>) -> Result<FileConfig> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => PathBuf::from(DEFAULT_CONFIG_FILE),
        None => return Ok(FileConfig::default()),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::usage(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Error::usage(format!("config file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
    }

    #[test]
    fn config_file_rejects_unknown_keys() {
        let err = toml::from_str::<FileConfig>("[postgres]\nfromat = 'plain'\n").unwrap_err();
        assert!(err.to_string().contains("fromat"));
    }
}
