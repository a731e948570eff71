//! Entry point: parse, run, print, map errors to exit codes: 0 ok, else the
//! error's kind decides (1 failure, 2 usage, 3 and up for the kinds a script
//! may want to tell apart; docs/exit-codes.md).

use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

use itbackup::backup::{self, BackupRequest};
use itbackup::cli::{Cli, Command};
use itbackup::config::Settings;
use itbackup::drill::{self, DrillRequest};
use itbackup::error::Result;
use itbackup::restore::{self, RestoreRequest};
use itbackup::{catalog, hooks, metrics, prune, remote, report, schedule, seal, status};

fn main() {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(run(&cli)) {
        Ok(()) => 0,
        Err(err) => {
            // Sources mask the URLs they show; this catches any quoted by a library.
            let mask = itbackup::process::mask_userinfo;
            eprintln!("error: {}", mask(&err.to_string()));
            // A script reading --json gets the failure too, unless the run
            // already printed its own report (a failed drill, a status alarm).
            if cli.json && !REPORTED.load(Ordering::Relaxed) {
                let error = serde_json::json!({ "error": {
                    "kind": err.kind.as_str(),
                    "exit_code": err.exit_code(),
                    "service": err.service.map(|s| s.as_str()),
                    "step": err.step,
                    "message": mask(&err.message),
                    "hint": err.hint.as_deref().map(mask),
                }});
                println!("{error:#}");
            }
            err.exit_code()
        }
    };
    std::process::exit(code);
}

/// Set once a command has printed its report: an error after it (a drill
/// that found differences, a status alarm) is not printed again on stdout.
static REPORTED: AtomicBool = AtomicBool::new(false);

fn reported() {
    REPORTED.store(true, Ordering::Relaxed);
}

async fn run(cli: &Cli) -> Result<()> {
    let json = cli.json;
    match &cli.command {
        Command::Backup(args) => {
            let settings = Settings::resolve(cli, Some(&args.methods))?;
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
            let ctx =
                hooks::RunContext::backup(&settings, &request, &target, &args.hooks, &args.monitor);
            let outcome = hooks::around(
                &ctx,
                backup::run(&settings, request, target),
                metrics::record_backup_outcome,
            )
            .await?;
            report::backup(&outcome, json);
        }
        Command::Restore(args) => {
            let settings = Settings::resolve(cli, None)?;
            let request = RestoreRequest {
                path: args.path.clone(),
                from: args.from.clone(),
                manifest: args.manifest.clone(),
                services: args.services.clone(),
                dry_run: args.dry_run,
                yes: args.yes,
                sequential: args.sequential,
            };
            let ctx = hooks::RunContext::restore(&settings, &request, &args.hooks, &args.monitor);
            let outcome = hooks::around(
                &ctx,
                restore::run(&settings, request),
                metrics::record_restore,
            )
            .await?;
            report::restore(&outcome, json);
        }
        Command::Verify(args) => {
            let settings = Settings::resolve(cli, None)?;
            let (dir, checks) =
                itbackup::verify::run(&settings, args.path.as_deref(), args.from.as_deref())
                    .await?;
            report::verify(&dir, &checks, json);
        }
        Command::Drill(args) => {
            let settings = Settings::resolve(cli, Some(&args.methods))?;
            let request = DrillRequest {
                out: args.out.clone(),
                services: args.services.clone(),
                scale: args.scale,
                keep: args.keep,
                yes: args.yes,
                sequential: args.sequential,
                sabotage: args.sabotage,
                json,
                upload: args.upload.clone(),
            };
            let ctx = hooks::RunContext::drill(&settings, &request, &args.monitor);
            // A drill that ran but found differences is a failure for the
            // webhook and the exit status, yet its RTO still goes into the metrics.
            let work = async {
                let outcome = drill::run(&settings, request).await?;
                report::drill(&outcome, json);
                reported();
                metrics::update(args.monitor.metrics_file.as_deref(), |m| {
                    metrics::record_drill(m, &outcome.validation)
                });
                outcome.verdict()
            };
            hooks::around(&ctx, work, |_, _| {}).await?;
        }
        Command::Prune(args) => {
            let settings = Settings::resolve(cli, None)?;
            let request = prune::request(&args.retention, args.dry_run);
            let outcome = match &args.from {
                Some(url) => {
                    let location = prune::RemoteRoot::new(remote::Remote::open(url)?);
                    prune::run(&location, &request)?
                }
                None => prune::run(&prune::LocalRoot::new(&settings.root), &request)?,
            };
            report::prune(&outcome, json);
        }
        Command::Status(args) => {
            let settings = Settings::resolve(cli, None)?;
            let status = status::run(&settings, &status::request(args)).await?;
            report::status(&status, json);
            reported();
            status::finish(&status, &settings, &args.monitor).await?;
        }
        Command::Schedule(args) => {
            let settings = Settings::resolve(cli, Some(&args.methods))?;
            schedule::run(&settings, args, json).await?;
        }
        Command::List(args) => {
            let settings = Settings::resolve(cli, None)?;
            match &args.from {
                Some(url) => {
                    let (location, _) = remote::Remote::locate(url).await?;
                    report::list_remote(&location.url, &location.backups().await?, json);
                }
                None => report::list(&settings.root, &catalog::scan(&settings.root)?, json),
            }
        }
        Command::Push(args) => {
            // For the repository's timeouts ([remote] in the config file).
            Settings::resolve(cli, None)?;
            let location = remote::Remote::open(&args.url)?;
            let outcome = location.push(&args.dir).await?;
            report::push(&outcome, json);
        }
        Command::Pull(args) => {
            let settings = Settings::resolve(cli, None)?;
            let parent = args.dir.clone().unwrap_or_else(|| settings.root.clone());
            let outcome = remote::pull(&args.url, &parent).await?;
            report::pull(&outcome, json);
        }
        Command::Keygen(args) => {
            let recipient = seal::write_new_identity(&args.out)?;
            report::keygen(&args.out, &recipient, json);
        }
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("itbackup=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
