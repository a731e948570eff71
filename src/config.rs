//! Settings, resolved in one place: flags > environment > config file > defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{Cli, MethodArgs};
use crate::environment::{env, nothing};
use crate::error::{Error, Result};
use crate::moment::{FreezeFlags, FreezeSettings};
pub use crate::secret::Secret;
use crate::service::Service;
use crate::stores::neo4j::settings::{Neo4jFile, Neo4jSettings};
use crate::stores::opensearch::settings::{OpenSearchFile, OpenSearchSettings};
use crate::stores::postgres::settings::{PostgresFile, PostgresSettings};
use crate::stores::StoreSettings;
use crate::target::{Compose, Target};
use crate::timeout::{self, resolve_timeouts};

pub const DEFAULT_ROOT: &str = "artifacts/backup";
pub const DEFAULT_CONFIG_FILE: &str = "itbackup.toml";

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
    #[serde(default)]
    pub consistency: crate::moment::ConsistencyFile,
}

/// `[remote]`: the repository's network bounds (durations like "10s", "2m").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteFile {
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    /// Bandwidth limits ("50MiB/s"), as `--limit-upload`/`--limit-download`.
    pub limit_upload: Option<String>,
    pub limit_download: Option<String>,
}

/// `[encryption]`: public recipients to seal backups to, and the private
/// identity file that opens them (a path; the key itself never goes here).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionFile {
    pub recipients: Option<Vec<String>>,
    pub identity: Option<PathBuf>,
}

/// Everything a run needs to know, resolved once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    /// Each store's settings and where their tools run.
    pub stores: StoreSettings,
    /// age recipients (public keys, or files of them) every artifact is sealed to.
    pub encrypt_to: Vec<String>,
    /// age identity file that opens sealed artifacts.
    pub identity: Option<PathBuf>,
    /// How a coordinated backup freezes the writers (`[consistency]`, and
    /// the backup command's flags over it).
    pub freeze: FreezeSettings,
}

impl Settings {
    /// Resolve settings from the parsed command line, the environment and the file.
    pub fn resolve(cli: &Cli, methods: Option<&MethodArgs>) -> Result<Self> {
        Self::resolve_backup(cli, methods, FreezeFlags::default())
    }

    /// [`Settings::resolve`] with the backup command's freeze flags.
    pub fn resolve_backup(
        cli: &Cli,
        methods: Option<&MethodArgs>,
        freeze: FreezeFlags,
    ) -> Result<Self> {
        let file = load_file(cli.config.as_deref())?;
        let postgres =
            PostgresSettings::resolve(file.postgres, methods.and_then(|m| m.postgres_format), env)?;
        let opensearch = OpenSearchSettings::resolve(
            file.opensearch,
            methods.and_then(|m| m.opensearch_method),
            methods.and_then(|m| m.opensearch_repository.clone()),
            methods.and_then(|m| m.indices.clone()),
            env,
        )?;
        let neo4j = Neo4jSettings::resolve(file.neo4j, methods.and_then(|m| m.neo4j_method), env)?;
        timeout::set_remote(resolve_timeouts(
            "remote",
            timeout::REMOTE,
            file.remote.connect_timeout.as_deref(),
            file.remote.idle_timeout.as_deref(),
        )?);
        crate::remote::throttle::set_limits(crate::remote::throttle::Limits {
            upload: rate_limit(
                cli.limit_upload.as_deref(),
                file.remote.limit_upload.as_deref(),
            )?,
            download: rate_limit(
                cli.limit_download.as_deref(),
                file.remote.limit_download.as_deref(),
            )?,
        });
        let encrypt_to = if !cli.encrypt_to.is_empty() {
            cli.encrypt_to.clone()
        } else {
            file.encryption.recipients.unwrap_or_default()
        };
        Ok(Settings {
            freeze: FreezeSettings::resolve(file.consistency, freeze)?,
            encrypt_to,
            identity: cli.identity.clone().or(file.encryption.identity),
            stores: StoreSettings {
                target: resolve_target(cli.compose),
                neo4j,
                opensearch,
                postgres,
            },
            root: cli
                .root
                .clone()
                .or(file.root)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
        })
    }
}

/// A bandwidth limit from its flag, else the file's `[remote]` key.
fn rate_limit(flag: Option<&str>, file: Option<&str>) -> Result<Option<u64>> {
    flag.or(file)
        .map(|text| crate::remote::throttle::parse_rate(text).map_err(Error::usage))
        .transpose()
}

/// `--target-config FILE`: the servers a restore or a sandbox drill writes
/// to, in the config file's `[postgres]`, `[opensearch]` and `[neo4j]`
/// sections and nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    #[serde(default)]
    pub postgres: PostgresFile,
    #[serde(default)]
    pub opensearch: OpenSearchFile,
    #[serde(default)]
    pub neo4j: Neo4jFile,
}

impl Settings {
    /// These settings with the stores' replaced by the servers `path` names
    /// (`--target-config`). Only the file and the defaults count: the
    /// environment names the servers the backups came from, and a sandbox
    /// must never inherit one of their addresses or passwords. The tools run
    /// on this host (a sandbox in containers: give its published ports).
    pub fn with_target_config(mut self, path: &Path) -> Result<Self> {
        let text = read_settings_file(path, "target config")?;
        let file: TargetFile = toml::from_str(&text)
            .map_err(|e| Error::usage(format!("target config {}: {e}", path.display())))?;
        self.stores = StoreSettings {
            target: Target::Local,
            postgres: PostgresSettings::resolve(file.postgres, None, nothing)?,
            opensearch: OpenSearchSettings::resolve(file.opensearch, None, None, None, nothing)?,
            neo4j: Neo4jSettings::resolve(file.neo4j, None, nothing)?,
        };
        Ok(self)
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

fn load_file(explicit: Option<&Path>) -> Result<FileConfig> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => PathBuf::from(DEFAULT_CONFIG_FILE),
        None => return Ok(FileConfig::default()),
    };
    let text = read_settings_file(&path, "config file")?;
    toml::from_str(&text).map_err(|e| Error::usage(format!("config file {}: {e}", path.display())))
}

/// A settings file's text.
fn read_settings_file(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::usage(format!("cannot read {what} {}: {e}", path.display())))
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
