//! Errors that tell an operator at 3 a.m. what failed, where, and what to do.
//!
//! Every failure the tool reports names the service (when there is one), the
//! step that failed and, where we can guess it, the likely fix. It also
//! carries a [`Kind`], decided where the error is made (the lock, the
//! checksum check, the store's client, the tool runner), from which the exit
//! code follows: scripts branch on the code, code branches on the kind, and
//! nothing branches on the message text. The codes are documented in
//! docs/exit-codes.md and must stay stable.

use std::fmt;

use crate::service::Service;

/// What kind of failure an error is: decides the exit code (see
/// [`Kind::exit_code`]) and the `kind` of a `--json` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anything not named below (exit 1).
    Failure,
    /// The request cannot be carried out as given: arguments, configuration (exit 2).
    Usage,
    /// The backup, path or remote backup asked for does not exist (exit 3).
    NotFound,
    /// A backup failed its checks: checksum, size, manifest, archive, decode (exit 4).
    DamagedBackup,
    /// After a restore (or a drill) the store does not hold what the backup
    /// says: counts or digests differ (exit 5).
    VerificationMismatch,
    /// Another run holds the lock of the backup root or of a server (exit 6).
    Locked,
    /// A server or repository could not be reached or stopped answering:
    /// connection refused, DNS, connect or idle timeout (exit 7).
    Unreachable,
    /// A server, repository or key refused the credentials (exit 8).
    Authentication,
    /// A disk is full: the backup root, a scratch directory, a server's (exit 9).
    NoSpace,
    /// A server or one of the stores' tools refused or failed the work (exit 10).
    StoreRefused,
    /// A signal stopped one of the tools the run started (exit 11).
    Interrupted,
}

impl Kind {
    /// Every kind, in exit-code order.
    pub const ALL: [Kind; 11] = [
        Kind::Failure,
        Kind::Usage,
        Kind::NotFound,
        Kind::DamagedBackup,
        Kind::VerificationMismatch,
        Kind::Locked,
        Kind::Unreachable,
        Kind::Authentication,
        Kind::NoSpace,
        Kind::StoreRefused,
        Kind::Interrupted,
    ];

    /// The process exit status for this kind (0 is success). Stable:
    /// scripts depend on these numbers (docs/exit-codes.md).
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Failure => 1,
            Kind::Usage => 2,
            Kind::NotFound => 3,
            Kind::DamagedBackup => 4,
            Kind::VerificationMismatch => 5,
            Kind::Locked => 6,
            Kind::Unreachable => 7,
            Kind::Authentication => 8,
            Kind::NoSpace => 9,
            Kind::StoreRefused => 10,
            Kind::Interrupted => 11,
        }
    }

    /// The name in `--json` errors (`{"error": {"kind": …}}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failure => "failure",
            Kind::Usage => "usage",
            Kind::NotFound => "not_found",
            Kind::DamagedBackup => "damaged_backup",
            Kind::VerificationMismatch => "verification_mismatch",
            Kind::Locked => "locked",
            Kind::Unreachable => "unreachable",
            Kind::Authentication => "authentication",
            Kind::NoSpace => "no_space",
            Kind::StoreRefused => "store_refused",
            Kind::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure with the context an operator needs to act on it.
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub service: Option<Service>,
    pub step: String,
    pub message: String,
    pub hint: Option<String>,
    /// The HTTP status a server answered with, when the failure is such an
    /// answer: lets a caller tell "not there" (404) from other refusals.
    pub http_status: Option<u16>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` during `step`, not tied to one service.
    pub fn new(kind: Kind, step: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            kind,
            service: None,
            step: step.into(),
            message: message.into(),
            hint: None,
            http_status: None,
        }
    }

    /// A failure during `step` of no more particular [`Kind`].
    pub fn failure(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::Failure, step, message)
    }

    /// The user's request cannot be carried out as given (exit status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, "arguments", message)
    }

    /// What the request names (a backup, a path) does not exist.
    pub fn not_found(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, step, message)
    }

    /// A backup failed a check of its checksums, sizes, manifest or content.
    pub fn damaged(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::DamagedBackup, step, message)
    }

    /// A store does not hold what the backup says it should after a restore.
    pub fn mismatch(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::VerificationMismatch, step, message)
    }

    /// A server or repository could not be reached, or stopped answering.
    pub fn unreachable(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::Unreachable, step, message)
    }

    /// A server, repository or key refused the credentials.
    pub fn authentication(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::Authentication, step, message)
    }

    /// A server or a store's tool refused or failed the work.
    pub fn refused(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::StoreRefused, step, message)
    }

    /// The same error as another kind (for a helper that knows better than
    /// the constructor it called).
    pub fn of_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    pub fn service(mut self, service: Service) -> Self {
        self.service = Some(service);
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(service) = self.service {
            write!(f, "{service}: ")?;
        }
        write!(f, "{}: {}", self.step, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Attach service and step to any lower-level error.
pub trait Context<T> {
    fn step(self, service: Option<Service>, step: &str) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn step(self, service: Option<Service>, step: &str) -> Result<T> {
        self.map_err(|e| {
            let mut err = Error::failure(step, e.to_string());
            err.service = service;
            err
        })
    }
}

/// Why a file of a backup was refused before it was read. Its message never
/// holds the file's content, and [`io_hint`] gives its advice.
#[derive(Debug)]
pub struct NotRegular(pub String);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotRegular {}

/// A file whose size is not what it should be (see `open_sized` in artifact.rs).
#[derive(Debug)]
pub struct SizeMismatch {
    pub found: u64,
    pub expected: u64,
    pub at_most: bool,
}

impl std::fmt::Display for SizeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound = if self.at_most { "at most " } else { "" };
        write!(
            f,
            "has {} bytes, {bound}{} expected",
            self.found, self.expected
        )
    }
}

impl std::error::Error for SizeMismatch {}

/// The usual advice when a local filesystem operation fails.
pub fn io_hint(err: &std::io::Error) -> &'static str {
    if err.get_ref().is_some_and(|e| e.is::<NotRegular>()) {
        return "artifacts and manifests must be regular files inside the backup directory (not links, FIFOs or devices): put the real file back, or use another backup";
    }
    if err.get_ref().is_some_and(|e| e.is::<SizeMismatch>()) {
        return "the file is truncated, damaged or was replaced: use another backup";
    }
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            "the disk is full: free space under the backup root or choose another --out/--root"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "permission denied: run as a user that may write the backup root, or change --root"
        }
        Some(libc::EROFS) => "the filesystem is read-only: choose another --out/--root",
        _ => "check the path, free disk space and permissions",
    }
}

/// The kind of a local I/O error: a full disk or quota, or a file of a
/// backup refused for its type or size (see `open_sized` in artifact.rs);
/// anything else is a plain failure.
pub fn io_kind(err: &std::io::Error) -> Kind {
    let refused_file = err
        .get_ref()
        .is_some_and(|e| e.is::<NotRegular>() || e.is::<SizeMismatch>());
    if refused_file {
        return Kind::DamagedBackup;
    }
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Kind::NoSpace,
        _ => Kind::Failure,
    }
}

/// Turn an I/O error into a failure with the disk-oriented hint.
/// The error an artifact's repository made, carried through a reader's or
/// writer's `io::Error` (see [`io_error`]); any other error is given back.
pub fn carried(err: std::io::Error) -> std::result::Result<Error, std::io::Error> {
    if !err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Err(err);
    }
    let inner = err.into_inner().and_then(|e| e.downcast::<Error>().ok());
    Ok(*inner.expect("checked above"))
}

pub fn io_error(
    service: Option<Service>,
    step: &str,
    what: impl fmt::Display,
    err: std::io::Error,
) -> Error {
    // An upload's own error reaches the stores through their writers'
    // io::Error (a backup streamed into a repository): it is answered as it
    // was made, with its kind (unreachable, refused credentials …).
    let err = match carried(err) {
        Ok(mut error) => {
            error.service = error.service.or(service);
            return error;
        }
        Err(err) => err,
    };
    let mut error = Error::new(io_kind(&err), step, format!("{what}: {err}")).hint(io_hint(&err));
    error.service = service;
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_exit_code_clear_of_success_and_the_shell_codes() {
        let codes: Vec<i32> = Kind::ALL.iter().map(|k| k.exit_code()).collect();
        let mut distinct = codes.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), Kind::ALL.len(), "{codes:?}");
        assert!(codes.iter().all(|c| (1..126).contains(c)), "{codes:?}");
        assert_eq!(Kind::Failure.exit_code(), 1);
        assert_eq!(Kind::Usage.exit_code(), 2);
        assert_eq!(Error::usage("x").exit_code(), 2);
    }

    #[test]
    fn every_exit_code_is_documented() {
        let doc = include_str!("../docs/exit-codes.md");
        for kind in Kind::ALL {
            let row = format!("| {} | `{}` |", kind.exit_code(), kind.as_str());
            assert!(doc.contains(&row), "docs/exit-codes.md lacks the row {row}");
        }
    }

    #[test]
    fn the_long_help_lists_every_exit_code() {
        for kind in Kind::ALL {
            let line = format!("  {:<2} {}", kind.exit_code(), kind.as_str());
            assert!(
                crate::cli::EXIT_CODES.contains(&line),
                "--help lacks {line:?}"
            );
        }
    }

    #[test]
    fn io_errors_are_classified_where_they_are_made() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(io_error(None, "write", "x", full).kind, Kind::NoSpace);
        let quota = std::io::Error::from_raw_os_error(libc::EDQUOT);
        assert_eq!(io_error(None, "write", "x", quota).kind, Kind::NoSpace);
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(io_error(None, "write", "x", denied).kind, Kind::Failure);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        std::fs::write(&file, b"abc").unwrap();
        let short = crate::artifact::open_sized(&file, 4, false).unwrap_err();
        assert_eq!(io_error(None, "read", "a", short).kind, Kind::DamagedBackup);
    }
}
