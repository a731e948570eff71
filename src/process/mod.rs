//! Running a store's own tools (pg_dump, neo4j-admin, tar …) as child processes.
//!
//! Secrets reach children only through their environment, never argv; the
//! printable form of a command masks them, so dry runs and logs can show
//! exactly what runs without showing a password. Standard error is kept as a
//! bounded tail for error messages, so a chatty tool cannot grow our memory.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::secret::Secret;

mod hook;
mod run;

pub use hook::{run_hook, run_variables};
pub use run::*;

/// Lines of a tool's standard error kept for the error message.
const STDERR_TAIL_LINES: usize = 30;

#[derive(Clone)]
enum EnvValue {
    Plain(String),
    Secret(Secret),
}

/// A command line to run, with its environment; printable with secrets masked.
#[derive(Clone)]
pub struct ToolCommand {
    pub program: String,
    pub args: Vec<OsString>,
    env: Vec<(String, EnvValue)>,
    /// Where it runs (default: where itbackup runs).
    dir: Option<std::path::PathBuf>,
}

impl ToolCommand {
    pub fn new(program: impl Into<String>) -> Self {
        ToolCommand {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Run in `dir`: a tool given file names relative to it sees no
    /// characters of the directory's path it could misread.
    pub fn current_dir(mut self, dir: &std::path::Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env
            .push((key.to_string(), EnvValue::Plain(value.into())));
        self
    }

    pub fn secret_env(mut self, key: &str, value: &Secret) -> Self {
        self.env
            .push((key.to_string(), EnvValue::Secret(value.clone())));
        self
    }

    /// This command with `other`'s environment added (secrets stay secrets).
    pub fn with_env_of(mut self, other: &ToolCommand) -> Self {
        self.env.extend(other.env.iter().cloned());
        self
    }

    /// Names of the variables set for the child (for wrapping in `docker compose exec -e`).
    pub fn env_names(&self) -> impl Iterator<Item = &str> {
        self.env.iter().map(|(k, _)| k.as_str())
    }

    fn to_std(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        // Only this command's own secrets: a PostgreSQL tool gets PGPASSWORD
        // because its command sets it, never a repository key or another
        // store's password from our environment.
        for name in inherited_secrets() {
            if !self.env.iter().any(|(key, _)| *key == name) {
                cmd.env_remove(name);
            }
        }
        for (key, value) in &self.env {
            match value {
                EnvValue::Plain(v) => {
                    cmd.env(key, v);
                }
                EnvValue::Secret(s) => {
                    cmd.env(key, s.expose());
                }
            }
        }
        cmd
    }

    /// Start the command with the given stdin/stdout, stderr captured as a tail.
    pub fn spawn(&self, stdin: Stdio, stdout: Stdio) -> io::Result<Running> {
        tracing::debug!(command = %self, "running");
        let mut cmd = self.to_std();
        // A tool must not outlive us: if itbackup is killed, pg_dump & co. die too,
        // instead of writing on into files a later run may reuse.
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let program = self.program.clone();
        let tail = std::thread::spawn(move || collect_tail(stderr, &program));
        Ok(Running {
            child,
            tail: Some(tail),
            display: self.to_string(),
        })
    }
}

impl fmt::Display for ToolCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.env {
            match value {
                EnvValue::Plain(v) => write!(f, "{key}={} ", shell_quote(v))?,
                EnvValue::Secret(_) => write!(f, "{key}=*** ")?,
            }
        }
        write!(f, "{}", shell_quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(&arg.to_string_lossy()))?;
        }
        Ok(())
    }
}

/// Variables that hold a password or key of a store or of a repository.
const SECRET_VARIABLES: &[&str] = &[
    "PGPASSWORD",
    "OPENSEARCH_PASSWORD",
    "NEO4J_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
];

/// Variables that hold a URL, secret when it carries credentials.
const URL_VARIABLES: &[&str] = &["OPENSEARCH_URL", "NEO4J_URI", "IT_NOTIFY_URL"];

/// The variables of our own environment that carry a secret: none of them
/// reaches a child (a store's tool, a hook) unless its command sets it.
pub fn inherited_secrets() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = SECRET_VARIABLES
        .iter()
        .copied()
        .filter(|name| std::env::var_os(name).is_some())
        .collect();
    names.extend(
        URL_VARIABLES
            .iter()
            .copied()
            .filter(|name| std::env::var(name).is_ok_and(|url| mask_userinfo(&url) != url)),
    );
    names
}

/// `text` with the credentials of every URL in it masked: the password of
/// `scheme://user:password@host` becomes `***` (`user:***@host`), a lone
/// user part, often a token, too (`***@host`). The one function for showing
/// an endpoint (OPENSEARCH_URL, NEO4J_URI, repository URLs) or a message
/// that may quote one, in logs, errors, hints and plans.
pub fn mask_userinfo(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        shown.push_str(head);
        let end = tail
            .find(|c: char| "/?#\"'<>`()[]{}".contains(c) || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                match authority[..at].split_once(':') {
                    Some((user, _password)) => {
                        shown.push_str(user);
                        shown.push_str(":***");
                    }
                    None => shown.push_str("***"),
                }
                shown.push_str(&authority[at..]);
            }
            None => shown.push_str(authority),
        }
        rest = &tail[end..];
    }
    shown.push_str(rest);
    shown
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn collect_tail(stderr: impl Read, program: &str) -> String {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    for line in BufReader::new(stderr).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        tracing::debug!(target: "itbackup::tool", "{program}: {line}");
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    Vec::from(tail).join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use crate::service::Service;
    use std::io::Write;
    use std::process::ExitStatus;
    use std::time::Duration;

    /// A header check whose tool hangs without reading (a stuck JVM) is
    /// stopped at its bound; one that reads its head and exits succeeds
    /// though the feed had more to give.
    #[test]
    fn a_head_reader_that_hangs_is_stopped_at_its_bound() {
        let feed_forever = |stdin: &mut dyn Write| loop {
            stdin.write_all(&[0u8; 65536])?;
        };
        let started = std::time::Instant::now();
        let hung = run_feeding_head(
            &ToolCommand::new("sleep").arg("60"),
            Service::Neo4j,
            "check",
            Duration::from_secs(1),
            feed_forever,
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(hung.message.contains("did not finish within 1 s"), "{hung}");
        assert!(super::hung(&hung));
        run_feeding_head(
            &ToolCommand::new("head").args(["-c", "10"]),
            Service::Neo4j,
            "check",
            Duration::from_secs(30),
            feed_forever,
        )
        .unwrap();
    }

    /// A version check whose tool never answers (a JVM stuck starting) is
    /// stopped at its bound, its output abandoned; one that answers is read.
    #[test]
    fn a_short_output_that_hangs_is_stopped_at_its_bound() {
        let started = std::time::Instant::now();
        let hung = output_within(
            &ToolCommand::new("sh").args(["-c", "echo partial; exec sleep 60"]),
            Service::Neo4j,
            "check neo4j-admin",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(hung.message.contains("did not finish within 1 s"), "{hung}");
        let answer = output_within(
            &ToolCommand::new("echo").arg("5.26.12"),
            Service::Neo4j,
            "check neo4j-admin",
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(answer.trim(), "5.26.12");
    }

    #[test]
    fn display_masks_secrets_and_quotes() {
        let cmd = ToolCommand::new("pg_dump")
            .env("PGHOST", "db")
            .secret_env("PGPASSWORD", &Secret::new("s3cret"))
            .args(["-Fc", "my db"]);
        let shown = cmd.to_string();
        assert_eq!(shown, "PGHOST=db PGPASSWORD=*** pg_dump -Fc 'my db'");
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn credentials_in_urls_are_masked_wherever_they_appear() {
        assert_eq!(
            mask_userinfo("http://admin:pw@host:9200/x?y"),
            "http://admin:***@host:9200/x?y"
        );
        assert_eq!(
            mask_userinfo(
                "error sending request for url (http://u:p@h/_cat): refused; bolt://tok@n:7687"
            ),
            "error sending request for url (http://u:***@h/_cat): refused; bolt://***@n:7687"
        );
        assert_eq!(mask_userinfo("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(mask_userinfo("no url: a@b"), "no url: a@b");
    }

    #[test]
    fn failing_tool_reports_its_stderr() {
        let cmd = ToolCommand::new("sh").args(["-c", "echo boom >&2; exit 3"]);
        let err = output(&cmd, Service::Postgres, "probe").unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(err.kind, Kind::StoreRefused);
    }

    #[test]
    fn a_failed_tool_is_classified_by_its_end() {
        use std::os::unix::process::ExitStatusExt;
        let exited = ExitStatus::from_raw(1 << 8);
        let kind = |said: &str| tool_failure_kind(exited, said);
        assert_eq!(
            kind("pg_dump: error: connection to server at \"db\" (10.0.0.1), port 5432 failed: FATAL:  password authentication failed for user \"postgres\""),
            Kind::Authentication
        );
        assert_eq!(
            kind("psql: error: connection to server at \"127.0.0.1\", port 1 failed: Connection refused"),
            Kind::Unreachable
        );
        assert_eq!(
            kind("pg_restore: error: could not extend file \"base/1/2\": No space left on device"),
            Kind::NoSpace
        );
        assert_eq!(
            kind("ERROR:  relation \"x\" already exists"),
            Kind::StoreRefused
        );
        assert_eq!(
            tool_failure_kind(ExitStatus::from_raw(libc::SIGTERM), ""),
            Kind::Interrupted
        );
    }
}
