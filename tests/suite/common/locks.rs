//! Which tests may run at the same time.
//!
//! All tests are one binary, so tests of every area run side by side on the
//! one testenv stack. Each server (PostgreSQL, OpenSearch, Neo4j, S3) has a
//! read-write lock:
//!
//! * [`exclusive`] (the write lock) for whole-server work: any itbackup
//!   `backup`, `restore` or `drill` against the server (itbackup itself
//!   admits one writer per server on this host, so a second one would be
//!   refused, and a backup of a server copies what other tests are changing),
//!   wiping, stopping or reconfiguring it, mounting over its directories, and
//!   counting or checking anything server-wide (all nodes, every database or
//!   repository named like itbackup's temporary ones, ...).
//! * [`shared`] (the read lock) for tests that only touch objects of their
//!   own, uniquely named (a database, an index, a prefix in the bucket) and
//!   run no itbackup against that server: they run beside each other, never
//!   beside whole-server work on the same server.
//!
//! A test that runs itbackup only against an address of its own (a silent
//! port, `127.0.0.1:1`) or works offline needs no lock. Locks are taken in
//! one order ([`Server`]'s), so tests that need several never deadlock; a
//! writer waiting keeps new readers out (std's `RwLock` on Linux), so whole-
//! server tests are not starved. A test that panics releases its locks.
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A server of the testenv stack, in the order its lock is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Opensearch,
    Neo4j,
    S3,
}

pub use Server::{Neo4j, Opensearch, Postgres, S3};

/// Every server, in lock order.
pub const ALL: &[Server] = &[Postgres, Opensearch, Neo4j, S3];

static LOCKS: [RwLock<()>; 4] = [const { RwLock::new(()) }; 4];

#[allow(dead_code)] // held for its Drop only
enum Held {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// The locks a test holds, released when dropped (keep it in a `_guard`
/// binding for the whole test: `let _ = ...` would release it at once).
#[must_use = "the servers are unlocked as soon as the guard is dropped"]
pub struct Servers {
    _held: Vec<Held>,
}

/// Whole-server work on `servers` (see the module's documentation).
pub fn exclusive(servers: &[Server]) -> Servers {
    lock(servers, &[])
}

/// Work on objects of the test's own on `servers` (see the module's documentation).
pub fn shared(servers: &[Server]) -> Servers {
    lock(&[], servers)
}

/// Whole-server work on `exclusive`, objects of the test's own on `shared`.
pub fn lock(exclusive: &[Server], shared: &[Server]) -> Servers {
    let held = ALL
        .iter()
        .enumerate()
        .filter_map(|(i, server)| {
            let lock = &LOCKS[i];
            if exclusive.contains(server) {
                Some(Held::Exclusive(
                    lock.write().unwrap_or_else(|e| e.into_inner()),
                ))
            } else if shared.contains(server) {
                Some(Held::Shared(lock.read().unwrap_or_else(|e| e.into_inner())))
            } else {
                None
            }
        })
        .collect();
    Servers { _held: held }
}
