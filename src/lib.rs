//! itbackup: consistent, verified backup and restore of OpenSearch, Neo4j and
//! PostgreSQL. The binary (`main.rs`) only wires the command line to these modules.

pub mod archive;
pub mod artifact;
pub mod backup;
pub mod backup_target;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod drill;
pub mod environment;
pub mod error;
pub mod hooks;
pub mod human;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod ndjson;
pub mod process;
pub mod progress;
pub mod prune;
pub mod remote;
pub mod report;
pub mod restore;
pub mod schedule;
pub mod seal;
pub mod secret;
pub mod service;
pub mod status;
pub mod stores;
pub mod target;
pub mod timeout;
pub mod verify;

#[cfg(test)]
mod import_graph;
