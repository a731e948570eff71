//! Before a logical restore changes anything: no document may need a `_bulk`
//! request larger than the cluster accepts.

use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::RestoreContext;

use super::check::check_logical;
use crate::stores::opensearch::{OpenSearch, SVC};

/// OpenSearch's default `http.max_content_length`, when the node says none.
const DEFAULT_MAX_CONTENT_LENGTH: u64 = 100 << 20;

impl OpenSearch {
    /// The largest request body the node we talk to accepts
    /// (`http.max_content_length`, a static node setting; 100mb by default).
    pub(super) async fn max_content_length(&self) -> Result<u64> {
        let step = "read http.max_content_length";
        let key = "http.max_content_length";
        let node = self
            .http
            .get("_nodes/_local/settings?flat_settings=true", step)
            .await?;
        let set = node["nodes"]
            .as_object()
            .and_then(|n| n.values().next())
            .and_then(|n| n["settings"][key].as_str().map(String::from));
        let value = match set {
            Some(value) => Some(value),
            None => {
                let cluster = self
                    .http
                    .get(
                        "_cluster/settings?include_defaults=true&flat_settings=true",
                        step,
                    )
                    .await?;
                ["transient", "persistent", "defaults"]
                    .iter()
                    .find_map(|scope| cluster[scope][key].as_str().map(String::from))
            }
        };
        Ok(value
            .and_then(|v| parse_byte_size(&v))
            .unwrap_or(DEFAULT_MAX_CONTENT_LENGTH))
    }

    /// Refuse, before anything is changed, an export with a document the
    /// cluster could not take: its `_bulk` entry alone would be a request
    /// larger than `http.max_content_length` (HTTP 413, after the index had
    /// been deleted).
    pub(crate) async fn check_load_limits(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let known = self
            .needs
            .lock()
            .ok()
            .and_then(|needs| needs.get(&ctx.artifact.to_string()).cloned());
        let needs = match known {
            Some(needs) => needs,
            None => {
                let (path, record) = (ctx.artifact.clone(), record.clone());
                crate::stores::blocking(SVC, move || check_logical(&path, &record)).await?
            }
        };
        let limit = self.max_content_length().await?;
        if needs.largest_entry <= limit {
            return Ok(());
        }
        Err(Error::refused(
            "check load limits",
            format!(
                "line {} of {}: document \"{}\" of index {} makes a _bulk request of {} ({} bytes), more than this cluster's http.max_content_length of {} ({limit} bytes)",
                needs.line,
                record.file,
                needs.id,
                needs.index,
                crate::human::size(needs.largest_entry),
                needs.largest_entry,
                crate::human::size(limit),
            ),
        )
        .service(SVC)
        .hint(format!(
            "raise http.max_content_length in opensearch.yml of the node at {} above {} bytes (a static setting: restart the node), or restore into a cluster that accepts it; nothing was changed",
            self.settings.url, needs.largest_entry
        )))
    }
}

/// An OpenSearch byte size (`100mb`, `104857600b`, `1.5gb`, `512KB`).
fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: f64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        "p" | "pb" => 1 << 50,
        _ => return None,
    };
    Some((number * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_read_as_opensearch_writes_them() {
        assert_eq!(parse_byte_size("100mb"), Some(100 << 20));
        assert_eq!(parse_byte_size("104857600b"), Some(104_857_600));
        assert_eq!(parse_byte_size("1.5GB"), Some(3 << 29));
        assert_eq!(parse_byte_size("512kb"), Some(512 << 10));
        assert_eq!(parse_byte_size("lots"), None);
    }
}
