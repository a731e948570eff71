//! Restoring some indices (`restore --indices PATTERNS`) and restoring one
//! under another name beside the live one (`--rename FROM=TO`), for every
//! method: from the snapshot of the repository and tarball methods, or by
//! loading only the selected indices' lines of a logical export.
//!
//! A snapshot restores index by index: the selected indices are replaced
//! (deleted, then restored with their aliases), every other index, the
//! templates and the pipelines stay as they are (`--globals` restores the
//! snapshot's global state too). A renamed index is restored from the
//! snapshot under its new name (OpenSearch's `rename_pattern`), without its
//! aliases — they would point at the live index and the copy at once, and a
//! write alias would then refuse writes —; the live FROM is never touched.
//! Everything a selection needs is checked before anything changes: the
//! method restores parts, every pattern matches an index of the backup,
//! every FROM is one, every TO is a valid name no index has.
//!
//! A logical export loads the selected indices' definitions and documents
//! (`logical::Pick`); its templates and pipelines come with `--globals`.

use std::collections::BTreeMap;

use serde_json::json;

use super::logical::Pick;
use super::{OpenSearch, SVC};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::RestoreSelection;

/// What a selection restores: indices under their own names, and renamed ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct IndexParts {
    pub plain: Vec<String>,
    /// (FROM in the snapshot, TO in the cluster).
    pub renamed: Vec<(String, String)>,
}

/// `*` matches any run of characters; everything else itself.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| matches(rest, &tail[i..]))
        }
    }
}

/// The indices of the backup (those it counted) that `selection` restores,
/// or a usage error naming the pattern or name the backup does not hold.
pub(super) fn parts(record: &ArtifactRecord, selection: &RestoreSelection) -> Result<IndexParts> {
    let held: Vec<&String> = record.counts.keys().collect();
    let holds = |what: &str| {
        Error::usage(format!(
            "the backup holds no index {what} (it holds: {})",
            held.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    let mut parts = IndexParts::default();
    if selection.is_everything() {
        // --switch alone: every index of the backup.
        parts.plain = held.iter().map(|h| h.to_string()).collect();
        return Ok(parts);
    }
    for (from, to) in &selection.renames {
        if !held.contains(&from) {
            return Err(holds(&format!("named '{from}'")));
        }
        parts.renamed.push((from.clone(), to.clone()));
    }
    for pattern in selection.only.iter().flatten() {
        let found: Vec<&String> = held
            .iter()
            .copied()
            .filter(|h| matches(pattern, h))
            .collect();
        if found.is_empty() {
            return Err(holds(&format!("matching '{pattern}'")));
        }
        for name in found {
            let renamed = parts.renamed.iter().any(|(from, _)| from == name);
            if !renamed && !parts.plain.contains(name) {
                parts.plain.push(name.clone());
            }
        }
    }
    Ok(parts)
}

/// The counts a restore of `selection` must find, under the restored names.
pub(super) fn expected_counts(
    record: &ArtifactRecord,
    selection: &RestoreSelection,
) -> BTreeMap<String, u64> {
    let Ok(parts) = parts(record, selection) else {
        return record.counts.clone();
    };
    let count = |name: &str| record.counts.get(name).copied().unwrap_or(0);
    parts
        .plain
        .iter()
        .map(|name| (name.clone(), count(name)))
        .chain(
            parts
                .renamed
                .iter()
                .map(|(from, to)| (to.clone(), count(from))),
        )
        .collect()
}

/// The steps of a selection's restore, for `--dry-run`.
pub(super) fn plan(record: &ArtifactRecord, selection: &RestoreSelection) -> Vec<String> {
    let parts = match parts(record, selection) {
        Ok(parts) => parts,
        Err(e) => return vec![format!("refused before anything changes: {}", e.message)],
    };
    let mut plan = Vec::new();
    if selection.switch && !parts.plain.is_empty() {
        plan.push(format!(
            "restore each of {} from the backup beside the live one (itbackup-new-<hash>), compare its document count with the manifest; on any difference delete the copies, the live indices untouched",
            parts.plain.join(", ")
        ));
        plan.push(format!(
            "switch, one index after the other: block writes on the live index, clone it to itbackup-old-<hash>, delete it, clone the copy to its name with its aliases; on any failure clone every switched index back; then {}",
            if selection.keep_old { "keep each old index as <name>-before-<YYYYmmddHHMMSS>" } else { "delete the old copies" }
        ));
        if selection.includes_globals() {
            plan.push("restore the backup's templates and pipelines (global state)".into());
        }
    } else if !parts.plain.is_empty() {
        plan.push(format!(
            "DELETE each selected index, then restore it from the backup with its aliases{}: {}",
            if selection.globals {
                " and the snapshot's templates and pipelines"
            } else {
                "; templates, pipelines and every other index untouched"
            },
            parts.plain.join(", ")
        ));
    }
    for (from, to) in &parts.renamed {
        plan.push(format!(
            "restore {from} from the backup as the new index {to}, without aliases; the live {from} untouched"
        ));
    }
    plan.push("wait until every restored index is at least yellow".into());
    plan
}

/// OpenSearch's rules for a new index name.
fn valid_index_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.starts_with(['-', '_', '+', '.'])
        && name == name.to_lowercase()
        && !name.contains([
            '\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':', '$',
        ])
}

impl OpenSearch {
    /// Before anything changes: the method restores parts, the names are
    /// the backup's, every new name is free.
    pub(super) async fn check_parts(
        &self,
        record: &ArtifactRecord,
        selection: &RestoreSelection,
    ) -> Result<()> {
        if selection.is_everything() && !selection.switch {
            return Ok(());
        }
        let parts = parts(record, selection)?;
        let mut targets: Vec<&str> = Vec::new();
        for (from, to) in &parts.renamed {
            if !valid_index_name(to) {
                return Err(Error::usage(format!(
                    "--rename {from}={to}: '{to}' is not a valid index name (lower case, not starting with - _ + or ., none of \\ / * ? \" < > | , # : $ or a space)"
                )));
            }
            if to == from || targets.contains(&to.as_str()) || parts.plain.contains(to) {
                return Err(Error::usage(format!(
                    "--rename {from}={to}: {to} is also restored by this run; choose a name nothing else uses"
                )));
            }
            match self.http.get(to, "check the selection").await {
                Err(e) if e.http_status == Some(404) => {}
                Err(e) => return Err(e),
                Ok(_) => {
                    return Err(Error::usage(format!(
                        "--rename {from}={to}: the index (or alias) {to} exists; a restore beside the live data never replaces one"
                    ))
                    .service(SVC)
                    .hint(format!("choose another name, or delete {to} first if it is a leftover")))
                }
            }
            targets.push(to);
        }
        Ok(())
    }

    /// Load a logical export, or the part of it `selection` names: the
    /// selected indices replaced (created anew), the renamed ones under
    /// their new names, and with `--switch` each selected one loaded as its
    /// copy and switched in once every line is loaded.
    pub(super) async fn restore_logical_selection(
        &self,
        artifact: &crate::artifact::ArtifactSource,
        record: &ArtifactRecord,
        selection: &RestoreSelection,
    ) -> Result<()> {
        if selection.is_everything() && !selection.switch {
            return self.restore_logical(artifact, None).await;
        }
        let parts = parts(record, selection)?;
        let mut names = BTreeMap::new();
        for index in &parts.plain {
            let to = if selection.switch {
                super::switch::copy_name(index)
            } else {
                index.clone()
            };
            names.insert(index.clone(), to);
        }
        for (from, to) in &parts.renamed {
            names.insert(from.clone(), to.clone());
        }
        let pick = Pick::new(names, selection.includes_globals());
        if !selection.switch {
            return self.restore_logical(artifact, Some(pick)).await;
        }
        let copies: Vec<String> = parts
            .plain
            .iter()
            .map(|i| super::switch::copy_name(i))
            .collect();
        if let Err(e) = self.restore_logical(artifact, Some(pick)).await {
            self.delete_all(&copies).await;
            return Err(e);
        }
        self.switch_copies(record, &parts.plain, selection.keep_old)
            .await
    }

    /// Restore the selected indices from `repo`/`snapshot`: the plain ones
    /// replaced with their aliases (and the global state with `--globals`),
    /// each renamed one under its new name, without aliases.
    pub(super) async fn restore_parts(
        &self,
        repo: &str,
        snapshot: &str,
        record: &ArtifactRecord,
        selection: &RestoreSelection,
    ) -> Result<()> {
        let step = "restore snapshot";
        let parts = parts(record, selection)?;
        let restore = |body: serde_json::Value| async move {
            self.http
                .call(
                    reqwest::Method::POST,
                    &format!("_snapshot/{repo}/{snapshot}/_restore"),
                    Some(&body),
                    step,
                )
                .await
        };
        let mut restored = Vec::new();
        if selection.switch {
            if !parts.plain.is_empty() {
                self.restore_switching(repo, snapshot, record, &parts.plain, selection.keep_old)
                    .await?;
            }
            if selection.includes_globals() {
                restore(json!({"indices": "-*", "include_global_state": true})).await?;
            }
        } else if !parts.plain.is_empty() || selection.globals {
            self.delete_replaced(&[], &parts.plain, &[]).await?;
            restore(json!({
                "indices": if parts.plain.is_empty() { "-*".to_string() } else { parts.plain.join(",") },
                "include_global_state": selection.globals,
                "include_aliases": true,
            }))
            .await?;
            restored.extend(parts.plain.iter().cloned());
        }
        for (from, to) in &parts.renamed {
            // \Q…\E: the name taken literally (index names hold no backslash).
            restore(json!({
                "indices": from,
                "include_global_state": false,
                "include_aliases": false,
                "rename_pattern": format!("\\Q{from}\\E"),
                "rename_replacement": to,
            }))
            .await?;
            tracing::info!(service = %SVC, index = %from, as_name = %to, "restoring the index beside the live one");
            restored.push(to.clone());
        }
        if restored.is_empty() {
            return Ok(());
        }
        self.wait_healthy(&restored, step).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(indices: &[&str]) -> ArtifactRecord {
        let mut record = ArtifactRecord::begun("2.19.6".into(), "2026-01-01T00:00:00Z".into());
        record.counts = indices.iter().map(|i| (i.to_string(), 7)).collect();
        record
    }

    #[test]
    fn patterns_select_and_renames_take_their_index_out_of_the_plain_ones() {
        let record = record(&["logs-1", "logs-2", "users", "users-old"]);
        let selection = RestoreSelection {
            only: Some(vec!["logs-*".into(), "users*".into()]),
            renames: vec![("users".into(), "users-copy".into())],
            ..Default::default()
        };
        let parts = parts(&record, &selection).unwrap();
        assert_eq!(parts.plain, ["logs-1", "logs-2", "users-old"]);
        assert_eq!(parts.renamed, [("users".into(), "users-copy".into())]);
        let counts = expected_counts(&record, &selection);
        assert_eq!(
            counts.keys().collect::<Vec<_>>(),
            ["logs-1", "logs-2", "users-copy", "users-old"]
        );
        assert!(matches("*", "x") && matches("a*c", "abbc") && !matches("a*c", "abcd"));
    }

    #[test]
    fn names_the_backup_does_not_hold_are_usage_errors() {
        let record = record(&["a"]);
        for selection in [
            RestoreSelection {
                only: Some(vec!["b*".into()]),
                ..Default::default()
            },
            RestoreSelection {
                renames: vec![("b".into(), "c".into())],
                ..Default::default()
            },
        ] {
            let err = parts(&record, &selection).unwrap_err();
            assert!(err.message.contains("(it holds: a)"), "{}", err.message);
        }
        assert!(valid_index_name("a-copy") && !valid_index_name("A") && !valid_index_name("_x"));
    }
}
