//! The places prune works on: a local root of backup directories (with the
//! debris of interrupted runs) and a remote repository.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use jiff::Timestamp;

use super::*;

/// Every entry of `repository`, in no particular order.
pub(super) async fn items(repository: &Repository) -> Result<Vec<Item>> {
    match repository {
        Repository::Local(root) => local_items(root),
        Repository::Remote(remote) => Ok(remote_items(remote.backups().await?)),
    }
}

/// The entries of a local root: backup directories, the debris of
/// interrupted runs (hidden directories with our prefixes) and strangers.
fn local_items(root: &Path) -> Result<Vec<Item>> {
    let step = "list backups";
    let read = match fs::read_dir(root) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(None, step, root.display(), e)),
    };
    let mut items = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| io_error(None, step, root.display(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        // symlink_metadata: a link is judged as a link, never by what it points at.
        let meta =
            fs::symlink_metadata(&path).map_err(|e| io_error(None, step, path.display(), e))?;
        if catalog::is_reserved(&name) {
            continue;
        }
        if name.starts_with('.') {
            let ours = name.starts_with(RESTORE_SCRATCH_PREFIX)
                || name.starts_with(catalog::REMOVING_PREFIX)
                || name.starts_with(crate::remote::STAGING_PREFIX);
            if ours && meta.is_dir() {
                items.push(describe_dir(&path, name, ItemKind::Incomplete));
            }
            continue;
        }
        if meta.file_type().is_symlink() {
            items.push(Item {
                name,
                kind: ItemKind::Foreign {
                    problem: "a symbolic link; itbackup never writes one".into(),
                },
                modified: timestamp_of(meta.modified().ok()),
                bytes: 0,
                manifest: None,
            });
            continue;
        }
        if !meta.is_dir() {
            continue;
        }
        let kind = classify(&path);
        let mut item = describe_dir(&path, name, kind);
        if matches!(item.kind, ItemKind::Complete { .. }) {
            item.manifest = Manifest::read_dir(&path).ok();
        }
        items.push(item);
    }
    Ok(items)
}

/// The entries of a repository, one "directory" per backup.
///
/// Object stores have no locks: a backup being uploaded right now has no
/// manifest yet and counts as incomplete, which the grace period protects.
fn remote_items(backups: Vec<BackupEntry>) -> Vec<Item> {
    backups
        .into_iter()
        .map(|b| {
            let kind = if !b.files.keys().all(|f| written_by_itbackup(f)) {
                ItemKind::Foreign {
                    problem: "holds objects itbackup does not write".into(),
                }
            } else {
                match (&b.manifest, b.has_manifest) {
                    (Some(manifest), _) => match manifest.started_at.parse::<Timestamp>() {
                        Ok(time) => ItemKind::Complete { time },
                        Err(e) => ItemKind::Damaged {
                            problem: format!("started_at is not a time: {e}"),
                        },
                    },
                    (None, true) => ItemKind::Damaged {
                        problem: b.problem.clone().unwrap_or_default(),
                    },
                    (None, false) => ItemKind::Incomplete,
                }
            };
            Item {
                modified: b
                    .modified
                    .as_deref()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(Timestamp::UNIX_EPOCH),
                manifest: b.manifest.clone(),
                name: b.name,
                kind,
                bytes: b.bytes,
            }
        })
        .collect()
}

/// Complete, damaged, incomplete or foreign: decided by the manifest and the file names.
fn classify(dir: &Path) -> ItemKind {
    let manifest_path = dir.join(MANIFEST_FILE);
    if fs::symlink_metadata(&manifest_path).is_ok() {
        return match Manifest::read_dir(dir) {
            Ok(manifest) => match manifest.started_at.parse::<Timestamp>() {
                Ok(time) => ItemKind::Complete { time },
                Err(e) => ItemKind::Damaged {
                    problem: format!("started_at '{}' is not a time: {e}", manifest.started_at),
                },
            },
            Err(err) => ItemKind::Damaged {
                problem: err.message,
            },
        };
    }
    let names = match fs::read_dir(dir) {
        Ok(read) => read
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        Err(e) => {
            return ItemKind::Foreign {
                problem: format!("cannot be read: {e}"),
            }
        }
    };
    match names.iter().find(|name| !written_by_itbackup(name)) {
        Some(stranger) => ItemKind::Foreign {
            problem: format!("holds '{stranger}', which itbackup does not write"),
        },
        None => ItemKind::Incomplete,
    }
}

/// Names a backup run creates inside a backup directory: `<service>_…`
/// artifacts, their `.<service>_….work` scratch directories, `*.partial`, the
/// manifest and the drills' validation files.
fn written_by_itbackup(name: &str) -> bool {
    let bare = name.strip_prefix('.').unwrap_or(name);
    name.ends_with(PARTIAL_SUFFIX)
        || name == MANIFEST_FILE
        || name == VALIDATION_FILE
        || name == crate::drill::sandbox::DRILL_VALIDATION_FILE
        || Service::ALL
            .iter()
            .any(|service| bare.starts_with(&format!("{}_", service.as_str())))
}

fn describe_dir(dir: &Path, name: String, kind: ItemKind) -> Item {
    let mut newest = fs::symlink_metadata(dir).and_then(|m| m.modified()).ok();
    let mut bytes = 0;
    if let Ok(read) = fs::read_dir(dir) {
        for meta in read.filter_map(|e| e.ok()?.metadata().ok()) {
            if meta.is_file() {
                bytes += meta.len();
            }
            if let Ok(modified) = meta.modified() {
                newest = Some(newest.map_or(modified, |n| n.max(modified)));
            }
        }
    }
    Item {
        name,
        kind,
        modified: timestamp_of(newest),
        bytes,
        manifest: None,
    }
}

fn timestamp_of(time: Option<SystemTime>) -> Timestamp {
    time.and_then(|t| Timestamp::try_from(t).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}
