//! Errors that tell an operator at 3 a.m. what failed, where, and what to do.
//!
//! Every failure the tool reports names the service (when there is one), the
//! step that failed and, where we can guess it, the likely fix. The exit code
//! follows from the kind: usage errors exit 2, everything else 1.

use std::fmt;

use crate::service::Service;

/// Whether the user asked for something impossible (exit 2) or the work failed (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Usage,
    Failure,
}

/// A failure with the context an operator needs to act on it.
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub service: Option<Service>,
    pub step: String,
    pub message: String,
    pub hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure during `step`, not tied to one service.
    pub fn failure(step: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Failure,
            service: None,
            step: step.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// The user's request cannot be carried out as given (exit status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Usage,
            service: None,
            step: "arguments".into(),
            message: message.into(),
            hint: None,
        }
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
        match self.kind {
            Kind::Usage => 2,
            Kind::Failure => 1,
        }
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
        self.map_err(|e| Error {
            kind: Kind::Failure,
            service,
            step: step.to_string(),
            message: e.to_string(),
            hint: None,
        })
    }
}

/// The usual advice when a local filesystem operation fails.
pub fn io_hint(err: &std::io::Error) -> &'static str {
    if err
        .get_ref()
        .is_some_and(|e| e.is::<crate::artifact::NotRegular>())
    {
        return "artifacts and manifests must be regular files inside the backup directory (not links, FIFOs or devices): put the real file back, or use another backup";
    }
    if err
        .get_ref()
        .is_some_and(|e| e.is::<crate::artifact::SizeMismatch>())
    {
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

/// Fail with the full-disk advice unless the filesystem holding `dir` has
/// `needed` bytes free for `what` (checked before work that would otherwise
/// fill the disk half-way).
pub fn require_free_space(
    service: Option<Service>,
    step: &str,
    dir: &std::path::Path,
    needed: u64,
    what: &str,
) -> Result<()> {
    let free =
        crate::artifact::free_bytes(dir).map_err(|e| io_error(service, step, dir.display(), e))?;
    if free >= needed {
        return Ok(());
    }
    Err(Error {
        kind: Kind::Failure,
        service,
        step: step.to_string(),
        message: format!(
            "{what} needs {} in {}, which has {} free",
            crate::report::size(needed),
            dir.display(),
            crate::report::size(free)
        ),
        hint: Some(
            "the disk is full: free space there, or use a bigger disk; nothing was changed".into(),
        ),
    })
}

/// Turn an I/O error into a failure with the disk-oriented hint.
pub fn io_error(
    service: Option<Service>,
    step: &str,
    what: impl fmt::Display,
    err: std::io::Error,
) -> Error {
    let hint = io_hint(&err);
    Error {
        kind: Kind::Failure,
        service,
        step: step.to_string(),
        message: format!("{what}: {err}"),
        hint: Some(hint.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_required_with_the_numbers_and_the_disk_advice() {
        let dir = tempfile::tempdir().unwrap();
        require_free_space(Some(Service::Postgres), "extract", dir.path(), 0, "nothing").unwrap();
        let err = require_free_space(
            Some(Service::Postgres),
            "extract",
            dir.path(),
            u64::MAX,
            "extracting the dumps",
        )
        .unwrap_err();
        assert!(
            err.message
                .starts_with("extracting the dumps needs 16777216.0 TiB in "),
            "{}",
            err.message
        );
        assert!(err.hint.unwrap().contains("the disk is full"));
        assert_eq!(err.service, Some(Service::Postgres));
    }
}
