//! The commands as functions of the library: each takes the parsed command
//! line, resolves its settings, runs, and prints its report. `main.rs` only
//! parses, sets up logging and the runtime, and maps errors to exit codes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backup::{self, BackupRequest};
use crate::cli::{
    BackupArgs, Cli, Command, DrillArgs, KeygenArgs, ListArgs, PruneArgs, PullArgs, PushArgs,
    RestoreArgs, ScheduleArgs, StatusArgs, VerifyArgs, WalCommand,
};
use crate::config::Settings;
use crate::drill::sandbox::SandboxDrillRequest;
use crate::drill::{self, DrillRequest};
use crate::error::Result;
use crate::repository::Repository;
use crate::restore::{self, RestoreRequest};
use crate::service::Service;
use crate::stores::postgres::physical::Until;
use crate::stores::RestoreSelection;
use crate::{hooks, metrics, prune, remote, report, schedule, seal, status};

/// Set once a command has printed its report: an error after it (a drill
/// that found differences, a status alarm) is not printed again on stdout.
static REPORTED: AtomicBool = AtomicBool::new(false);

fn reported() {
    REPORTED.store(true, Ordering::Relaxed);
}

/// Whether the command printed its own report before it failed (then the
/// error is not printed again as JSON on standard output).
pub fn reported_already() -> bool {
    REPORTED.load(Ordering::Relaxed)
}

/// Run the command the command line names.
pub async fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Backup(args) => backup(cli, args).await,
        Command::Restore(args) => restore(cli, args).await,
        Command::Verify(args) => verify(cli, args).await,
        Command::Drill(args) => drill(cli, args).await,
        Command::Prune(args) => prune(cli, args).await,
        Command::Status(args) => status(cli, args).await,
        Command::Schedule(args) => schedule(cli, args).await,
        Command::List(args) => list(cli, args).await,
        Command::Push(args) => push(cli, args).await,
        Command::Pull(args) => pull(cli, args).await,
        Command::Keygen(args) => keygen(cli, args).await,
        Command::Wal(args) => wal(cli, &args.command).await,
    }
}

async fn backup(cli: &Cli, args: &BackupArgs) -> Result<()> {
    let json = cli.json;
    let freeze = crate::moment::FreezeFlags {
        consistent: args.consistent,
        freeze_hook: args.freeze_hook.clone(),
        thaw_hook: args.thaw_hook.clone(),
        max_freeze: args.max_freeze.clone(),
        on_freeze_timeout: args.on_freeze_timeout,
    };
    let settings = Settings::resolve_backup(cli, Some(&args.methods), freeze)?;
    let request = BackupRequest {
        out: args.out.clone(),
        services: args.services.clone(),
        timestamp: args.timestamp.clone(),
        dry_run: args.dry_run,
        upload: args.upload.clone(),
        no_local: args.no_local,
    };
    // Resolved once, so that the hooks know where the backup goes.
    let target = request.target(&settings.root)?;
    let ctx = hooks::RunContext::backup(&settings, &request, &target, &args.hooks, &args.monitor);
    let outcome = hooks::around(
        &ctx,
        backup::run(&settings, request, target),
        metrics::record_backup_outcome,
    )
    .await?;
    report::backup(&outcome, json);
    Ok(())
}

async fn restore(cli: &Cli, args: &RestoreArgs) -> Result<()> {
    let json = cli.json;
    let mut settings = Settings::resolve(cli, None)?;
    if let Some(file) = &args.target_config {
        settings = settings.with_target_config(file)?;
    }
    settings.stores.neo4j.with_load_flag(args.neo4j_load);
    let request = RestoreRequest {
        path: args.path.clone(),
        from: args.from.clone(),
        manifest: args.manifest.clone(),
        services: args.services.clone(),
        dry_run: args.dry_run,
        yes: args.yes,
        parallel: args.parallel(),
        selections: selections(args),
        renames: args.rename.clone(),
        until_consistent: args.until == Some(Until::Consistent),
    };
    let ctx = hooks::RunContext::restore(&settings, &request, &args.hooks, &args.monitor);
    let outcome = hooks::around(
        &ctx,
        restore::run(&settings, request),
        metrics::record_restore,
    )
    .await?;
    report::restore(&outcome, json);
    Ok(())
}

async fn verify(cli: &Cli, args: &VerifyArgs) -> Result<()> {
    let json = cli.json;
    let settings = Settings::resolve(cli, None)?;
    let outcome = crate::verify::run(&settings, args.path.as_deref(), args.from.as_deref()).await?;
    report::verify(&outcome, json);
    Ok(())
}

/// `--databases` selects PostgreSQL databases, `--indices` OpenSearch
/// indices, `--globals` the cluster-wide state of the one selected
/// (PostgreSQL's unless only --indices is given); `--until` how far
/// PostgreSQL's archived WAL is replayed. `--rename` goes to the store
/// whose backup holds FROM, once the manifest is read
/// ([`RestoreRequest::renames`]).
fn selections(args: &RestoreArgs) -> BTreeMap<Service, RestoreSelection> {
    let globals_to_opensearch = args.indices.is_some() && args.databases.is_none();
    let postgres = RestoreSelection {
        only: args.databases.clone(),
        renames: Vec::new(),
        globals: args.globals && !globals_to_opensearch,
        until: match args.until {
            Some(Until::Target(target)) => Some(target),
            // Resolved from the set's manifest (restore.rs).
            Some(Until::Consistent) | None => None,
        },
        switch: args.switch,
        keep_old: args.keep_old,
    };
    let opensearch = RestoreSelection {
        only: args.indices.clone(),
        globals: args.globals && globals_to_opensearch,
        switch: args.switch,
        keep_old: args.keep_old,
        ..RestoreSelection::default()
    };
    [
        (Service::Postgres, postgres),
        (Service::Opensearch, opensearch),
    ]
    .into_iter()
    .filter(|(_, selection)| *selection != RestoreSelection::default())
    .collect()
}

async fn drill(cli: &Cli, args: &DrillArgs) -> Result<()> {
    if let (Some(backup), Some(target_config)) = (&args.backup, &args.target_config) {
        return sandbox_drill(cli, args, backup, target_config).await;
    }
    let json = cli.json;
    let mut settings = Settings::resolve(cli, Some(&args.methods))?;
    settings.stores.neo4j.with_load_flag(args.neo4j_load);
    let request = DrillRequest {
        out: args.out.clone(),
        services: args.services.clone(),
        scale: args.scale,
        keep: args.keep,
        yes: args.yes,
        parallel: args.parallel(),
        sabotage: args.sabotage,
        json,
        upload: args.upload.clone(),
        cross_store: args.cross_store,
        consistent: args.consistent,
    };
    let ctx = hooks::RunContext::drill(&settings, &request, &args.monitor);
    // A drill that ran but found differences is a failure for the
    // webhook and the exit status, yet its RTO still goes into the metrics.
    let work = async {
        let outcome = drill::run(&settings, request).await?;
        report::drill(&outcome, json);
        reported();
        metrics::update(args.monitor.metrics_file.as_deref(), |m| {
            metrics::record_drill(m, outcome.validation.ok, outcome.validation.rto_seconds)
        });
        outcome.verdict()
    };
    hooks::around(&ctx, work, |_, _| {}).await?;
    Ok(())
}

/// `drill --backup … --target-config FILE`: a real backup into a sandbox.
async fn sandbox_drill(
    cli: &Cli,
    args: &DrillArgs,
    backup: &str,
    target_config: &std::path::Path,
) -> Result<()> {
    let json = cli.json;
    let settings = Settings::resolve(cli, None)?;
    let request = SandboxDrillRequest {
        backup: backup.to_string(),
        from: args.from.clone(),
        target_config: target_config.to_path_buf(),
        services: args.services.clone(),
        keep: args.keep,
        parallel: args.parallel(),
        out: args.out.clone(),
        json,
        neo4j_load: args.neo4j_load,
    };
    let ctx = hooks::RunContext::sandbox_drill(&settings, &args.monitor);
    let work = async {
        let outcome = drill::sandbox::run(&settings, request).await?;
        report::sandbox_drill(&outcome, json);
        reported();
        metrics::update(args.monitor.metrics_file.as_deref(), |m| {
            metrics::record_drill(m, outcome.validation.ok, outcome.validation.rto_seconds)
        });
        outcome.verdict()
    };
    hooks::around(&ctx, work, |_, _| {}).await?;
    Ok(())
}

async fn prune(cli: &Cli, args: &PruneArgs) -> Result<()> {
    let json = cli.json;
    let settings = Settings::resolve(cli, None)?;
    let request = prune::request(&args.retention, args.dry_run, &settings.stores);
    let repository = Repository::at(&settings.root, args.from.as_deref())?;
    let outcome = prune::run(&repository, &request).await?;
    report::prune(&outcome, json);
    Ok(())
}

async fn status(cli: &Cli, args: &StatusArgs) -> Result<()> {
    let json = cli.json;
    let settings = Settings::resolve(cli, None)?;
    let status = status::run(&settings, &status::request(args)).await?;
    report::status(&status, json);
    reported();
    status::finish(&status, &settings, &args.monitor).await?;
    Ok(())
}

async fn schedule(cli: &Cli, args: &ScheduleArgs) -> Result<()> {
    let json = cli.json;
    let settings = Settings::resolve(cli, Some(&args.methods))?;
    schedule::run(&settings, args, json).await?;
    Ok(())
}

async fn list(cli: &Cli, args: &ListArgs) -> Result<()> {
    let json = cli.json;
    let settings = Settings::resolve(cli, None)?;
    let (repository, _) = Repository::locate(&settings.root, args.from.as_deref()).await?;
    let mut backups = repository.backups().await?;
    crate::stores::postgres::physical::fill_wal_reach(
        &repository,
        &mut backups,
        settings.identity.as_deref(),
    )
    .await?;
    crate::stores::fill_kept_outside(&mut backups, &settings.stores);
    match &repository {
        Repository::Local(root) => report::list(root, &backups, json),
        Repository::Remote(remote) => report::list_remote(&remote.url, &backups, json),
    }
    Ok(())
}

async fn push(cli: &Cli, args: &PushArgs) -> Result<()> {
    let json = cli.json;
    // For the repository's timeouts ([remote] in the config file).
    Settings::resolve(cli, None)?;
    let location = remote::Remote::open(&args.url)?;
    let outcome = location.push(&args.dir).await?;
    report::push(&outcome, json);
    Ok(())
}

async fn pull(cli: &Cli, args: &PullArgs) -> Result<()> {
    let json = cli.json;
    let settings = Settings::resolve(cli, None)?;
    let parent = args.dir.clone().unwrap_or_else(|| settings.root.clone());
    let outcome = remote::pull(&args.url, &parent).await?;
    report::pull(&outcome, json);
    Ok(())
}

async fn keygen(cli: &Cli, args: &KeygenArgs) -> Result<()> {
    let json = cli.json;
    let recipient = seal::write_new_identity(&args.out)?;
    report::keygen(&args.out, &recipient, json);
    Ok(())
}

/// `wal push` / `wal fetch`: PostgreSQL's archive_command and restore_command.
async fn wal(cli: &Cli, command: &WalCommand) -> Result<()> {
    use crate::stores::postgres::wal::{self, FetchRequest, PushRequest, WalRequest};
    let settings = Settings::resolve(cli, None)?;
    let request = match command {
        WalCommand::Push(a) => WalRequest::Push(PushRequest {
            path: a.path.clone(),
            upload: a.upload.clone(),
            no_local: a.no_local,
        }),
        WalCommand::Fetch(a) => WalRequest::Fetch(FetchRequest {
            name: a.name.clone(),
            dest: a.dest.clone(),
            from: a.from.clone(),
        }),
    };
    let given = settings.root != std::path::Path::new(crate::config::DEFAULT_ROOT);
    let keys = wal::WalSettings {
        root: given.then(|| settings.root.clone()),
        encrypt_to: settings.encrypt_to,
        identity: settings.identity,
    };
    wal::run(&keys, &request, cli.json).await
}
