//! Which tests may run at the same time.
//!
//! All tests are one binary, so tests of every area run side by side on the
//! one testenv stack. Each server (PostgreSQL, OpenSearch, Neo4j, S3, the
//! three-node OpenSearch cluster beside the stack, and the sandbox stack) has
//! a read-write lock:
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
//! port, `127.0.0.1:1`) or works offline needs no lock.
//!
//! A test takes all the locks it needs at once, or none: it waits holding
//! nothing. Taking them one by one (in a fixed order, which kept it free of
//! deadlocks) let a test that needs every server hold PostgreSQL and
//! OpenSearch while it waited ten minutes for Neo4j, and every PostgreSQL
//! and OpenSearch test waited behind it: the suite ran one server at a time.
//! Several tests can be waiting for a server at once; whichever finds all of
//! its servers free first runs (the order libtest started them in is not a
//! promise); a waiting test keeps no reader out of a server it waits for
//! (the shared tests are few and short). A test that panics releases its
//! locks.
use std::sync::{Condvar, Mutex, MutexGuard};

/// A server of the testenv stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Opensearch,
    Neo4j,
    S3,
    /// The three-node OpenSearch cluster (`common::cluster`).
    OpensearchCluster,
    /// The sandbox stack's three servers (testenv's sandbox profile).
    Sandbox,
}

pub use Server::{Neo4j, Opensearch, OpensearchCluster, Postgres, Sandbox, S3};

/// Every server.
pub const ALL: &[Server] = &[Postgres, Opensearch, Neo4j, S3, OpensearchCluster, Sandbox];

/// Who holds a server (the servers are indexed like [`ALL`]).
#[derive(Clone, Copy, Default)]
struct Holders {
    readers: u32,
    writer: bool,
}

static HOLDERS: Mutex<[Holders; ALL.len()]> = Mutex::new(
    [Holders {
        readers: 0,
        writer: false,
    }; ALL.len()],
);
/// Notified whenever a test releases its locks.
static RELEASED: Condvar = Condvar::new();

fn index(server: Server) -> usize {
    ALL.iter().position(|s| *s == server).unwrap()
}

fn holders() -> MutexGuard<'static, [Holders; ALL.len()]> {
    // A test that panicked never panics while holding this mutex (the
    // bookkeeping below cannot fail); poisoning is harmless either way.
    HOLDERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The locks a test holds, released when dropped (keep it in a `_guard`
/// binding for the whole test: `let _ = ...` would release it at once).
#[must_use = "the servers are unlocked as soon as the guard is dropped"]
pub struct Servers {
    exclusive: Vec<usize>,
    shared: Vec<usize>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let mut held = holders();
        for &i in &self.exclusive {
            held[i].writer = false;
        }
        for &i in &self.shared {
            held[i].readers -= 1;
        }
        drop(held);
        RELEASED.notify_all();
    }
}

/// Whole-server work on `servers` (see the module's documentation).
pub fn exclusive(servers: &[Server]) -> Servers {
    lock(servers, &[])
}

/// Work on objects of the test's own on `servers` (see the module's documentation).
pub fn shared(servers: &[Server]) -> Servers {
    lock(&[], servers)
}

/// Whole-server work on `exclusive`, objects of the test's own on `shared`
/// (a server in both is taken exclusively).
pub fn lock(exclusive: &[Server], shared: &[Server]) -> Servers {
    let exclusive: Vec<usize> = exclusive.iter().map(|s| index(*s)).collect();
    let shared: Vec<usize> = shared
        .iter()
        .map(|s| index(*s))
        .filter(|i| !exclusive.contains(i))
        .collect();
    let mut held = holders();
    loop {
        let free = exclusive
            .iter()
            .all(|&i| !held[i].writer && held[i].readers == 0)
            && shared.iter().all(|&i| !held[i].writer);
        if free {
            break;
        }
        held = RELEASED.wait(held).unwrap_or_else(|e| e.into_inner());
    }
    for &i in &exclusive {
        held[i].writer = true;
    }
    for &i in &shared {
        held[i].readers += 1;
    }
    Servers { exclusive, shared }
}
