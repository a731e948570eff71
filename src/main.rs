//! Entry point: parse, run, print, map errors to exit codes: 0 ok, else the
//! error's kind decides (1 failure, 2 usage, 3 and up for the kinds a script
//! may want to tell apart; docs/exit-codes.md).

use clap::Parser;

use itbackup::cli::Cli;

fn main() {
    itbackup::heap::bound_allocator();
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(itbackup::commands::run(&cli)) {
        Ok(()) => 0,
        Err(err) => {
            // Sources mask the URLs they show; this catches any quoted by a library.
            let mask = itbackup::process::mask_userinfo;
            eprintln!("error: {}", mask(&err.to_string()));
            // A script reading --json gets the failure too, unless the run
            // already printed its own report (a failed drill, a status alarm).
            if cli.json && !itbackup::commands::reported_already() {
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
