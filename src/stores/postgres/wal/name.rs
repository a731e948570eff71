//! The names PostgreSQL gives the files it archives, and nothing else: a
//! name becomes a file name in the archive, so one that is not a WAL file
//! name (a path, `..`, an empty string) is refused before anything is read
//! or written.

use crate::error::{Error, Result};

/// What kind of file PostgreSQL archives under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKind {
    /// A WAL segment: 24 hex digits (timeline, log, segment).
    Segment,
    /// The last, incomplete segment of a timeline a promotion left
    /// (`<segment>.partial`).
    Partial,
    /// A timeline history file (`00000002.history`).
    History,
    /// A backup label (`<segment>.<offset>.backup`), written at the end of a base backup.
    BackupLabel,
}

impl WalKind {
    /// The kind's name in `wal push --json` (`segment`, `partial`, `history`, `backup_label`).
    pub fn as_str(self) -> &'static str {
        match self {
            WalKind::Segment => "segment",
            WalKind::Partial => "partial",
            WalKind::History => "history",
            WalKind::BackupLabel => "backup_label",
        }
    }
}

/// A validated name of a file PostgreSQL archives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    name: String,
    kind: WalKind,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl WalName {
    /// Parse the name PostgreSQL gives (`%f`, or the last component of `%p`).
    pub fn parse(name: &str) -> Result<WalName> {
        let kind = match name.split('.').collect::<Vec<_>>()[..] {
            [segment] if is_hex(segment, 24) => Some(WalKind::Segment),
            [segment, "partial"] if is_hex(segment, 24) => Some(WalKind::Partial),
            [timeline, "history"] if is_hex(timeline, 8) => Some(WalKind::History),
            [segment, offset, "backup"] if is_hex(segment, 24) && is_hex(offset, 8) => {
                Some(WalKind::BackupLabel)
            }
            _ => None,
        };
        match kind {
            Some(kind) => Ok(WalName {
                name: name.to_string(),
                kind,
            }),
            None => Err(Error::usage(format!(
                "'{name}' is not the name of a file PostgreSQL archives (a WAL segment such as 000000010000000000000001, 00000002.history, a .backup label or a .partial segment)"
            ))
            .hint("give archive_command '… wal push --root DIR %p' and restore_command '… wal fetch --root DIR %f %p'")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> WalKind {
        self.kind
    }
}

impl std::fmt::Display for WalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_postgres_archives_is_accepted() {
        let kinds = [
            ("000000010000000000000001", WalKind::Segment),
            ("00000002000000A1000000FF", WalKind::Segment),
            ("000000010000000000000003.partial", WalKind::Partial),
            ("00000002.history", WalKind::History),
            (
                "000000010000000000000002.00000028.backup",
                WalKind::BackupLabel,
            ),
        ];
        for (name, kind) in kinds {
            let parsed = WalName::parse(name).unwrap();
            assert_eq!(parsed.kind(), kind, "{name}");
            assert_eq!(parsed.as_str(), name);
        }
    }

    #[test]
    fn anything_else_is_refused_before_it_becomes_a_file_name() {
        for name in [
            "",
            "..",
            "../000000010000000000000001",
            "00000001000000000000001",
            "0000000100000000000000011",
            "00000001000000000000000G",
            "000000010000000000000001.zst",
            "00000002.history.partial",
            "0000002.history",
            "000000010000000000000002.0000028.backup",
            "RECOVERYXLOG",
        ] {
            let err = WalName::parse(name).unwrap_err();
            assert_eq!(err.kind, crate::error::Kind::Usage, "{name}");
        }
    }
}
