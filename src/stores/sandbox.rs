//! Servers a sandbox drill restores real backups into (`itbackup drill
//! --backup … --target-config FILE`). A server is taken for a sandbox only
//! when it is empty or was marked as one by an earlier drill: a mistyped
//! target config that names a server with the user's data is refused before
//! anything is written to it.

use async_trait::async_trait;

use crate::error::Result;

/// The name every store's sandbox mark goes by: a PostgreSQL database, an
/// OpenSearch index, a Neo4j node label (`ItbackupSandbox`).
pub const SANDBOX_MARK: &str = "itbackup_sandbox";

/// What a sandbox drill finds in a server before it restores into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxState {
    /// Nothing but the server's own objects (and the synthetic drill's data).
    Empty,
    /// Marked as a sandbox by an earlier drill: what it holds may be replaced.
    Marked,
    /// Holds data no drill put there, described for the refusal.
    Holds(String),
}

/// A server used as a sandbox: inspected before, marked, cleaned after.
#[async_trait]
pub trait SandboxServer: Send + Sync {
    /// Whether the server is empty, a marked sandbox, or holds other data.
    async fn sandbox_state(&self) -> Result<SandboxState>;

    /// Mark the server as a sandbox, so that the next drill accepts what
    /// this one leaves in it (after `--keep`, or after being killed).
    async fn mark_sandbox(&self) -> Result<()>;

    /// Remove everything a drill restored into the server, and mark it.
    async fn clean_sandbox(&self) -> Result<()>;
}
