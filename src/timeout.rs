//! Network timeouts: how long a server may take to take a connection
//! (connect) and, once asked, to send anything at all (idle). A server that
//! accepts TCP and never answers must fail a run, never hang it; a long
//! legitimate operation (a snapshot, a big `_bulk`) must not be cut, so the
//! idle bound is per read, never a total, and server-side waits are polled.
//! The policy is in docs/operations.md ("Timeouts").

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::Error;
use crate::service::Service;

/// The connect and idle bounds of one kind of server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `postgres`, `opensearch`, `neo4j` or `remote`: the config section and
    /// the middle of the variables' names (`IT_POSTGRES_CONNECT_TIMEOUT`).
    pub scope: &'static str,
    pub connect: Duration,
    pub idle: Duration,
}

/// Which of the two bounds ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Idle,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Idle => "idle",
        }
    }
}

/// Defaults (seconds): connect, idle.
pub const POSTGRES: (u64, u64) = (10, 300);
pub const OPENSEARCH: (u64, u64) = (10, 120);
pub const NEO4J: (u64, u64) = (10, 120);
pub const REMOTE: (u64, u64) = (10, 60);

impl Timeouts {
    pub fn new(scope: &'static str, (connect, idle): (u64, u64)) -> Self {
        Timeouts {
            scope,
            connect: Duration::from_secs(connect),
            idle: Duration::from_secs(idle),
        }
    }

    pub fn of(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Connect => self.connect,
            Phase::Idle => self.idle,
        }
    }

    /// The variable that sets one bound.
    pub fn variable(&self, phase: Phase) -> String {
        format!(
            "IT_{}_{}_TIMEOUT",
            self.scope.to_uppercase(),
            phase.name().to_uppercase()
        )
    }

    /// "no answer within 2 s (connect timeout)".
    pub fn describe(&self, phase: Phase) -> String {
        format!(
            "no answer within {} ({} timeout)",
            seconds(self.of(phase)),
            phase.name()
        )
    }

    /// What to do about it, and how to change the bound.
    pub fn hint(&self, phase: Phase, what: &str) -> String {
        format!(
            "{what} took the connection but did not answer in time: is it overloaded, hung, or is something else listening there? If it is only slow, raise the bound with {} (or {}_timeout under [{}] in the config file)",
            self.variable(phase),
            phase.name(),
            self.scope
        )
    }

    /// A failure of `step` because `phase`'s bound ran out while talking to `what`.
    pub fn error(
        &self,
        service: Option<Service>,
        step: &str,
        phase: Phase,
        what: &str,
        detail: &str,
    ) -> Error {
        let mut e = Error::unreachable(step, format!("{detail}{}", self.describe(phase)))
            .hint(self.hint(phase, what));
        e.service = service;
        e
    }
}

/// "2 s", "1.5 s".
pub fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The connect and idle bounds of `scope`: `IT_<SCOPE>_CONNECT_TIMEOUT` and
/// `IT_<SCOPE>_IDLE_TIMEOUT` beat `connect_timeout`/`idle_timeout` in the
/// file's `[scope]` section, which beat the defaults.
pub fn resolve_timeouts(
    scope: &'static str,
    defaults: (u64, u64),
    file_connect: Option<&str>,
    file_idle: Option<&str>,
) -> crate::error::Result<Timeouts> {
    let mut timeouts = Timeouts::new(scope, defaults);
    for (phase, file) in [(Phase::Connect, file_connect), (Phase::Idle, file_idle)] {
        let variable = timeouts.variable(phase);
        let slot = match phase {
            Phase::Connect => &mut timeouts.connect,
            Phase::Idle => &mut timeouts.idle,
        };
        *slot = crate::human::duration_setting(
            [
                (crate::environment::env(&variable), variable),
                (
                    file.map(str::to_string),
                    format!("[{scope}] in the config file"),
                ),
            ],
            *slot,
        )
        .map_err(Error::usage)?;
    }
    Ok(timeouts)
}

/// The remote repository's bounds: a repository is opened in places that do
/// not carry the settings (push, pull, the catalog), so `Settings::resolve`
/// records them here once; without it, the environment and the defaults.
static REMOTE_TIMEOUTS: OnceLock<Timeouts> = OnceLock::new();

pub fn set_remote(timeouts: Timeouts) {
    let _ = REMOTE_TIMEOUTS.set(timeouts);
}

pub fn remote() -> Timeouts {
    *REMOTE_TIMEOUTS.get_or_init(|| {
        resolve_timeouts("remote", REMOTE, None, None)
            .unwrap_or_else(|_| Timeouts::new("remote", REMOTE))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_the_bound_and_the_setting() {
        let t = Timeouts::new("postgres", (2, 300));
        let e = t.error(
            Some(Service::Postgres),
            "connect",
            Phase::Connect,
            "PostgreSQL at db:5432",
            "db:5432: ",
        );
        assert_eq!(e.message, "db:5432: no answer within 2 s (connect timeout)");
        assert_eq!(e.kind, crate::error::Kind::Unreachable);
        let hint = e.hint.unwrap();
        assert!(hint.contains("IT_POSTGRES_CONNECT_TIMEOUT"), "{hint}");
        assert!(hint.contains("connect_timeout under [postgres]"), "{hint}");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }
}
