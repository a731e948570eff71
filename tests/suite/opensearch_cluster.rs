//! The repository method on a three-node cluster (`common::cluster`), where
//! the snapshot comes from every data node and each shard has a replica:
//! everything comes back, a second backup is incremental, and a node killed
//! during the snapshot fails the backup cleanly without hurting the next.

use crate::common;
use crate::opensearch::{bytes_under, repository_backup_args, Os};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{self, Cluster};
use common::*;
use serde_json::{json, Value};

/// A repository of no snapshots, `name`, in the cluster's shared path.repo.
fn fresh_repository(os: &Os, cluster: &Cluster, name: &str, settings: Value) -> PathBuf {
    let location = cluster.repo.join(name);
    os.fresh_repository(name, &location, settings);
    location
}

/// Starts node N again when dropped: a test that kills a node and then
/// fails leaves the next test a whole cluster.
struct Restart(usize);

impl Drop for Restart {
    fn drop(&mut self) {
        cluster::node("start", self.0);
    }
}

fn wait_green(os: &Os) {
    let health = os.get("_cluster/health?wait_for_status=green&timeout=120s");
    assert_eq!(
        health["status"], "green",
        "the cluster did not turn green: {health}"
    );
}

/// The repository method on the cluster, with a replica of every shard: a
/// snapshot into a registered repository, the backup directory only a
/// record of it. Everything comes back; a second
/// backup after 1 % more documents adds little to the repository (its
/// snapshot shares the unchanged segments); each backup restores to itself.
#[test]
fn repository_round_trip_is_incremental_and_restores_everything() {
    let _guard = exclusive(&[OpensearchCluster]);
    let cluster = cluster::cluster();
    let os = Os::at(&cluster.url, 1);
    let repo = "itb-repo-round-trip";
    let location = fresh_repository(&os, &cluster, repo, json!({}));
    os.create_fixture();
    wait_green(&os);
    let before = os.state();
    assert_eq!(before["itb-a/settings/number_of_replicas"], "1");
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let env = [
        ("OPENSEARCH_URL", cluster.url.as_str()),
        ("IT_OPENSEARCH_REPOSITORY", repo),
    ];
    let backup = |timestamp: &str| {
        ok(
            &[
                "--root",
                root_arg,
                "backup",
                "--services",
                "opensearch",
                "--indices",
                "itb-*",
                "--timestamp",
                timestamp,
            ],
            &env,
        );
        root.path().join(timestamp)
    };
    let repo_before = bytes_under(&location);
    let first = backup("20260101_000001");
    let manifest = manifest_json(&first);
    let record = &manifest["artifacts"]["opensearch"];
    assert_eq!(
        record["method"], "repository",
        "a named repository is the default"
    );
    assert_eq!(record["details"]["repository"]["repository"], repo);
    assert_eq!(record["details"]["repository"]["type"], "fs");
    assert_eq!(record["counts"]["itb-a"], 12_000);
    let snapshot_record: Value = serde_json::from_str(
        &std::fs::read_to_string(artifact_ending(&first, ".snapshot.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(snapshot_record["indices"]["itb-a"]["shards"], 2);
    assert_eq!(snapshot_record["indices"]["itb-a"]["docs"], 12_000);
    assert!(
        bytes_under(&first) < 1024 * 1024,
        "the backup directory holds only the record"
    );
    let first_bytes = bytes_under(&location) - repo_before;

    // 1 % more documents, then the second backup.
    let lines: Vec<Value> = (0..125)
        .flat_map(|i| {
            [
                json!({"index": {"_index": "itb-b", "_id": format!("more{i}")}}),
                json!({"kind": "keep", "n": 1000 + i}),
            ]
        })
        .collect();
    os.bulk(&lines);
    let after = os.state();
    let second = backup("20260101_000002");
    let added = bytes_under(&location) - repo_before - first_bytes;
    println!("repository: first snapshot {first_bytes} bytes, the second added {added}");
    assert!(
        added * 10 <= first_bytes,
        "the second snapshot added {added} bytes to the repository, more than 10 % of the first's {first_bytes}"
    );

    os.wipe_fixture();
    ok(&["--root", root_arg, "restore", "--yes"], &env);
    assert_eq!(os.state(), after, "the newest backup restores to itself");
    let first_arg = first.to_str().unwrap();
    ok(
        &["--root", root_arg, "restore", "--path", first_arg, "--yes"],
        &env,
    );
    assert_eq!(os.state(), before, "the first backup restores to itself");
    ok(&["verify", "--path", second.to_str().unwrap()], &env);

    // prune: the removed backup's snapshot goes with it, the kept one stays.
    let snapshot_of = |dir: &Path| {
        manifest_json(dir)["artifacts"]["opensearch"]["details"]["repository"]["snapshot"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (old_snapshot, kept_snapshot) = (snapshot_of(&first), snapshot_of(&second));
    // list and status name the snapshots.
    let listed = text(&ok(&["--root", root_arg, "list"], &env));
    for snapshot in [&old_snapshot, &kept_snapshot] {
        assert!(
            listed.contains(&format!(
                "keeps opensearch snapshot {repo}/{snapshot} (fs repository)"
            )),
            "{listed}"
        );
    }
    let status = text(&ok(&["--root", root_arg, "status", "--offline"], &env));
    assert!(
        status.contains(&format!("in opensearch snapshot {repo}/{kept_snapshot}")),
        "{status}"
    );
    let planned = json_of(&ok(
        &[
            "--json",
            "--root",
            root_arg,
            "prune",
            "--keep-last",
            "1",
            "--dry-run",
        ],
        &env,
    ));
    assert!(
        planned.to_string().contains(&format!(
            "its opensearch snapshot {repo}/{old_snapshot} (fs repository) would be removed with it"
        )),
        "{planned:#}"
    );
    ok(&["--root", root_arg, "prune", "--keep-last", "1"], &env);
    let gone = os.call(
        reqwest::Method::GET,
        &format!("_snapshot/{repo}/{old_snapshot}"),
        None,
    );
    assert_eq!(
        gone.0, 404,
        "the pruned backup's snapshot is still there: {gone:?}"
    );
    os.get(&format!("_snapshot/{repo}/{kept_snapshot}"));
    ok(&["verify", "--path", second.to_str().unwrap()], &env);
    os.wipe_fixture();
}

/// A node that holds a primary of `index`, other than node 1 (which itbackup
/// talks to): its number.
fn node_with_a_primary(os: &Os, index: &str) -> usize {
    let shards = os.get(&format!("_cat/shards/{index}?format=json&h=prirep,node"));
    shards
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["prirep"] == "p")
        .filter_map(|s| {
            s["node"]
                .as_str()?
                .strip_prefix("testenv-node-")?
                .parse()
                .ok()
        })
        .find(|n: &usize| *n != 1)
        .unwrap_or_else(|| panic!("no primary of {index} outside node 1: {shards}"))
}

/// A node killed while the snapshot runs: the backup fails with a clear
/// error in bounded time, leaves no complete backup and no snapshot; the
/// next backup, with the node still down (the cluster yellow), works and
/// restores.
#[test]
fn a_node_killed_during_the_snapshot_fails_the_backup_and_the_next_one_works() {
    let _guard = exclusive(&[OpensearchCluster]);
    let cluster = cluster::cluster();
    let os = Os::at(&cluster.url, 1);
    let index = "itb-kill";
    os.delete(index);
    os.put(
        index,
        json!({"settings": {"number_of_shards": 3, "number_of_replicas": 1}}),
    );
    os.fill(index, 30_000);
    wait_green(&os);
    // Slow enough (per node) that the kill lands while the snapshot runs.
    let repo = "itb-repo-kill";
    fresh_repository(
        &os,
        &cluster,
        repo,
        json!({"max_snapshot_bytes_per_sec": "100kb"}),
    );
    let victim = node_with_a_primary(&os, index);

    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let args = repository_backup_args(root_arg, index, repo);
    let env = [("OPENSEARCH_URL", cluster.url.as_str())];
    let mut child = Command::new(bin())
        .args(args)
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = Instant::now();
    loop {
        let current = os.get(&format!("_snapshot/{repo}/_current"));
        if current["snapshots"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before its snapshot could be interrupted"
        );
        assert!(
            running.elapsed() < Duration::from_secs(120),
            "no snapshot started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster::node("kill", victim);
    let restart = Restart(victim);
    let killed = Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        if killed.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("the backup did not end within 5 min of node {victim}'s death");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("backup ended {:?} after the kill", killed.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(
        out.status.code(),
        Some(exit::STORE_REFUSED),
        "{}",
        text(&out)
    );
    assert!(stderr.contains("failed shard"), "{stderr}");
    assert_no_backup(root.path());
    assert_eq!(
        os.itbackup_snapshots(repo),
        Vec::<String>::new(),
        "the failed backup left its snapshot"
    );

    // The node is still down: the next backup, unthrottled, works.
    os.register_repository(repo, &cluster.repo.join(repo), json!({}));
    let health = os.get("_cluster/health?wait_for_status=yellow&timeout=120s");
    assert_ne!(health["status"], "red", "{health}");
    let (count, digest) = os.digest(index);
    ok(&args, &env);
    let dir = only_backup(root.path());
    ok(&["verify", "--path", dir.to_str().unwrap()], &env);
    os.delete(index);
    ok(
        &[
            "--root",
            root_arg,
            "restore",
            "--path",
            dir.to_str().unwrap(),
            "--yes",
        ],
        &env,
    );
    assert_eq!(os.digest(index), (count, digest));

    drop(restart);
    wait_green(&os);
    os.delete(index);
    os.delete(&format!("_snapshot/{repo}"));
}

/// The recovery drill runs on the repository method, on the cluster.
#[test]
fn the_drill_runs_on_the_repository_method() {
    let _guard = exclusive(&[OpensearchCluster]);
    let cluster = cluster::cluster();
    let os = Os::at(&cluster.url, 1);
    let repo = "itb-repo-drill";
    fresh_repository(&os, &cluster, repo, json!({}));
    let root = temp_root();
    let out = ok(
        &[
            "--json",
            "drill",
            "--root",
            root.path().to_str().unwrap(),
            "--services",
            "opensearch",
            "--opensearch-method",
            "repository",
            "--opensearch-repository",
            repo,
            "--yes",
        ],
        &[("OPENSEARCH_URL", cluster.url.as_str())],
    );
    let v = json_of(&out);
    assert_eq!(v["ok"], true, "{v:#}");
    let opensearch = &v["services"]["opensearch"];
    assert_eq!(opensearch["method"], "repository", "{v:#}");
    assert_eq!(opensearch["expected"], opensearch["restored"], "{v:#}");
    assert!(v["rto_seconds"].as_f64().unwrap() > 0.0, "{v:#}");
    assert_eq!(
        os.itbackup_snapshots(repo).len(),
        1,
        "the drill's backup keeps its snapshot"
    );
    os.delete(&format!("_snapshot/{repo}"));
}
