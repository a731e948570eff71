//! Secrets stay where they belong: a password inside a server URL is never
//! printed (logs, errors, hints, plans), and each child tool gets only the
//! secrets of its own store.

mod common;

use common::*;

const SECRET: &str = "Url-Secret-7731";

/// `url` with `admin:SECRET@` as its userinfo.
fn with_password(url: &str) -> String {
    url.replacen("://", &format!("://admin:{SECRET}@"), 1)
}

fn assert_unprinted(what: &str, out: &std::process::Output) {
    let all = text(out);
    assert!(
        !all.contains(SECRET),
        "{what}: the password in the URL was printed\n{all}"
    );
}

/// A password inside OPENSEARCH_URL was printed in the INFO log
/// (`endpoint=…`), in error hints and in the --dry-run plan; one inside
/// NEO4J_URI in the error message.
#[test]
fn a_password_inside_a_server_url_is_never_printed() {
    let _guard = serial();
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let os_url = with_password(&required_env("OPENSEARCH_URL"));
    let neo_uri = with_password(&required_env("NEO4J_URI"));
    let reachable = [
        ("OPENSEARCH_URL", os_url.as_str()),
        ("NEO4J_URI", neo_uri.as_str()),
        ("RUST_LOG", "itbackup=debug"),
    ];
    for json in [false, true] {
        let mut args = vec!["--root", root_arg];
        if json {
            args.push("--json");
        }
        args.extend(["backup", "--dry-run", "--services", "opensearch,neo4j"]);
        let out = itbackup(&args, &reachable);
        assert!(out.status.success(), "{}", text(&out));
        assert_unprinted("backup --dry-run", &out);
        assert!(
            text(&out).contains("admin:***@"),
            "the plan shows the masked URL\n{}",
            text(&out)
        );
    }
    // A real backup logs the endpoint it reached.
    let out = itbackup(
        &["--root", root_arg, "backup", "--services", "opensearch"],
        &reachable,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_unprinted("backup", &out);

    let unreachable = [
        ("OPENSEARCH_URL", "http://admin:Url-Secret-7731@127.0.0.1:1"),
        ("NEO4J_URI", "bolt://admin:Url-Secret-7731@127.0.0.1:1"),
        ("RUST_LOG", "itbackup=debug"),
    ];
    for service in ["opensearch", "neo4j"] {
        let out = itbackup(
            &["--root", root_arg, "backup", "--services", service],
            &unreachable,
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_unprinted(&format!("{service} unreachable"), &out);
        let out = itbackup(
            &[
                "--root",
                root_arg,
                "--json",
                "backup",
                "--services",
                service,
            ],
            &unreachable,
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_unprinted(&format!("{service} unreachable, --json"), &out);
    }
    let out = itbackup(&["--root", root_arg, "status"], &unreachable);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_unprinted("status", &out);
}
