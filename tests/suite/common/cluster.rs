//! The three-node OpenSearch cluster `make test` starts beside the stack
//! (its own testenv state directory and ports, named by `IT_CLUSTER_*`):
//! its node URLs and shared `path.repo`, read from `testenv/env`, and
//! `testenv/opensearch-node` to kill or start one of its nodes.

use std::path::PathBuf;
use std::process::Command;

use super::required_env;

pub struct Cluster {
    /// Node 1: where itbackup and the tests talk to the cluster.
    pub url: String,
    pub nodes: Vec<String>,
    /// The `path.repo` every node shares.
    pub repo: PathBuf,
}

/// A testenv command run on the cluster's stack.
fn testenv(script: &str) -> Command {
    let mut command = Command::new(super::repo_root().join("testenv").join(script));
    command
        .env("IT_TESTENV_DIR", required_env("IT_CLUSTER_TESTENV_DIR"))
        .env(
            "IT_TESTENV_OPENSEARCH_PORT",
            required_env("IT_CLUSTER_OPENSEARCH_PORT"),
        )
        .env(
            "IT_TESTENV_OPENSEARCH_NODES",
            required_env("IT_CLUSTER_OPENSEARCH_NODES"),
        );
    command
}

/// The cluster, as `testenv/env` describes it; panics when `make test` did
/// not start one (the variables are missing) or it does not answer.
pub fn cluster() -> Cluster {
    let out = testenv("env").output().expect("run testenv/env");
    assert!(out.status.success(), "{}", super::text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("testenv/env of the cluster sets no {name}:\n{text}"))
            .to_string()
    };
    let cluster = Cluster {
        url: var("OPENSEARCH_URL"),
        nodes: var("IT_OPENSEARCH_NODES")
            .split(',')
            .map(String::from)
            .collect(),
        repo: PathBuf::from(var("IT_OPENSEARCH_REPO")),
    };
    let health = format!(
        "{}/_cluster/health?wait_for_nodes={}&wait_for_status=yellow&timeout=60s",
        cluster.url,
        cluster.nodes.len()
    );
    let answer = reqwest::blocking::Client::new()
        .get(&health)
        .timeout(std::time::Duration::from_secs(90))
        .send()
        .unwrap_or_else(|e| {
            panic!(
                "the OpenSearch test cluster at {} is not answering: {e}",
                cluster.url
            )
        });
    assert!(
        answer.status().is_success(),
        "the OpenSearch test cluster has not {} nodes: {}",
        cluster.nodes.len(),
        answer.text().unwrap_or_default()
    );
    cluster
}

/// `testenv/opensearch-node ACTION NODE` (kill, stop, start, pid) on the cluster.
pub fn node(action: &str, node: usize) {
    let out = testenv("opensearch-node")
        .args([action, &node.to_string()])
        .output()
        .expect("run testenv/opensearch-node");
    assert!(
        out.status.success(),
        "opensearch-node {action} {node}: {}",
        super::text(&out)
    );
}
