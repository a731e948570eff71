//! The freeze of a coordinated backup (`backup --consistent`): the
//! operator's freeze hook pauses the writers, the stores take their
//! positions (`moment.rs`), the thaw hook lets the writers go, and the
//! long work goes on. The whole freeze is bounded by `max_freeze`; a thaw
//! hook that fails is retried and, failing still, fails the run loudly.
//! See docs/consistency.md.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::consistency::FreezeRecord;
use crate::error::{Error, Result};
use crate::moment::{FreezeSettings, Moment, OnFreezeTimeout};
use crate::process::run_hook;
use crate::service::Service;

/// How long one run of the thaw hook may take.
const THAW_TIMEOUT: Duration = Duration::from_secs(60);
/// Pauses before the thaw hook's second and third tries.
const THAW_RETRIES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

/// Run `work` (the stores' backups, given the moment to reach) inside the
/// freeze `settings` ask for; its output, and the freeze's record for the
/// manifest (None for a backup that is not coordinated). `vars` are the
/// hooks' environment (`IT_HOOK_EVENT` is added).
pub async fn coordinate<T, F>(
    settings: &FreezeSettings,
    services: &[Service],
    vars: &[(&'static str, String)],
    work: impl FnOnce(Moment) -> F,
) -> Result<(T, Option<FreezeRecord>)>
where
    F: Future<Output = T>,
{
    if !settings.consistent {
        return Ok((work(Moment::none()).await, None));
    }
    let bound = settings.max_freeze;
    let started = Instant::now();
    let from = jiff::Timestamp::now();
    let hooks = settings.freeze_hook.is_some();
    let record = |outcome: &str, outside: Vec<Service>| FreezeRecord {
        outcome: outcome.into(),
        hooks,
        from: from.to_string(),
        until: jiff::Timestamp::now().to_string(),
        seconds: started.elapsed().as_millis() as f64 / 1000.0,
        max_seconds: bound.as_secs_f64(),
        outside,
    };

    if let Some(freeze) = &settings.freeze_hook {
        if let Err(e) = run_hook(freeze, "freeze hook", &event(vars, "freeze"), bound).await {
            // The hook may have paused some writers before it failed or hung.
            thaw(settings, vars).await?;
            let timed_out = started.elapsed() >= bound;
            if !timed_out || settings.on_timeout == OnFreezeTimeout::Fail {
                return Err(freeze_failed(e, timed_out, bound));
            }
            tracing::warn!(error = %e, "the freeze hook did not return within --max-freeze; the writers were thawed and the backup goes on WITHOUT a consistent moment (--on-freeze-timeout continue)");
            let exceeded = record("exceeded", services.to_vec());
            let outcome = work(Moment::none()).await;
            return Ok((outcome, Some(exceeded)));
        }
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "writers paused");
    }

    let moment = Moment::of(services);
    let stores = work(moment.clone());
    let freeze = async {
        let in_time = tokio::time::timeout(
            bound.saturating_sub(started.elapsed()),
            moment.all_reached(),
        )
        .await
        .is_ok();
        let outside = moment.waiting();
        thaw(settings, vars).await?;
        if in_time {
            let record = record("held", Vec::new());
            tracing::info!(
                seconds = record.seconds,
                "every store took its position inside the freeze; writers thawed"
            );
            return Ok(record);
        }
        let names = outside
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match settings.on_timeout {
            OnFreezeTimeout::Fail => Err(Error::failure(
                "freeze",
                format!(
                    "{names} had not taken its position when the freeze reached --max-freeze ({} s); the writers were thawed and the backup was stopped",
                    bound.as_secs_f64()
                ),
            )
            .hint(format!(
                "allow a longer freeze (--max-freeze, max_freeze under [consistency]), or back up {names} with a method that takes its position at once (docs/consistency.md), or use --on-freeze-timeout continue to keep the backup without the guarantee"
            ))),
            OnFreezeTimeout::Continue => {
                tracing::warn!(stores = %names, "the freeze reached --max-freeze before these stores took their positions; the writers were thawed and the backup goes on WITHOUT a consistent moment (--on-freeze-timeout continue)");
                Ok(record("exceeded", outside))
            }
        }
    };
    // A failed freeze drops the stores' work: their tools are killed and the
    // run's usual clean-up removes what they wrote.
    let (outcome, record) = futures::future::try_join(async { Ok(stores.await) }, freeze).await?;
    Ok((outcome, Some(record)))
}

fn event(vars: &[(&'static str, String)], name: &str) -> Vec<(&'static str, String)> {
    let mut vars = vars.to_vec();
    vars.push(("IT_HOOK_EVENT", name.to_string()));
    vars
}

fn freeze_failed(e: Error, timed_out: bool, bound: Duration) -> Error {
    let what = if timed_out {
        format!(
            "the freeze hook did not return within --max-freeze ({} s) and was killed",
            bound.as_secs_f64()
        )
    } else {
        "the freeze hook failed".to_string()
    };
    Error::failure("freeze", format!("{what}: {e}; the thaw hook ran, nothing was backed up"))
        .hint("the freeze hook must return once the writers are paused; check it by hand, or allow it longer with --max-freeze")
}

/// Run the thaw hook, again after a failure: a platform left frozen is an
/// outage. Each failure is logged as an error; the last one fails the run.
async fn thaw(settings: &FreezeSettings, vars: &[(&'static str, String)]) -> Result<()> {
    let Some(cmd) = &settings.thaw_hook else {
        return Ok(());
    };
    let vars = event(vars, "thaw");
    let mut pauses = THAW_RETRIES.iter();
    let mut tries = 1;
    loop {
        match run_hook(cmd, "thaw hook", &vars, THAW_TIMEOUT).await {
            Ok(()) => return Ok(()),
            Err(e) => match pauses.next() {
                Some(pause) => {
                    tracing::error!(error = %e, try_number = tries, "THE THAW HOOK FAILED: the writers may still be paused; trying again");
                    tokio::time::sleep(*pause).await;
                    tries += 1;
                }
                None => {
                    tracing::error!(error = %e, "THE THAW HOOK FAILED {tries} TIMES: the writers may still be paused");
                    return Err(Error::failure(
                        "thaw",
                        format!("the thaw hook failed {tries} times, the last: {e}; THE WRITERS MAY STILL BE PAUSED"),
                    )
                    .hint(format!("run the thaw hook by hand now: {cmd}")));
                }
            },
        }
    }
}
