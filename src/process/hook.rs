//! The operator's shell commands (`--pre-hook`, `--post-hook`, the freeze
//! and thaw hooks): run with the run's facts, no secret, and a bound.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::service::Service;

/// The facts every hook of a run is given (the pre- and post-hooks, the
/// freeze and thaw hooks): what runs, where, for which stores. The caller
/// adds the hook's own (`IT_HOOK_EVENT`, the outcome).
pub fn run_variables(
    operation: &str,
    root: &Path,
    dir: Option<&Path>,
    services: &[Service],
) -> Vec<(&'static str, String)> {
    vec![
        ("IT_HOOK_OPERATION", operation.to_string()),
        ("IT_BACKUP_ROOT", root.display().to_string()),
        (
            "IT_BACKUP_DIR",
            dir.map(|d| d.display().to_string()).unwrap_or_default(),
        ),
        (
            "IT_HOOK_SERVICES",
            services
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]
}

/// `sh -c CMD` with the run's variables; its output goes to standard error
/// (standard output is kept for `--json`). Past `timeout`, the shell and
/// everything it started (its own process group) are killed.
pub async fn run_hook(
    cmd: &str,
    which: &str,
    vars: &[(&str, String)],
    timeout: Duration,
) -> Result<()> {
    let step = which.to_string();
    tracing::info!(hook = which, command = cmd, "running");
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(std::io::stderr())
        .process_group(0)
        .kill_on_drop(true);
    // A hook is the operator's command: it gets the run's facts, no secret
    // of a store or repository.
    for name in super::inherited_secrets() {
        command.env_remove(name);
    }
    for (key, value) in vars {
        command.env(key, value);
    }
    let mut child = command.spawn().map_err(|e| {
        Error::failure(step.clone(), format!("cannot run sh: {e}"))
            .hint("is /bin/sh installed and executable?")
    })?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.map_err(|e| Error::failure(step.clone(), e.to_string()))?,
        Err(_) => {
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                // SAFETY: kill(2) on the hook's own process group, which
                // process_group(0) made with the shell's pid as its id.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            return Err(Error::failure(
                step,
                format!(
                    "`{cmd}` did not finish within {} s (--hook-timeout); it and the processes it started were killed",
                    timeout.as_secs()
                ),
            ));
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(Error::failure(
            step,
            format!("`{cmd}` exited with {status}"),
        ))
    }
}
