//! Secrets stay where they belong: a password inside a server URL is never
//! printed (logs, errors, hints, plans), and each child tool gets only the
//! secrets of its own store.

use crate::common;

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
    // A real backup of OpenSearch; the other runs reach only 127.0.0.1:1 or none.
    let _guard = exclusive(&[Opensearch]);
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
        assert_eq!(out.status.code(), Some(exit::UNREACHABLE), "{}", text(&out));
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
        assert_eq!(out.status.code(), Some(exit::UNREACHABLE), "{}", text(&out));
        assert_unprinted(&format!("{service} unreachable, --json"), &out);
    }
    let out = itbackup(&["--root", root_arg, "status"], &unreachable);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_unprinted("status", &out);
}

/// Child tools (pg_dump, psql, pg_restore, vacuumdb …) and hooks inherited
/// AWS_SECRET_ACCESS_KEY, NEO4J_PASSWORD and OPENSEARCH_PASSWORD: each child
/// gets only what it needs, PostgreSQL's tools PGPASSWORD, a hook none.
#[test]
fn each_child_gets_only_the_secrets_of_its_own_store() {
    let _guard = exclusive(&[Postgres]);
    let root = temp_root();
    let root_arg = root.path().to_str().unwrap();
    let spy = temp_root();
    let bin = spy.path().join("bin");
    let seen = spy.path().join("seen");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&seen).unwrap();
    let tools = ["pg_dump", "pg_dumpall", "psql", "pg_restore", "vacuumdb"];
    for tool in tools {
        let wrapper = bin.join(tool);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nenv >> '{}/{tool}.env'\nexec '{}' \"$@\"\n",
                seen.display(),
                pg_tool(tool)
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let foreign = [
        ("AWS_SECRET_ACCESS_KEY", "aws-Secret-991"),
        ("AWS_SESSION_TOKEN", "aws-Token-992"),
        ("OPENSEARCH_PASSWORD", "os-Secret-993"),
        ("NEO4J_PASSWORD", "neo-Secret-994"),
        ("OPENSEARCH_URL", "http://admin:url-Secret-995@127.0.0.1:1"),
    ];
    let bin_arg = bin.to_str().unwrap().to_string();
    let mut env: Vec<(&str, &str)> = foreign.to_vec();
    env.push(("IT_PG_BIN", &bin_arg));
    let hook = format!("env > '{}/hook.env'", seen.display());
    ok(
        &[
            "--root",
            root_arg,
            "backup",
            "--services",
            "postgres",
            "--pre-hook",
            &hook,
        ],
        &env,
    );
    ok(&["--root", root_arg, "restore", "--yes"], &env);

    let pg_password = required_env("PGPASSWORD");
    let mut children = 0;
    for entry in std::fs::read_dir(&seen).unwrap() {
        let path = entry.unwrap().path();
        let dump = std::fs::read_to_string(&path).unwrap();
        children += 1;
        for (name, value) in foreign {
            assert!(!dump.contains(value), "{} inherited {name}", path.display());
        }
        let is_hook = path.ends_with("hook.env");
        assert_eq!(
            dump.contains(&format!("PGPASSWORD={pg_password}")),
            !is_hook,
            "{}: PGPASSWORD for PostgreSQL's tools only",
            path.display()
        );
    }
    // The hook, and at least pg_dump and the restore's tools, were seen.
    assert!(children >= 3, "only {children} children were seen");
    assert!(seen.join("hook.env").exists() && seen.join("pg_dump.env").exists());
}
