//! A command line of `itbackup`, built instead of written out as a literal
//! list of arguments: `Cmd::backup(root).services("postgres").method(m)`,
//! `Cmd::restore_path(dir).services("postgres").yes()`. [`Cmd::args`] gives
//! the list the plain helpers take (`itbackup`, `ok`, `fails`,
//! `kill_group_after`); [`Cmd::ok`] and friends run it directly.
use std::path::Path;
use std::process::Output;

use super::fixtures::Method;

#[derive(Clone, Debug)]
pub struct Cmd {
    args: Vec<String>,
}

fn path_arg(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
        .to_string()
}

impl Cmd {
    /// A subcommand with no arguments yet.
    pub fn new(subcommand: &str) -> Cmd {
        Cmd {
            args: vec![subcommand.to_string()],
        }
    }

    /// `--root <root> backup`.
    pub fn backup(root: &Path) -> Cmd {
        Cmd::new("backup").root(root)
    }

    /// `--root <root> restore` (the newest complete backup under the root).
    pub fn restore(root: &Path) -> Cmd {
        Cmd::new("restore").root(root)
    }

    /// `restore --path <dir>` (the backup in `dir`).
    pub fn restore_path(dir: &Path) -> Cmd {
        Cmd::new("restore").arg("--path").arg(path_arg(dir))
    }

    /// `--root <root> verify`.
    pub fn verify(root: &Path) -> Cmd {
        Cmd::new("verify").root(root)
    }

    /// `--root <root>`, a global option: it goes in front of the subcommand.
    pub fn root(mut self, root: &Path) -> Cmd {
        self.args
            .splice(0..0, ["--root".to_string(), path_arg(root)]);
        self
    }

    /// `--services <list>`.
    pub fn services(self, list: &str) -> Cmd {
        self.arg("--services").arg(list)
    }

    /// The flag and value that choose a store's backup method
    /// (`--postgres-format custom`).
    pub fn method(self, method: Method) -> Cmd {
        let mut cmd = self.arg(method.flag).arg(method.value);
        for extra in method.extra {
            cmd = cmd.arg(*extra);
        }
        cmd
    }

    /// `--yes`: no question on a terminal.
    pub fn yes(self) -> Cmd {
        self.arg("--yes")
    }

    /// One more argument, as is.
    pub fn arg(mut self, arg: impl Into<String>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    /// The arguments, for `itbackup`, `ok`, `fails` and the like.
    pub fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// Run it; any outcome.
    pub fn run(&self, env: &[(&str, &str)]) -> Output {
        super::itbackup(&self.args(), env)
    }

    /// Run it and insist on success.
    pub fn ok(&self, env: &[(&str, &str)]) -> Output {
        super::ok(&self.args(), env)
    }

    /// Run it and insist on failure with exit code `code`; its stderr.
    pub fn fails(&self, env: &[(&str, &str)], code: i32) -> String {
        super::fails(&self.args(), env, code)
    }
}

#[test]
fn builds_the_arguments_in_the_order_itbackup_takes_them() {
    let method = Method::new("--postgres-format", "plain");
    let root = Path::new("/backups");
    assert_eq!(
        Cmd::backup(root).services("postgres").method(method).args(),
        [
            "--root",
            "/backups",
            "backup",
            "--services",
            "postgres",
            "--postgres-format",
            "plain"
        ]
    );
    assert_eq!(
        Cmd::restore_path(Path::new("/backups/x"))
            .services("neo4j")
            .yes()
            .args(),
        [
            "restore",
            "--path",
            "/backups/x",
            "--services",
            "neo4j",
            "--yes"
        ]
    );
}
