//! Every integration test, in one test binary: each file of tests/ used to be
//! a binary of its own that linked the whole crate, which took most of CI's
//! time on two cores. The modules run the real `itbackup` binary against the
//! real servers of `testenv/`; `common` holds what they share, including the
//! locks that decide which tests may run at the same time
//! (`common::exclusive`, `common::shared`).
//!
//! One area: `cargo test --test suite postgres::` (a module path is a filter).

mod common;

mod compose;
mod conformance;
mod consistency;
mod daily_ops;
mod drill;
mod fault_injection;
mod full_disk;
mod neo4j;
mod opensearch;
mod opensearch_cluster;
mod pitr;
mod postgres;
mod postgres_failures;
mod remote;
mod sandbox;
mod secrets;
mod servers;
mod streaming;
mod timeouts;
mod wal;
