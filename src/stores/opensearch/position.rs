//! Where in each index's history a backup stands (the manifest's
//! `position`): the primaries' `max_seq_no` and `global_checkpoint` from
//! `GET <indices>/_stats/docs?level=shards`, read right before the snapshot
//! starts or the point-in-time opens. See `docs/consistency.md`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::consistency::{IndexSeqNo, OpenSearchPosition, Position, ShardSeqNo, MAX_SHARDS_LISTED};

use super::OpenSearch;

/// Index names per stats request: a request line stays well below
/// OpenSearch's limit (`http.max_initial_line_length`, 4 KiB).
const NAMES_PER_REQUEST_BYTES: usize = 2_000;

impl OpenSearch {
    /// The primaries' sequence numbers of `indices` now; None (with a
    /// warning) when the cluster does not answer them: the position is a
    /// record, never a reason to fail a backup that has its data.
    pub(super) async fn seq_nos(&self, indices: &[String]) -> Option<OpenSearchPosition> {
        let mut position = OpenSearchPosition {
            indices: BTreeMap::new(),
        };
        for group in name_groups(indices) {
            let path = format!(
                "{}/_stats/docs?level=shards&filter_path=indices.*.shards",
                group.join(",")
            );
            match self.http.get(&path, "read sequence numbers").await {
                Ok(answer) => position.indices.extend(parse_shard_stats(&answer)),
                Err(e) => {
                    tracing::warn!(error = %e, "opensearch: no sequence numbers in the position");
                    return None;
                }
            }
        }
        Some(position)
    }

    /// `position` at `at` with the sequence numbers read before it (if any).
    pub(super) fn position_at(
        basis: &str,
        at: Option<jiff::Timestamp>,
        seq_nos: Option<OpenSearchPosition>,
    ) -> Position {
        let mut position = Position::point(basis, at.unwrap_or_else(jiff::Timestamp::now));
        position.opensearch = seq_nos;
        position
    }
}

/// The logical export's position after one more index, whose point in
/// time opened at `at`: one index is a point, several the span from the
/// first index's point in time to the last's; the sequence numbers gathered.
pub(super) fn widen_position(
    position: &mut Option<Position>,
    at: jiff::Timestamp,
    seq_nos: Option<OpenSearchPosition>,
) {
    let (from, until, mut indices) = match position.take() {
        None => (at, at, BTreeMap::new()),
        Some(p) => {
            let (from, until) = p.bounds().unwrap_or((at, at));
            let indices = p.opensearch.map(|o| o.indices).unwrap_or_default();
            (from.min(at), until.max(at), indices)
        }
    };
    indices.extend(seq_nos.into_iter().flat_map(|s| s.indices));
    let mut widened = Position::span("pit_created", from, until);
    widened.opensearch = Some(OpenSearchPosition { indices });
    *position = Some(widened);
}

/// Comma-joined groups of names, each short enough for one request line.
fn name_groups(indices: &[String]) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut length = usize::MAX;
    for name in indices {
        if length.saturating_add(name.len() + 1) > NAMES_PER_REQUEST_BYTES {
            groups.push(Vec::new());
            length = 0;
        }
        length += name.len() + 1;
        groups.last_mut().expect("pushed above").push(name.clone());
    }
    groups
}

/// The primaries of each index in a `_stats?level=shards` answer: per
/// index the highest `max_seq_no` and the lowest `global_checkpoint`, and
/// every primary listed while there are at most `MAX_SHARDS_LISTED`.
pub(super) fn parse_shard_stats(answer: &Value) -> BTreeMap<String, IndexSeqNo> {
    let mut out = BTreeMap::new();
    let Some(indices) = answer["indices"].as_object() else {
        return out;
    };
    for (index, stats) in indices {
        let mut shards = Vec::new();
        for (number, copies) in stats["shards"].as_object().into_iter().flatten() {
            let primary = copies
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["routing"]["primary"].as_bool() == Some(true));
            let (Some(copy), Ok(shard)) = (primary, number.parse::<u32>()) else {
                continue;
            };
            shards.push(ShardSeqNo {
                shard,
                max_seq_no: copy["seq_no"]["max_seq_no"].as_i64().unwrap_or(-1),
                global_checkpoint: copy["seq_no"]["global_checkpoint"].as_i64().unwrap_or(-1),
            });
        }
        if shards.is_empty() {
            continue;
        }
        shards.sort_by_key(|s| s.shard);
        let entry = IndexSeqNo {
            primaries: shards.len() as u32,
            max_seq_no: shards.iter().map(|s| s.max_seq_no).max().unwrap_or(-1),
            global_checkpoint: shards
                .iter()
                .map(|s| s.global_checkpoint)
                .min()
                .unwrap_or(-1),
            shards: if shards.len() <= MAX_SHARDS_LISTED {
                shards
            } else {
                Vec::new()
            },
        };
        out.insert(index.clone(), entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn primaries_only_max_and_min_over_shards() {
        let answer = json!({"indices": {"logs": {"shards": {
            "0": [{"routing": {"primary": true}, "seq_no": {"max_seq_no": 9, "global_checkpoint": 9}},
                  {"routing": {"primary": false}, "seq_no": {"max_seq_no": 99, "global_checkpoint": 0}}],
            "1": [{"routing": {"primary": true}, "seq_no": {"max_seq_no": 4, "global_checkpoint": 3}}]
        }}}});
        let parsed = parse_shard_stats(&answer);
        let logs = &parsed["logs"];
        assert_eq!(
            (logs.primaries, logs.max_seq_no, logs.global_checkpoint),
            (2, 9, 3)
        );
        assert_eq!(logs.shards.len(), 2);
        assert_eq!(logs.shards[1].max_seq_no, 4);
    }

    #[test]
    fn the_export_spans_its_indices_points_in_time() {
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let mut position = None;
        widen_position(&mut position, at("2025-01-01T00:00:02Z"), None);
        assert_eq!(
            position.as_ref().unwrap().taken_at.as_deref(),
            Some("2025-01-01T00:00:02Z")
        );
        widen_position(&mut position, at("2025-01-01T00:00:05Z"), None);
        let p = position.unwrap();
        assert_eq!(p.from.as_deref(), Some("2025-01-01T00:00:02Z"));
        assert_eq!(p.until.as_deref(), Some("2025-01-01T00:00:05Z"));
    }

    #[test]
    fn names_are_grouped_under_the_request_line_limit() {
        let names: Vec<String> = (0..300).map(|i| format!("index-{i:04}")).collect();
        let groups = name_groups(&names);
        assert!(groups.len() > 1);
        assert!(groups
            .iter()
            .all(|g| g.join(",").len() <= NAMES_PER_REQUEST_BYTES));
        assert_eq!(groups.concat(), names);
        assert!(name_groups(&[]).is_empty());
    }
}
