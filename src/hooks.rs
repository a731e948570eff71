//! What happens around a run: the operator's pre- and post-hooks, the metrics
//! file, and the failure webhook. [`around`] wraps backup, restore, drill and
//! the scheduled runs the same way, so `main.rs` stays wiring only.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::{HookArgs, MonitorArgs};
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::process::{run_hook, run_variables};
use crate::service::{Service, ServiceList};

/// How long the webhook may take; a hung receiver must not hold up the run.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(15);

/// One run as hooks, metrics and the webhook see it.
pub struct RunContext<'a> {
    /// `backup`, `restore`, `drill`, `status`.
    pub operation: &'static str,
    pub hooks: Option<&'a HookArgs>,
    pub monitor: &'a MonitorArgs,
    pub root: PathBuf,
    /// The backup directory written or read, when known beforehand.
    pub dir: Option<PathBuf>,
    pub services: Vec<Service>,
    /// A dry run changes nothing: no hooks, no metrics, no notification.
    pub dry_run: bool,
}

impl RunContext<'_> {
    fn variables(&self) -> Vec<(&'static str, String)> {
        run_variables(
            self.operation,
            &self.root,
            self.dir.as_deref(),
            &self.services,
        )
    }
}

/// Run `work` between the hooks; then write the metrics (`record` adds the
/// operation's own series on success) and, on failure, call the webhook.
///
/// A failing pre-hook aborts before `work` starts. The post-hook runs after
/// success and failure alike (maintenance mode must end either way); when it
/// fails after a successful run, the run reports failure.
pub async fn around<T>(
    ctx: &RunContext<'_>,
    work: impl Future<Output = Result<T>>,
    record: impl FnOnce(&mut Metrics, &T),
) -> Result<T> {
    if ctx.dry_run {
        return work.await;
    }
    let started = Instant::now();
    let result = run_between_hooks(ctx, work).await;
    let seconds = started.elapsed().as_secs_f64();
    metrics::update(ctx.monitor.metrics_file.as_deref(), |m| {
        metrics::record_run(m, ctx.operation, seconds, result.is_ok());
        if let Ok(value) = &result {
            record(m, value);
        }
    });
    if let (Err(err), Some(url)) = (&result, &ctx.monitor.notify_url) {
        notify_failure(url, ctx, err).await;
    }
    result
}

async fn run_between_hooks<T>(
    ctx: &RunContext<'_>,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let hooks = ctx.hooks;
    // Read only when a hook runs, that is when `hooks` is there.
    let timeout = hooks.map_or(Duration::ZERO, |h| Duration::from_secs(h.hook_timeout));
    if let Some(cmd) = hooks.and_then(|h| h.pre_hook.as_deref()) {
        let mut vars = ctx.variables();
        vars.push(("IT_HOOK_EVENT", format!("pre-{}", ctx.operation)));
        run_hook(cmd, "pre-hook", &vars, timeout)
            .await
            .map_err(|e| e.hint("the pre-hook failed, so nothing was changed; fix the hook or run without --pre-hook"))?;
    }
    let result = work.await;
    if let Some(cmd) = hooks.and_then(|h| h.post_hook.as_deref()) {
        let mut vars = ctx.variables();
        vars.push(("IT_HOOK_EVENT", format!("post-{}", ctx.operation)));
        vars.push((
            "IT_HOOK_STATUS",
            if result.is_ok() { "success" } else { "failure" }.to_string(),
        ));
        vars.push((
            "IT_HOOK_ERROR",
            result
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        ));
        let post = run_hook(cmd, "post-hook", &vars, timeout).await;
        match (&result, post) {
            (Ok(_), Err(e)) => {
                return Err(e.hint(format!(
                    "the {} itself succeeded; only the post-hook failed",
                    ctx.operation
                )))
            }
            (Err(_), Err(e)) => tracing::error!(error = %e, "the post-hook failed too"),
            _ => {}
        }
    }
    result
}

/// The webhook's JSON body for a failed run.
pub fn failure_payload(ctx: &RunContext<'_>, err: &Error) -> serde_json::Value {
    json!({
        "event": "itbackup.failure",
        "operation": ctx.operation,
        "ok": false,
        "host": crate::environment::hostname(),
        "root": ctx.root,
        "dir": ctx.dir,
        "services": ctx.services,
        "error": {
            "service": err.service,
            "step": err.step,
            "message": err.message,
            "hint": err.hint,
            "text": err.to_string(),
        },
        "time": jiff::Timestamp::now().to_string(),
        "tool": { "name": "itbackup", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// POST the failure to the webhook. Failing to notify is logged, never
/// allowed to hide the failure it was about.
pub async fn notify_failure(url: &str, ctx: &RunContext<'_>, err: &Error) {
    let payload = failure_payload(ctx, err);
    // Webhook URLs often carry a token: log only where it goes.
    let shown = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.to_string()))
        .unwrap_or_else(|| "the webhook".into());
    let client = match reqwest::Client::builder().timeout(NOTIFY_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client");
            return;
        }
    };
    match client.post(url).json(&payload).send().await {
        Ok(response) if response.status().is_success() => {
            tracing::info!(to = %shown, "failure notification sent");
        }
        Ok(response) => {
            tracing::error!(to = %shown, status = %response.status(), "the webhook refused the failure notification");
        }
        Err(e) => {
            tracing::error!(to = %shown, error = %e.without_url(), "cannot send the failure notification");
        }
    }
}

impl<'a> RunContext<'a> {
    /// A backup's hooks are told its [`BackupTarget`]: the directory it is
    /// really written to, staged or not.
    ///
    /// [`BackupTarget`]: crate::backup_target::BackupTarget
    pub fn backup(
        settings: &crate::config::Settings,
        request: &crate::backup::BackupRequest,
        target: &crate::backup_target::BackupTarget,
        hooks: &'a HookArgs,
        monitor: &'a MonitorArgs,
    ) -> Self {
        RunContext {
            operation: "backup",
            hooks: Some(hooks),
            monitor,
            root: settings.root.clone(),
            dir: Some(target.dir.clone()),
            services: ServiceList::or_all(request.services.as_ref()),
            dry_run: request.dry_run,
        }
    }

    pub fn restore(
        settings: &crate::config::Settings,
        request: &crate::restore::RestoreRequest,
        hooks: &'a HookArgs,
        monitor: &'a MonitorArgs,
    ) -> Self {
        // The directory as restore will find it; when it cannot be found the
        // restore fails on its own, with the better message.
        let located = crate::catalog::locate(
            &settings.root,
            request.path.as_deref(),
            request.manifest.as_deref(),
        )
        .ok();
        let held = located.iter().flat_map(|(_, m)| m.services.keys().copied());
        let services = ServiceList::within(request.services.as_ref(), held).unwrap_or_default();
        RunContext {
            operation: "restore",
            hooks: Some(hooks),
            monitor,
            root: settings.root.clone(),
            dir: located.map(|(dir, _)| dir),
            services,
            dry_run: request.dry_run,
        }
    }

    pub fn drill(
        settings: &crate::config::Settings,
        request: &crate::drill::DrillRequest,
        monitor: &'a MonitorArgs,
    ) -> Self {
        RunContext {
            operation: "drill",
            hooks: None,
            monitor,
            root: settings.root.clone(),
            dir: request.out.clone(),
            services: ServiceList::or_all(request.services.as_ref()),
            dry_run: false,
        }
    }

    /// A sandbox drill (`drill --backup`): its metrics and webhook.
    pub fn sandbox_drill(settings: &crate::config::Settings, monitor: &'a MonitorArgs) -> Self {
        RunContext {
            operation: "drill",
            hooks: None,
            monitor,
            root: settings.root.clone(),
            dir: None,
            services: Vec::new(),
            dry_run: false,
        }
    }
}
