//! OpenSearch end to end against the real server, both methods: back up,
//! delete everything, restore, and compare mappings, settings, aliases,
//! templates, pipelines, counts and a digest of every document.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub(crate) struct Os {
    pub(crate) url: String,
    http: reqwest::blocking::Client,
    /// Replicas of the fixture's main index (`itb-a`): none on the single
    /// node, one on the cluster.
    replicas: u32,
}

impl Os {
    /// The stack's single node.
    pub(crate) fn new() -> Os {
        Os::at(&required_env("OPENSEARCH_URL"), 0)
    }

    /// The cluster at `url`, the fixture's main index with `replicas`.
    pub(crate) fn at(url: &str, replicas: u32) -> Os {
        Os {
            url: url.to_string(),
            http: reqwest::blocking::Client::new(),
            replicas,
        }
    }

    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}/{}", self.url, path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("OpenSearch at {} is not answering: {e}", self.url));
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    pub(crate) fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }

    pub(crate) fn get(&self, path: &str) -> Value {
        self.ok(reqwest::Method::GET, path, None)
    }

    pub(crate) fn put(&self, path: &str, body: Value) -> Value {
        self.ok(reqwest::Method::PUT, path, Some(body))
    }

    pub(crate) fn delete(&self, path: &str) {
        self.call(reqwest::Method::DELETE, path, None);
    }

    /// The snapshots in `repo` named like itbackup's, sorted.
    pub(crate) fn itbackup_snapshots(&self, repo: &str) -> Vec<String> {
        let mut names: Vec<String> = self.get(&format!("_snapshot/{repo}/_all"))["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["snapshot"].as_str())
            .filter(|s| s.starts_with("itbackup-"))
            .map(String::from)
            .collect();
        names.sort();
        names
    }

    /// Register the `fs` repository `name` at `location` (under the
    /// cluster's path.repo) with `settings` beside it, holding no snapshot:
    /// what an earlier run left (registration and files) goes first.
    pub(crate) fn fresh_repository(&self, name: &str, location: &Path, settings: Value) {
        self.delete(&format!("_snapshot/{name}"));
        if location.exists() {
            fs::remove_dir_all(location).unwrap();
        }
        self.register_repository(name, location, settings);
    }

    /// Register (or re-register with new settings) the `fs` repository `name` at `location`.
    pub(crate) fn register_repository(&self, name: &str, location: &Path, settings: Value) {
        let mut all = json!({"location": location});
        all.as_object_mut()
            .unwrap()
            .extend(settings.as_object().unwrap().clone());
        self.put(
            &format!("_snapshot/{name}"),
            json!({"type": "fs", "settings": all}),
        );
    }

    /// `docs` documents of about 200 bytes into `index`, 3,000 a request.
    pub(crate) fn fill(&self, index: &str, docs: u64) {
        let filler = "x".repeat(200);
        let ids: Vec<u64> = (0..docs).collect();
        for batch in ids.chunks(3000) {
            let lines: Vec<Value> = batch
                .iter()
                .flat_map(|id| {
                    [
                        json!({"index": {"_index": index, "_id": id.to_string()}}),
                        json!({"n": id, "text": format!("{id} {filler}")}),
                    ]
                })
                .collect();
            self.bulk(&lines);
        }
    }

    pub(crate) fn bulk(&self, lines: &[Value]) {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let resp: Value = self
            .http
            .post(format!("{}/_bulk?refresh=true", self.url))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(resp["errors"], false, "bulk failed: {resp}");
    }

    /// Every document of `index` with id and routing, as a digest.
    pub(crate) fn digest(&self, index: &str) -> (u64, String) {
        let mut docs: Vec<String> = Vec::new();
        let mut page = self.ok(
            reqwest::Method::POST,
            &format!("{index}/_search?scroll=1m"),
            Some(json!({"size": 1000, "sort": ["_doc"]})),
        );
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            for hit in hits {
                docs.push(format!(
                    "{}|{}|{}",
                    hit["_id"], hit["_routing"], hit["_source"]
                ));
            }
            let id = page["_scroll_id"].as_str().unwrap().to_string();
            page = self.ok(
                reqwest::Method::POST,
                "_search/scroll",
                Some(json!({"scroll": "1m", "scroll_id": id})),
            );
        }
        docs.sort();
        let mut hasher = Sha256::new();
        for d in &docs {
            hasher.update(d.as_bytes());
            hasher.update(b"\n");
        }
        (docs.len() as u64, hex::encode(hasher.finalize()))
    }

    pub(crate) fn wipe_fixture(&self) {
        self.delete("itb-*");
        self.delete("_index_template/itb-tpl");
        self.delete("_component_template/itb-comp");
        self.delete("_ingest/pipeline/itb-pipe");
    }

    pub(crate) fn create_fixture(&self) {
        self.wipe_fixture();
        self.put(
            "_component_template/itb-comp",
            json!({"template": {"mappings": {"properties": {"common": {"type": "keyword"}}}}}),
        );
        self.put(
            "_index_template/itb-tpl",
            json!({"index_patterns": ["itb-tpl-*"], "composed_of": ["itb-comp"], "priority": 50,
                   "template": {"settings": {"number_of_shards": 1}, "mappings": {"properties": {"t": {"type": "integer"}}}}}),
        );
        // A pipeline that would change documents again if the restore re-ran it.
        self.put(
            "_ingest/pipeline/itb-pipe",
            json!({"description": "tags documents", "processors": [{"append": {"field": "tags", "value": ["piped"]}}]}),
        );
        self.put(
            "itb-a",
            json!({
                "settings": {
                    "number_of_shards": 2, "number_of_replicas": self.replicas, "refresh_interval": "2s",
                    "default_pipeline": "itb-pipe",
                    "analysis": {"analyzer": {"folded": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase", "asciifolding"]}}}
                },
                "mappings": {"properties": {
                    "title": {"type": "text", "analyzer": "folded"},
                    "code": {"type": "keyword"},
                    "when": {"type": "date"},
                    "where": {"type": "geo_point"},
                    "parts": {"type": "nested", "properties": {"name": {"type": "keyword"}, "qty": {"type": "integer"}}},
                    "metrics": {"type": "object", "dynamic": true},
                    "tags": {"type": "keyword"}
                }}
            }),
        );
        self.put("itb-b", json!({"settings": {"number_of_shards": 1}, "aliases": {"itb-alias": {"filter": {"term": {"kind": "keep"}}, "is_write_index": true}}}));
        self.put("itb-tpl-1", json!({}));

        let mut lines = Vec::new();
        for i in 0..12_000u64 {
            let id = match i % 5 {
                0 => format!("doc/{i} with spaces?&é#%"),
                1 => format!("{i}\"quoted\""),
                _ => format!("d{i}"),
            };
            let mut action = json!({"index": {"_index": "itb-a", "_id": id}});
            if i % 7 == 0 {
                action["index"]["routing"] = json!(format!("r{}", i % 3));
            }
            let metrics: serde_json::Map<String, Value> = (0..20)
                .map(|m| (format!("m{m}"), json!((i * m) as f64 / 7.0)))
                .collect();
            lines.push(action);
            lines.push(json!({
                "title": format!("Ünïcode Title {i}"), "code": format!("C-{}", i % 97),
                "when": format!("2024-01-{:02}T10:00:00Z", 1 + i % 28), "where": {"lat": (i % 90) as f64 / 2.0, "lon": (i % 180) as f64 / 3.0},
                "parts": [{"name": "a", "qty": i}, {"name": "b", "qty": i + 1}], "metrics": metrics
            }));
            if lines.len() >= 4000 {
                self.bulk(&lines);
                lines.clear();
            }
        }
        for i in 0..500 {
            lines.push(json!({"index": {"_index": "itb-b", "_id": format!("b{i}")}}));
            lines.push(json!({"kind": if i % 2 == 0 { "keep" } else { "other" }, "n": i}));
        }
        for i in 0..20 {
            lines.push(json!({"index": {"_index": "itb-tpl-1", "_id": i.to_string()}}));
            lines.push(json!({"t": i, "common": "x"}));
        }
        self.bulk(&lines);
    }

    /// Everything the test compares, as one map.
    pub(crate) fn state(&self) -> BTreeMap<String, Value> {
        let mut state = BTreeMap::new();
        for index in ["itb-a", "itb-b", "itb-tpl-1"] {
            self.ok(reqwest::Method::POST, &format!("{index}/_refresh"), None);
            let meta = self.get(index);
            let settings = &meta[index]["settings"]["index"];
            state.insert(format!("{index}/mappings"), meta[index]["mappings"].clone());
            state.insert(format!("{index}/aliases"), meta[index]["aliases"].clone());
            for key in [
                "number_of_shards",
                "number_of_replicas",
                "refresh_interval",
                "default_pipeline",
                "analysis",
            ] {
                state.insert(format!("{index}/settings/{key}"), settings[key].clone());
            }
            let (count, digest) = self.digest(index);
            state.insert(format!("{index}/count"), json!(count));
            state.insert(format!("{index}/digest"), json!(digest));
        }
        state.insert(
            "index_template".into(),
            self.get("_index_template/itb-tpl")["index_templates"][0]["index_template"].clone(),
        );
        state.insert(
            "component_template".into(),
            self.get("_component_template/itb-comp")["component_templates"][0]
                ["component_template"]
                .clone(),
        );
        state.insert(
            "pipeline".into(),
            self.get("_ingest/pipeline/itb-pipe")["itb-pipe"].clone(),
        );
        state
    }
}

/// A repository-method backup of `index` into `repo`, under the root `root`.
pub(crate) fn repository_backup_args<'a>(
    root: &'a str,
    index: &'a str,
    repo: &'a str,
) -> [&'a str; 11] {
    [
        "--root",
        root,
        "backup",
        "--services",
        "opensearch",
        "--indices",
        index,
        "--opensearch-method",
        "repository",
        "--opensearch-repository",
        repo,
    ]
}

/// Back up the test indices (`itb-*`) with `method` into the root `root_arg`.
fn backup_fixture(root_arg: &str, method: &str) {
    backup_indices(root_arg, method, "itb-*", None);
}

/// Back up `indices` with `method` into the root `root_arg` (as `<timestamp>`, if given).
fn backup_indices(root_arg: &str, method: &str, indices: &str, timestamp: Option<&str>) {
    let mut args = vec![
        "--root",
        root_arg,
        "backup",
        "--services",
        "opensearch",
        "--opensearch-method",
        method,
        "--indices",
        indices,
    ];
    if let Some(timestamp) = timestamp {
        args.extend(["--timestamp", timestamp]);
    }
    ok(&args, &[]);
}

fn round_trip(method: &str) {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    os.create_fixture();
    let before = os.state();
    assert_eq!(before["itb-a/count"], json!(12_000));

    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    backup_fixture(root_arg, method);
    let dir = only_backup(root.path());
    let manifest: Value = manifest_json(&dir);
    let record = &manifest["artifacts"]["opensearch"];
    assert_eq!(record["method"], method);
    assert_eq!(record["counts"]["itb-a"], 12_000);
    assert!(manifest["services"]["opensearch"]
        .as_str()
        .unwrap()
        .starts_with("opensearch_"));

    os.wipe_fixture();
    assert_eq!(os.call(reqwest::Method::GET, "itb-a", None).0, 404);
    ok(&["--root", root_arg, "restore", "--yes"], &[]);
    assert_eq!(os.state(), before, "{method}: restored state differs");

    // Restoring over the live indices replaces them.
    os.bulk(&[
        json!({"index": {"_index": "itb-b", "_id": "extra"}}),
        json!({"kind": "late"}),
    ]);
    ok(
        &[
            "--root",
            root_arg,
            "restore",
            "--path",
            dir.to_str().unwrap(),
            "--yes",
        ],
        &[],
    );
    assert_eq!(os.state(), before, "{method}: second restore differs");
    os.wipe_fixture();
}

#[test]
fn snapshot_round_trip_restores_everything() {
    round_trip("snapshot");
}

#[test]
fn logical_round_trip_restores_everything() {
    round_trip("logical");
}

/// A bare cluster (no pipeline, no template) answers `GET _ingest/pipeline` with
/// 404: the logical export must take that as "none", not fail.
#[test]
fn logical_round_trip_on_a_cluster_without_pipelines_or_templates() {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    os.wipe_fixture();
    let (status, pipelines) = os.call(reqwest::Method::GET, "_ingest/pipeline", None);
    assert_eq!(
        status, 404,
        "precondition: the test cluster must hold no ingest pipeline; it holds {pipelines}"
    );
    os.put("itb-bare", json!({"settings": {"number_of_replicas": 0}}));
    os.bulk(&[
        json!({"index": {"_index": "itb-bare", "_id": "1"}}),
        json!({"n": 1}),
        json!({"index": {"_index": "itb-bare", "_id": "2"}}),
        json!({"n": 2}),
    ]);
    let before = os.digest("itb-bare");
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    backup_fixture(root_arg, "logical");
    os.wipe_fixture();
    ok(&["--root", root_arg, "restore", "--yes"], &[]);
    assert_eq!(os.digest("itb-bare"), before);

    // A document the index refuses (a text in a long field) fails the
    // restore and is named.
    let dir = only_backup(root.path());
    let export = artifact_ending(&dir, ".ndjson.zst");
    let text =
        String::from_utf8(zstd::decode_all(fs::File::open(&export).unwrap()).unwrap()).unwrap();
    assert!(
        text.contains(r#""_source":{"n":2}"#) || text.contains(r#""source":{"n":2}"#),
        "{text}"
    );
    let bad = text.replace(r#"{"n":2}"#, r#"{"n":"not a number"}"#);
    fs::write(&export, zstd::encode_all(bad.as_bytes(), 3).unwrap()).unwrap();
    reseal(&dir, itbackup::service::Service::Opensearch, &export);
    let err = fails(
        &["--root", root_arg, "restore", "--yes"],
        &[],
        exit::STORE_REFUSED,
    );
    assert!(
        err.contains(r#"document "2" of index itb-bare was refused"#),
        "{err}"
    );
    os.wipe_fixture();
}

#[test]
fn an_interrupted_logical_restore_can_simply_be_run_again() {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    os.create_fixture();
    let before = os.state();
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    backup_fixture(root_arg, "logical");
    os.wipe_fixture();
    // Killed once the first index is back but before its documents are.
    let half_way = || {
        let (status, count) = os.call(reqwest::Method::GET, "itb-a/_count", None);
        status == 200 && count["count"].as_u64().unwrap_or(0) < 12_000
    };
    let killed = kill_when(&["--root", root_arg, "restore", "--yes"], half_way);
    assert!(
        killed,
        "the restore finished before it could be interrupted"
    );
    ok(&["--root", root_arg, "restore", "--yes"], &[]);
    assert_eq!(os.state(), before, "the second restore differs");
    os.wipe_fixture();
}

/// A document added after the backups, which a restore would remove.
fn add_canary(os: &Os) {
    os.bulk(&[
        json!({"index": {"_index": "itb-b", "_id": "canary"}}),
        json!({"kind": "canary"}),
    ]);
}

fn canary_present(os: &Os) -> bool {
    os.call(reqwest::Method::GET, "itb-b/_doc/canary", None).0 == 200
}

/// The fixture, backups of `itb-b` with each `(method, name)` as `<root>/<name>`,
/// and the canary added after them (a restore would undo it); the root.
fn itb_b_backed_up_then_changed(os: &Os, backups: &[(&str, &str)]) -> tempfile::TempDir {
    os.create_fixture();
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    for (method, name) in backups {
        backup_indices(root_arg, method, "itb-b", Some(name));
    }
    add_canary(os);
    root
}

#[test]
fn unsafe_or_truncated_artifacts_are_refused_before_anything_changes() {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    let root = itb_b_backed_up_then_changed(&os, &[("snapshot", "snap"), ("logical", "logical")]);

    // A snapshot from a newer cluster than this one, which could not read it.
    let snap_dir = root.path().join("snap");
    let mut manifest = itbackup::manifest::Manifest::read_dir(&snap_dir).unwrap();
    let real_version = manifest.artifacts[&itbackup::service::Service::Opensearch]
        .server_version
        .clone();
    let set_version = |manifest: &mut itbackup::manifest::Manifest, version: &str| {
        let record = manifest
            .artifacts
            .get_mut(&itbackup::service::Service::Opensearch)
            .unwrap();
        record.server_version = version.to_string();
        manifest.write(&snap_dir).unwrap();
    };
    set_version(&mut manifest, "99.0.0");
    let err = fails(&restore_args(&snap_dir, None), &[], 1);
    assert!(err.contains("newer than this server's"), "{err}");
    assert!(canary_present(&os), "a refused restore changed the index");
    set_version(&mut manifest, &real_version);

    // A tarball that climbs out of its directory, with a manifest that vouches for it.
    let tarball = artifact_ending(&snap_dir, ".tar.gz");
    let escape = format!("itb-escape-{}", std::process::id());
    {
        let file = fs::File::create(&tarball).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        let name = format!("../../../../../../tmp/{escape}");
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(4);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, &b"evil"[..]).unwrap();
        builder.into_inner().unwrap().finish().unwrap();
    }
    reseal(&snap_dir, itbackup::service::Service::Opensearch, &tarball);
    let err = fails(&restore_args(&snap_dir, None), &[], exit::DAMAGED_BACKUP);
    assert!(err.contains("climbs out"), "{err}");
    assert!(
        !Path::new("/tmp").join(&escape).exists(),
        "the archive escaped"
    );
    assert!(canary_present(&os), "a refused restore changed the index");

    // A logical export cut short, with a manifest that vouches for it.
    let logical_dir = root.path().join("logical");
    let export = artifact_ending(&logical_dir, ".ndjson.zst");
    let bytes = fs::read(&export).unwrap();
    fs::write(&export, &bytes[..bytes.len() * 2 / 3]).unwrap();
    reseal(
        &logical_dir,
        itbackup::service::Service::Opensearch,
        &export,
    );
    let err = fails(&restore_args(&logical_dir, None), &[], exit::DAMAGED_BACKUP);
    assert!(
        err.contains("damaged") || err.contains("ends before"),
        "{err}"
    );
    assert!(canary_present(&os), "a refused restore changed the index");
    os.wipe_fixture();
}

#[test]
fn index_definitions_another_version_refuses_are_found_before_any_index_is_replaced() {
    refused_definition_changes_nothing(Some("1.3.0"));
}

/// The same version, but a mapping this cluster cannot take (a plugin's
/// field type or analyzer the backup's cluster had and this one lacks).
#[test]
fn index_definitions_this_cluster_refuses_are_found_before_any_index_is_replaced() {
    refused_definition_changes_nothing(None);
}

/// A logical backup whose index definition the cluster refuses, taken on
/// `version` (or this cluster's): the restore refuses it before any change.
fn refused_definition_changes_nothing(version: Option<&str>) {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    let root = itb_b_backed_up_then_changed(&os, &[("logical", "logical")]);

    // As if taken on another version whose mapping this cluster does not know.
    let dir = root.path().join("logical");
    let export = artifact_ending(&dir, ".ndjson.zst");
    let text =
        String::from_utf8(zstd::decode_all(fs::File::open(&export).unwrap()).unwrap()).unwrap();
    let mut changed = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            if value["type"] == "index" {
                value["body"]["mappings"]["properties"]["from_elsewhere"] =
                    json!({"type": "no_such_field_type"});
                changed += 1;
            }
            serde_json::to_string(&value).unwrap()
        })
        .collect();
    assert_eq!(changed, 1);
    let forged = zstd::encode_all((lines.join("\n") + "\n").as_bytes(), 3).unwrap();
    fs::write(&export, forged).unwrap();
    reseal(&dir, itbackup::service::Service::Opensearch, &export);
    if let Some(version) = version {
        let mut manifest = itbackup::manifest::Manifest::read_dir(&dir).unwrap();
        manifest
            .artifacts
            .get_mut(&itbackup::service::Service::Opensearch)
            .unwrap()
            .server_version = version.into();
        manifest.write(&dir).unwrap();
    }

    // Probes a killed run left: one of this host's (its pid is gone), which
    // goes, and a fresh one of another host, which may be a live run's.
    let now = jiff::Timestamp::now().as_second();
    let dead_here = format!("itbackup-check-{}-4194305-{now}-x0", host_tag());
    let live_elsewhere = format!("itbackup-check-0badc0de-4194305-{now}-x0");
    for probe in [&dead_here, &live_elsewhere] {
        os.ok(reqwest::Method::PUT, probe, None);
    }
    os.put(
        &format!(
            "_ingest/pipeline/itbackup-check-{}-4194305-{now}-p0",
            host_tag()
        ),
        json!({"processors": []}),
    );
    let err = fails(&restore_args(&dir, None), &[], exit::STORE_REFUSED);
    let (_, elsewhere) = os.call(reqwest::Method::DELETE, &live_elsewhere, None);
    assert_eq!(
        elsewhere["acknowledged"], true,
        "another host's fresh probe was removed"
    );
    assert!(
        canary_present(&os),
        "the refused restore replaced the index:\n{err}"
    );
    assert!(
        err.contains("refuses the settings or mappings of index itb-b"),
        "{err}"
    );
    assert_eq!(probes_left(&os), Vec::<String>::new());
    os.wipe_fixture();
}

/// The definition check's temporary objects of every kind in the cluster.
fn probes_left(os: &Os) -> Vec<String> {
    let mut left = Vec::new();
    for (listing, key) in [
        (
            "_cat/indices/itbackup-check-*?format=json&expand_wildcards=all",
            "index",
        ),
        ("_data_stream/itbackup-check-*", "data_streams"),
        ("_index_template/itbackup-check-*", "index_templates"),
        (
            "_component_template/itbackup-check-*",
            "component_templates",
        ),
        ("_template/itbackup-check-*", ""),
        ("_ingest/pipeline/itbackup-check-*", ""),
    ] {
        let (_, found) = os.call(reqwest::Method::GET, listing, None);
        let names: Vec<String> = match (key, &found) {
            ("index", Value::Array(rows)) => rows
                .iter()
                .map(|r| r["index"].as_str().unwrap_or("?").to_string())
                .collect(),
            ("", Value::Object(all)) => all.keys().cloned().collect(),
            (key, found) => found[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["name"].as_str().unwrap_or("?").to_string())
                .collect(),
        };
        left.extend(names.into_iter().map(|n| format!("{listing}: {n}")));
    }
    left
}

/// Whatever the load puts into the cluster besides documents — a pipeline,
/// a component template, the template that makes a data stream — is tried
/// under a temporary name first: one the cluster refuses stops the restore
/// before any index, template or data stream is replaced. Without the data
/// stream's `data_stream` (its template refused as a stream's), the load
/// deleted the stream and its backing indices, then failed to recreate it.
#[test]
fn pipelines_templates_and_data_streams_the_cluster_refuses_are_found_before_anything_changes() {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    os.wipe_fixture();
    create_data_stream_fixture(&os);
    os.put(
        "_ingest/pipeline/itb-pipe",
        json!({"processors": [{"set": {"field": "seen", "value": true}}]}),
    );
    os.put(
        "_component_template/itb-comp",
        json!({"template": {"mappings": {"properties": {"c": {"type": "keyword"}}}}}),
    );
    let root = temp_root();
    Cmd::backup(root.path())
        .services("opensearch")
        .arg("--opensearch-method")
        .arg("logical")
        .arg("--indices")
        .arg("itb-ds,itb-plain")
        .ok(&[]);
    let dir = only_backup(root.path());
    let export = artifact_ending(&dir, ".ndjson.zst");
    let pristine = fs::read(&export).unwrap();
    let manifest = fs::read(dir.join("backup-manifest.json")).unwrap();
    let before = data_stream_state(&os);
    let pipeline = os.get("_ingest/pipeline/itb-pipe");
    let component = os.get("_component_template/itb-comp");

    type Rewrite = Box<dyn Fn(Value) -> Value>;
    let cases: Vec<(&str, Rewrite)> = vec![
        (
            "data stream itb-ds",
            Box::new(|mut line: Value| {
                if line["type"] == "index_template" && line["name"] == "itb-ds-tpl" {
                    line["body"].as_object_mut().unwrap().remove("data_stream");
                }
                line
            }),
        ),
        (
            "ingest pipeline itb-pipe",
            Box::new(|mut line: Value| {
                if line["type"] == "pipeline" && line["name"] == "itb-pipe" {
                    line["body"] = json!({"processors": [{"no_such_processor": {}}]});
                }
                line
            }),
        ),
        (
            "component template itb-comp",
            Box::new(|mut line: Value| {
                if line["type"] == "component_template" && line["name"] == "itb-comp" {
                    line["body"]["template"]["mappings"]["properties"]["c"] =
                        json!({"type": "no_such_field_type"});
                }
                line
            }),
        ),
    ];
    for (what, change) in cases {
        rewrite_export(&dir, |line| {
            let value: Value = serde_json::from_str(&line).unwrap();
            serde_json::to_string(&change(value)).unwrap()
        });
        let out = itbackup(&restore_args(&dir, None), &[]);
        let err = text(&out);
        assert!(!out.status.success(), "{what}: {err}");
        assert!(
            err.contains(&format!("refuses the {what}")),
            "{what}: {err}"
        );
        assert!(err.contains("nothing was changed"), "{what}: {err}");
        assert_eq!(
            data_stream_state(&os),
            before,
            "{what}: the refused restore changed the data stream"
        );
        assert_eq!(os.get("_ingest/pipeline/itb-pipe"), pipeline, "{what}");
        assert_eq!(os.get("_component_template/itb-comp"), component, "{what}");
        assert_eq!(probes_left(&os), Vec::<String>::new(), "{what}");
        fs::write(&export, &pristine).unwrap();
        fs::write(dir.join("backup-manifest.json"), &manifest).unwrap();
    }
    // The untouched export still restores.
    ok(&restore_args(&dir, None), &[]);
    assert_eq!(data_stream_state(&os), before);
    wipe_data_stream_fixture(&os);
    os.delete("_ingest/pipeline/itb-pipe");
    os.delete("_component_template/itb-comp");
}

/// How itbackup names this host in a probe index: its name's SHA-256, first
/// 8 hex digits.
fn host_tag() -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let digest = sha2::Sha256::digest(host.trim().as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Repositories named like itbackup's temporary ones: name → location.
fn temporary_repositories(os: &Os) -> BTreeMap<String, String> {
    let all = os.get("_snapshot/_all");
    all.as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| name.starts_with("itbackup-"))
        .map(|(name, repo)| {
            let location = repo["settings"]["location"].as_str().unwrap_or_default();
            (name.clone(), location.to_string())
        })
        .collect()
}

#[test]
fn repositories_of_killed_snapshot_runs_are_removed_by_the_next_backup() {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    os.create_fixture();
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let repo_root = Path::new(&required_env("IT_OPENSEARCH_REPO")).to_path_buf();
    // Those of runs that are not this test's (another test's, or too recent
    // to be judged without a holder) are left out of the count.
    let before = temporary_repositories(&os);
    let new_ones = |os: &Os| {
        let mut now = temporary_repositories(os);
        now.retain(|name, _| !before.contains_key(name));
        now
    };

    // Killed (kill -9) once its temporary repository is registered, while it snapshots.
    let backup = [
        "--root",
        root_arg,
        "backup",
        "--services",
        "opensearch",
        "--opensearch-method",
        "snapshot",
        "--indices",
        "itb-*",
    ];
    let killed = kill_when(&backup, || !new_ones(&os).is_empty());
    assert!(killed, "the backup finished before it could be interrupted");
    let left = new_ones(&os);
    assert_eq!(left.len(), 1, "{left:?}");
    let (dead, dead_location) = left.into_iter().next().unwrap();

    // A live run's repository (this test process is alive, on this host) is never touched.
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let live = format!("itbackup-live-{}", std::process::id());
    let live_location = repo_root.join(&live);
    os.put(
        &format!("_snapshot/{live}"),
        json!({"type": "fs", "settings": {
            "location": live_location, "itbackup_host": host.trim(),
            "itbackup_pid": std::process::id().to_string(),
            "itbackup_started": jiff::Timestamp::now().to_string()}}),
    );

    // The next backup removes the dead run's registration and its copy.
    ok(&backup, &[]);
    let after = temporary_repositories(&os);
    assert!(
        !after.contains_key(&dead),
        "the killed run's repository {dead} is still registered: {after:?}"
    );
    assert!(
        !Path::new(&dead_location).exists(),
        "the killed run's copy {dead_location} is still under path.repo"
    );
    assert!(
        after.contains_key(&live) && live_location.exists(),
        "a live run's repository was removed: {after:?}"
    );
    os.delete(&format!("_snapshot/{live}"));
    let _ = fs::remove_dir_all(&live_location);
    os.wipe_fixture();
}

#[test]
fn unreachable_or_red_cluster_gives_a_clear_error() {
    let _guard = exclusive(&[Opensearch]);
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let err = fails(
        &["--root", root_arg, "backup", "--services", "opensearch"],
        &[("OPENSEARCH_URL", "http://127.0.0.1:1")],
        exit::UNREACHABLE,
    );
    assert!(
        err.contains("opensearch") && err.contains("reachable"),
        "{err}"
    );

    let os = Os::new();
    os.delete("itb-red");
    // A primary that cannot be allocated turns the cluster red.
    os.put("itb-red?wait_for_active_shards=0", json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0, "index.routing.allocation.require._name": "no-such-node"}}));
    let started = Instant::now();
    let err = fails(
        &["--root", root_arg, "backup", "--services", "opensearch"],
        &[("IT_OPENSEARCH_HEALTH_WAIT", "2s")],
        exit::STORE_REFUSED,
    );
    assert!(
        err.contains("red") && err.contains("itb-red") && err.contains("2 s"),
        "the error names the red index and how long it waited: {err}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(30),
        "waited {:?}",
        started.elapsed()
    );

    // A red that clears within the wait (an index being created, closed or
    // restored: its primary initialising) is waited out, not failed on.
    let backup = Command::new(bin())
        .args(["--root", root_arg, "backup", "--services", "opensearch"])
        .env("RUST_LOG", "itbackup=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    os.put(
        "itb-red/_settings",
        json!({"index.routing.allocation.require._name": null}),
    );
    let out = backup.wait_with_output().unwrap();
    os.delete("itb-red");
    assert!(out.status.success(), "{}", text(&out));
}

/// A data stream (its index template, two backing indices after a rollover),
/// a plain index beside it, and a hidden and a closed index that a default
/// selection leaves out (and must say so).
fn create_data_stream_fixture(os: &Os) {
    wipe_data_stream_fixture(os);
    os.put(
        "_index_template/itb-ds-tpl",
        json!({"index_patterns": ["itb-ds*"], "data_stream": {}, "priority": 60,
               "template": {"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                            "mappings": {"properties": {"msg": {"type": "keyword"}, "n": {"type": "long"}}}}}),
    );
    os.put("_data_stream/itb-ds", json!({}));
    let batch = |from: u64, to: u64| -> Vec<Value> {
        (from..to)
            .flat_map(|i| {
                [
                    json!({"create": {"_index": "itb-ds", "_id": format!("e{i}")}}),
                    json!({"@timestamp": format!("2024-02-{:02}T10:00:{:02}Z", 1 + i % 28, i % 60),
                           "msg": format!("event {i}"), "n": i, "extra": {"k": i % 7}}),
                ]
            })
            .collect()
    };
    os.bulk(&batch(0, 3000));
    os.ok(reqwest::Method::POST, "itb-ds/_rollover", None);
    os.bulk(&batch(3000, 4200));
    os.put("itb-plain", json!({"settings": {"number_of_shards": 1}}));
    os.bulk(&[
        json!({"index": {"_index": "itb-plain", "_id": "p1"}}),
        json!({"kind": "plain"}),
    ]);
}

fn wipe_data_stream_fixture(os: &Os) {
    os.delete("_data_stream/itb-ds");
    os.delete("itb-plain");
    os.delete("_index_template/itb-ds-tpl");
    // Plain indices under the backing indices' names, as a restore that
    // did not know data streams left them.
    os.delete(".ds-itb-ds-*?expand_wildcards=all");
}

/// The data stream as the cluster describes it, and every backing index's
/// documents and mappings.
fn data_stream_state(os: &Os) -> BTreeMap<String, Value> {
    let mut state = BTreeMap::new();
    let (status, streams) = os.call(reqwest::Method::GET, "_data_stream/itb-ds", None);
    let stream = if status == 200 {
        streams["data_streams"][0].clone()
    } else {
        Value::Null
    };
    let backing: Vec<String> = stream["indices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["index_name"].as_str().unwrap().to_string())
        .collect();
    state.insert("stream/indices".into(), json!(backing));
    for key in ["generation", "template", "timestamp_field"] {
        state.insert(format!("stream/{key}"), stream[key].clone());
    }
    for index in &backing {
        os.ok(reqwest::Method::POST, &format!("{index}/_refresh"), None);
        let (count, digest) = os.digest(index);
        state.insert(format!("{index}/count"), json!(count));
        state.insert(format!("{index}/digest"), json!(digest));
        state.insert(
            format!("{index}/mappings"),
            os.get(&format!("{index}/_mapping"))[index]["mappings"].clone(),
        );
    }
    state.insert(
        "template".into(),
        os.get("_index_template/itb-ds-tpl")["index_templates"][0]["index_template"].clone(),
    );
    state.insert("itb-plain".into(), json!(os.digest("itb-plain")));
    state
}

fn data_stream_round_trip(method: &str) {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    os.wipe_fixture();
    create_data_stream_fixture(&os);
    os.delete("itb-hidden");
    os.delete("itb-closed");
    os.put("itb-hidden", json!({"settings": {"index.hidden": true}}));
    os.put("itb-closed", json!({}));
    os.ok(reqwest::Method::POST, "itb-closed/_close", None);
    let before = data_stream_state(&os);
    assert_eq!(
        before["stream/indices"],
        json!([".ds-itb-ds-000001", ".ds-itb-ds-000002"])
    );
    assert_eq!(before[".ds-itb-ds-000001/count"], json!(3000));

    // By default (no --indices), and naming the stream.
    for (name, indices) in [("default", None), ("named", Some("itb-ds,itb-plain"))] {
        let root = temp_root();
        let root_arg = root.path().to_str().unwrap();
        let mut args = vec![
            "--root",
            root_arg,
            "backup",
            "--services",
            "opensearch",
            "--opensearch-method",
            method,
        ];
        if let Some(indices) = indices {
            args.extend(["--indices", indices]);
        }
        let out = ok(&args, &[]);
        let manifest: Value = serde_json::from_slice(
            &fs::read(only_backup(root.path()).join("backup-manifest.json")).unwrap(),
        )
        .unwrap();
        let record = &manifest["artifacts"]["opensearch"];
        assert_eq!(
            record["counts"][".ds-itb-ds-000001"], 3000,
            "{name}: {record}"
        );
        assert_eq!(
            record["counts"][".ds-itb-ds-000002"], 1200,
            "{name}: {record}"
        );
        if indices.is_none() {
            // What a default selection leaves out is named, in the manifest and the summary.
            let left_out = record["details"]["left_out"].to_string();
            let summary = String::from_utf8_lossy(&out.stdout);
            for index in ["itb-hidden", "itb-closed"] {
                assert!(left_out.contains(index), "{name}: {record}");
                assert!(summary.contains(index), "{name}: {summary}");
            }
        }

        wipe_data_stream_fixture(&os);
        ok(&["--root", root_arg, "restore", "--yes"], &[]);
        assert_eq!(
            data_stream_state(&os),
            before,
            "{method}, {name}: the restored data stream differs"
        );
        // A restore over the live stream replaces it, and it still rolls over.
        ok(&["--root", root_arg, "restore", "--yes"], &[]);
        assert_eq!(
            data_stream_state(&os),
            before,
            "{method}, {name}: second restore"
        );
    }
    os.ok(reqwest::Method::POST, "itb-ds/_rollover", None);
    let rolled = os.get("_data_stream/itb-ds");
    assert_eq!(rolled["data_streams"][0]["generation"], 3, "{rolled}");
    wipe_data_stream_fixture(&os);
    os.delete("itb-hidden");
    os.delete("itb-closed");
}

#[test]
fn snapshot_backs_up_and_restores_data_streams_as_data_streams() {
    data_stream_round_trip("snapshot");
}

#[test]
fn logical_backs_up_and_restores_data_streams_as_data_streams() {
    data_stream_round_trip("logical");
}

/// Rewrite the logical export in `dir` line by line and make the manifest
/// vouch for it.
fn rewrite_export(dir: &Path, change: impl Fn(String) -> String) {
    let export = artifact_ending(dir, ".ndjson.zst");
    let text =
        String::from_utf8(zstd::decode_all(fs::File::open(&export).unwrap()).unwrap()).unwrap();
    let lines: Vec<String> = text.lines().map(|l| change(l.to_string())).collect();
    let forged = zstd::encode_all((lines.join("\n") + "\n").as_bytes(), 1).unwrap();
    fs::write(&export, forged).unwrap();
    reseal(dir, itbackup::service::Service::Opensearch, &export);
}

/// An export that decodes but that the load would fail on is refused before
/// any index is touched: a document larger than the cluster's
/// `http.max_content_length` (the `_bulk` request that carries it would get
/// HTTP 413 after the index was deleted), an `_id` longer than OpenSearch
/// takes, a `_source` that is not an object, an index name OpenSearch refuses.
#[test]
fn an_export_the_cluster_cannot_load_is_refused_before_anything_changes() {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    let root = itb_b_backed_up_then_changed(&os, &[("logical", "logical")]);
    let before = os.digest("itb-b");
    let dir = root.path().join("logical");
    let original = fs::read(dir.join("backup-manifest.json")).unwrap();
    let export = artifact_ending(&dir, ".ndjson.zst");
    let pristine = fs::read(&export).unwrap();
    // The cluster's own limit is a refusal; the rest would break the load: damage.
    let restore = |what: &str| {
        let code = if what == "a 105 MB document" {
            exit::STORE_REFUSED
        } else {
            exit::DAMAGED_BACKUP
        };
        fails(&restore_args(&dir, None), &[], code)
    };
    let doc_b0 = r#"{"type":"doc","index":"itb-b","id":"b0","source":"#;
    type Rewrite = Box<dyn Fn(String) -> String>;
    let cases: Vec<(&str, Rewrite, &str)> = vec![
        (
            "a 105 MB document",
            Box::new(move |line: String| {
                if line.starts_with(doc_b0) {
                    let big = "x".repeat(105_000_000);
                    format!(r#"{doc_b0}{{"kind":"keep","big":"{big}"}}}}"#)
                } else {
                    line
                }
            }),
            "http.max_content_length",
        ),
        (
            "a 600-byte _id",
            Box::new(move |line: String| {
                line.replace(r#""id":"b0""#, &format!(r#""id":"{}""#, "i".repeat(600)))
            }),
            "512 bytes",
        ),
        (
            "a _source that is not an object",
            Box::new(move |line: String| {
                if line.starts_with(doc_b0) {
                    format!("{doc_b0}[1,2]}}")
                } else {
                    line
                }
            }),
            "not a JSON object",
        ),
        (
            "an index name OpenSearch refuses",
            Box::new(move |line: String| line.replace(r#""itb-b""#, r#""ITB/b?x""#)),
            "not a valid",
        ),
    ];
    for (what, change, expected) in cases {
        fs::write(&export, &pristine).unwrap();
        fs::write(dir.join("backup-manifest.json"), &original).unwrap();
        rewrite_export(&dir, change);
        let err = restore(what);
        assert!(err.contains(expected), "{what}: {err}");
        assert!(err.contains("line"), "{what}: the line is named: {err}");
        assert_eq!(
            os.digest("itb-b"),
            before,
            "{what}: the refused restore changed itb-b"
        );
        assert!(
            canary_present(&os),
            "{what}: the refused restore changed itb-b"
        );
    }
    os.wipe_fixture();
}

/// Bytes of every file under `dir` (a repository's size on disk).
pub(crate) fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            bytes_under(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// What can go wrong with a repository, each refused with its exit code
/// before any index is touched: an unknown name, a repository a node cannot
/// write (`_verify` fails), a snapshot deleted behind itbackup's back.
#[test]
fn repository_faults_are_refused_before_anything_changes() {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    os.delete("itb-faults");
    os.put(
        "itb-faults",
        json!({"settings": {"number_of_shards": 2, "number_of_replicas": 0}}),
    );
    os.bulk(&[
        json!({"index": {"_index": "itb-faults", "_id": "1"}}),
        json!({"n": 1}),
    ]);
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let backup = |repo: &str| {
        vec![
            "--root".to_string(),
            root_arg.to_string(),
            "backup".into(),
            "--services".into(),
            "opensearch".into(),
            "--indices".into(),
            "itb-faults".into(),
            "--opensearch-method".into(),
            "repository".into(),
            "--opensearch-repository".into(),
            repo.to_string(),
        ]
    };
    let run = |v: Vec<String>, code: i32| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        fails(&refs, &[], code)
    };

    // Two roots (two hosts) backing up into one repository in the same
    // second: each its own snapshot (a failed second one once deleted the
    // first's, which had the same name).
    let shared = "itb-repo-shared";
    fixtures::register_repository(shared);
    let other = temp_root();
    for root in [root_arg, other.path().to_str().unwrap()] {
        ok(
            &[
                "--root",
                root,
                "backup",
                "--services",
                "opensearch",
                "--indices",
                "itb-faults",
                "--opensearch-method",
                "repository",
                "--opensearch-repository",
                shared,
                "--timestamp",
                "20260101_000000",
            ],
            &[],
        );
    }
    for root in [root.path(), other.path()] {
        let dir = root.join("20260101_000000");
        ok(&["verify", "--path", dir.to_str().unwrap()], &[]);
        fs::remove_dir_all(dir).unwrap();
    }

    let err = run(backup("itb-no-such-repo"), exit::NOT_FOUND);
    assert!(err.contains("itb-no-such-repo"), "{err}");

    // A repository no node can write: registered, then its directory closed.
    let closed = "itb-repo-closed";
    fixtures::register_repository(closed);
    let location = Path::new(&required_env("IT_OPENSEARCH_REPO")).join(closed);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&location).unwrap().permissions().mode();
    fs::set_permissions(&location, fs::Permissions::from_mode(0o555)).unwrap();
    let err = run(backup(closed), exit::STORE_REFUSED);
    fs::set_permissions(&location, fs::Permissions::from_mode(mode)).unwrap();
    assert!(err.contains("does not verify"), "{err}");
    assert!(
        fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .all(|e| !e.path().join("backup-manifest.json").exists()),
        "a refused backup left a complete backup"
    );

    // A snapshot deleted behind itbackup's back: verify and restore refuse,
    // the live index keeps what was written since.
    let repo = "itb-repo-faults";
    fixtures::register_repository(repo);
    ok(
        &backup(repo).iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    let dir = only_backup(root.path());
    let snapshot = manifest_json(&dir)["artifacts"]["opensearch"]["details"]["repository"]
        ["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    os.bulk(&[
        json!({"index": {"_index": "itb-faults", "_id": "2"}}),
        json!({"n": 2}),
    ]);
    os.ok(
        reqwest::Method::DELETE,
        &format!("_snapshot/{repo}/{snapshot}"),
        None,
    );
    let dir_arg = dir.to_str().unwrap();
    let err = fails(&["verify", "--path", dir_arg], &[], exit::DAMAGED_BACKUP);
    assert!(err.contains(&snapshot), "{err}");
    let err = fails(
        &["--root", root_arg, "restore", "--path", dir_arg, "--yes"],
        &[],
        exit::DAMAGED_BACKUP,
    );
    assert!(err.contains(&snapshot), "{err}");
    assert_eq!(
        os.digest("itb-faults").0,
        2,
        "the refused restore changed the index"
    );
    os.delete("itb-faults");
}

/// A backup killed (SIGKILL) while its snapshot runs leaves a snapshot no
/// backup names; the next repository-method backup into the same root
/// deletes it, and so does prune when it removes the killed run's
/// directory. Complete backups' snapshots stay.
#[test]
fn snapshots_of_killed_repository_backups_are_removed() {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    let index = "itb-orphans";
    os.delete(index);
    os.put(
        index,
        json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}}),
    );
    os.fill(index, 5000);
    // Slow, so that the kill lands while the snapshot runs.
    let repo = "itb-repo-orphans";
    let location = Path::new(&required_env("IT_OPENSEARCH_REPO")).join(repo);
    os.fresh_repository(
        repo,
        &location,
        json!({"max_snapshot_bytes_per_sec": "100kb"}),
    );
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let args = repository_backup_args(root_arg, index, repo);
    let killed_mid_snapshot = || {
        let running = || {
            os.get(&format!("_snapshot/{repo}/_current"))["snapshots"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
        };
        let before = os.itbackup_snapshots(repo);
        assert!(
            kill_when(&args, running),
            "the backup ended before the kill"
        );
        let orphans: Vec<String> = os
            .itbackup_snapshots(repo)
            .into_iter()
            .filter(|s| !before.contains(s))
            .collect();
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        orphans[0].clone()
    };

    let orphan = killed_mid_snapshot();
    ok(&args, &[]);
    let complete = only_complete_snapshot(root.path());
    assert_eq!(
        os.itbackup_snapshots(repo),
        vec![complete.clone()],
        "the killed backup's snapshot {orphan} is still there"
    );

    let orphan = killed_mid_snapshot();
    assert_ne!(orphan, complete);
    std::thread::sleep(std::time::Duration::from_secs(2));
    ok(
        &[
            "--root",
            root_arg,
            "prune",
            "--keep-last",
            "5",
            "--grace",
            "1s",
        ],
        &[],
    );
    assert_eq!(
        os.itbackup_snapshots(repo),
        vec![complete],
        "prune left the killed backup's snapshot {orphan}"
    );
    os.delete(index);
    os.delete(&format!("_snapshot/{repo}"));
}

/// The snapshot the one complete backup under `root` names.
fn only_complete_snapshot(root: &Path) -> String {
    let complete: Vec<_> = fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("backup-manifest.json").exists())
        .collect();
    assert_eq!(complete.len(), 1, "{complete:?}");
    manifest_json(&complete[0])["artifacts"]["opensearch"]["details"]["repository"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `restore --indices` puts back only the selected indices; `--rename`
/// restores one beside the live one, which stays untouched; a selection the
/// backup cannot honour is refused before anything changes.
fn restore_some_indices_or_beside(method: &str) {
    let _guard = exclusive(&[Opensearch]);
    let os = Os::new();
    os.create_fixture();
    let before = os.state();
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let repo = "itb-repo-parts";
    if method == "repository" {
        fixtures::register_repository(repo);
    }
    let env = [("IT_OPENSEARCH_REPOSITORY", repo)];
    let env: &[(&str, &str)] = if method == "repository" { &env } else { &[] };
    ok(
        &[
            "--root",
            root_arg,
            "backup",
            "--services",
            "opensearch",
            "--opensearch-method",
            method,
            "--indices",
            "itb-*",
        ],
        env,
    );
    let dir = only_backup(root.path());
    let dir_arg = dir.to_str().unwrap();
    os.bulk(&[
        json!({"index": {"_index": "itb-a", "_id": "late-a"}}),
        json!({"title": "late"}),
        json!({"index": {"_index": "itb-b", "_id": "late-b"}}),
        json!({"kind": "keep"}),
    ]);
    let changed = os.state();
    let restore = |extra: &[&str]| {
        let mut args = vec!["--root", root_arg, "restore", "--path", dir_arg, "--yes"];
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run_ok = |extra: &[&str]| {
        let args = restore(extra);
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), env)
    };

    let planned = text(&run_ok(&["--indices", "itb-a*", "--dry-run"]));
    assert!(
        planned.contains(
            "with its aliases; templates, pipelines and every other index untouched: itb-a\n"
        ),
        "{method}: {planned}"
    );
    run_ok(&["--indices", "itb-a*"]);
    let now = os.state();
    for key in [
        "itb-a/count",
        "itb-a/digest",
        "itb-a/mappings",
        "itb-a/aliases",
    ] {
        assert_eq!(now[key], before[key], "{method}: {key} is not the backup's");
    }
    for key in ["itb-b/count", "itb-b/digest", "itb-tpl-1/count"] {
        assert_eq!(now[key], changed[key], "{method}: {key} was restored too");
    }

    run_ok(&["--rename", "itb-b=itb-b-copy"]);
    assert_eq!(
        json!(os.digest("itb-b-copy").1),
        before["itb-b/digest"],
        "{method}: the copy is not the backup's itb-b"
    );
    assert_eq!(
        json!(os.digest("itb-b").1),
        changed["itb-b/digest"],
        "{method}: the live itb-b changed"
    );
    let alias = os.get("_alias/itb-alias");
    assert_eq!(
        alias.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["itb-b"],
        "{method}: the copy took the live index's alias: {alias}"
    );

    // Refused before anything changes.
    let kept = os.state();
    for (extra, says) in [
        (
            vec!["--indices", "itb-nope*"],
            "holds no index matching 'itb-nope*'",
        ),
        (vec!["--rename", "itb-a=itb-b"], "itb-b exists"),
        (
            vec!["--rename", "itb-zz=itb-zz-copy"],
            "no database or index named 'itb-zz'",
        ),
    ] {
        let args = restore(&extra);
        let err = fails(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            env,
            exit::USAGE,
        );
        assert!(err.contains(says), "{method}: {err}");
    }
    assert_eq!(
        os.state(),
        kept,
        "{method}: a refused restore changed something"
    );
    // --switch: itb-b restored beside, then switched in with its alias;
    // first a count that differs (the manifest changed), found before the
    // switch: the live index stays as it was.
    let side_indices = || {
        os.get("_cat/indices/itbackup-*?format=json&h=index")
            .as_array()
            .map_or(0, Vec::len)
    };
    let good = itbackup::manifest::Manifest::read_dir(&dir).unwrap();
    let mut wrong = good.clone();
    *wrong
        .artifacts
        .get_mut(&itbackup::service::Service::Opensearch)
        .unwrap()
        .counts
        .get_mut("itb-b")
        .unwrap() += 1;
    wrong.write(&dir).unwrap();
    // A logical export's own counts are checked against the manifest's
    // before anything changes (a damaged backup); a snapshot's copy is
    // counted once restored beside the live index.
    let (code, says) = if method == "logical" {
        (exit::DAMAGED_BACKUP, "the manifest says 501 documents")
    } else {
        (exit::VERIFICATION_MISMATCH, "nothing was switched")
    };
    let args = restore(&["--indices", "itb-b", "--switch"]);
    let err = fails(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        env,
        code,
    );
    assert!(err.contains(says), "{method}: {err}");
    assert_eq!(
        os.state(),
        kept,
        "{method}: the failed switch changed something"
    );
    assert_eq!(side_indices(), 0, "{method}: the failed switch left a copy");
    good.write(&dir).unwrap();

    let out = run_ok(&["--indices", "itb-b", "--switch", "--keep-old"]);
    assert!(
        text(&out).contains("switched to the restored indices"),
        "{method}: {}",
        text(&out)
    );
    let now = os.state();
    for key in [
        "itb-b/count",
        "itb-b/digest",
        "itb-b/mappings",
        "itb-b/aliases",
    ] {
        assert_eq!(now[key], before[key], "{method}: {key} after the switch");
    }
    assert_eq!(
        now["itb-a/digest"], kept["itb-a/digest"],
        "{method}: itb-a was switched too"
    );
    let old = os.get("_cat/indices/itb-b-before-*?format=json&h=index");
    let old = old[0]["index"]
        .as_str()
        .unwrap_or_else(|| panic!("{method}: --keep-old kept nothing: {old}"))
        .to_string();
    assert_eq!(
        json!(os.digest(&old).1),
        kept["itb-b/digest"],
        "{method}: the kept index is not the old one"
    );
    assert_eq!(side_indices(), 0, "{method}: the switch left a copy");
    // The switched index takes writes.
    os.bulk(&[
        json!({"index": {"_index": "itb-b", "_id": "after-switch"}}),
        json!({"kind": "keep"}),
    ]);
    os.delete(&old);
    os.delete("itb-b-copy");
    os.wipe_fixture();
}

#[test]
fn repository_restores_some_indices_or_beside_the_live_ones() {
    restore_some_indices_or_beside("repository");
}

#[test]
fn snapshot_restores_some_indices_or_beside_the_live_ones() {
    restore_some_indices_or_beside("snapshot");
}

#[test]
fn logical_restores_some_indices_or_beside_the_live_ones() {
    restore_some_indices_or_beside("logical");
}
