//! itbackup: consistent, verified backup and restore of OpenSearch, Neo4j and
//! PostgreSQL. The binary (`main.rs`) only wires the command line to these modules.

pub(crate) mod address;
pub(crate) mod archive;
pub mod artifact;
pub mod backup;
pub(crate) mod backup_target;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod consistency;
pub mod drill;
pub(crate) mod environment;
pub mod error;
pub mod freeze;
pub mod heap;
pub mod hooks;
pub(crate) mod human;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod moment;
pub(crate) mod ndjson;
pub(crate) mod parallel;
pub mod process;
pub(crate) mod progress;
pub mod prune;
pub mod remote;
pub mod report;
pub mod repository;
pub mod restore;
pub mod schedule;
pub mod seal;
pub(crate) mod secret;
pub mod service;
pub mod status;
pub(crate) mod stores;
pub(crate) mod target;
pub(crate) mod timeout;
pub mod verify;

#[cfg(test)]
mod import_graph;
