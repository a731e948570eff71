//! A started tool: waiting for it, feeding its standard input, and what its
//! failure means (signal, refused password, unreachable server, full disk).

use std::io::{self, Read, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use super::ToolCommand;
use crate::error::{Error, Kind, Result};
use crate::service::Service;

/// A started tool.
pub struct Running {
    pub child: Child,
    pub(super) tail: Option<JoinHandle<String>>,
    pub(super) display: String,
}

/// How a tool ended: its status and the tail of its standard error.
pub struct Finished {
    pub status: ExitStatus,
    pub stderr_tail: String,
    pub display: String,
}

impl Running {
    pub fn wait(mut self) -> io::Result<Finished> {
        let status = self.child.wait()?;
        let stderr_tail = self
            .tail
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        Ok(Finished {
            status,
            stderr_tail,
            display: self.display.clone(),
        })
    }
}

impl Finished {
    /// Fail unless the tool exited 0, naming the tool and quoting its last words.
    pub fn check(self, service: Service, step: &str) -> Result<String> {
        if self.status.success() {
            return Ok(self.stderr_tail);
        }
        let program = self.display.clone();
        Err(tool_failed(
            service,
            step,
            &program,
            self.status,
            &self.stderr_tail,
        ))
    }
}

/// What a failed tool's end says about the failure: a signal stopped it, or
/// its last words name a refused password, an unreachable server or a full
/// disk; otherwise the tool (or the server behind it) refused the work. The
/// tools give no other structured answer than their exit status, so this is
/// the one place where their standard error is read to classify them.
pub fn tool_failure_kind(status: ExitStatus, stderr_tail: &str) -> Kind {
    use std::os::unix::process::ExitStatusExt;
    if matches!(
        status.signal(),
        Some(libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT | libc::SIGKILL)
    ) {
        return Kind::Interrupted;
    }
    let said = stderr_tail.to_lowercase();
    let any = |phrases: &[&str]| phrases.iter().any(|p| said.contains(p));
    if any(&[
        "password authentication failed",
        "no password supplied",
        "authentication failed",
        "peer authentication failed",
    ]) {
        Kind::Authentication
    } else if any(&[
        "no space left on device",
        "disk quota exceeded",
        "could not extend file",
    ]) {
        Kind::NoSpace
    } else if any(&[
        "connection refused",
        "could not connect to",
        "could not translate host name",
        "name or service not known",
        "timeout expired",
        "server closed the connection unexpectedly",
        "no route to host",
    ]) {
        Kind::Unreachable
    } else {
        Kind::StoreRefused
    }
}

/// An error for a tool that exited non-zero.
pub fn tool_failed(
    service: Service,
    step: &str,
    display: &str,
    status: ExitStatus,
    stderr_tail: &str,
) -> Error {
    let tail = if stderr_tail.is_empty() {
        String::from("(no output on standard error)")
    } else {
        stderr_tail.to_string()
    };
    let error = Error::new(
        tool_failure_kind(status, stderr_tail),
        step,
        format!("`{display}` failed ({status}):\n{tail}"),
    )
    .service(service);
    match docker_hint(display, stderr_tail) {
        Some(hint) => error.hint(hint),
        None => error,
    }
}

/// The runbook's troubleshooting advice for a failed `docker compose` call,
/// from what docker said.
pub fn docker_hint(command: &str, stderr: &str) -> Option<String> {
    if !command.contains(" compose ") {
        return None;
    }
    let said = stderr.to_lowercase();
    Some(
        if said.contains("permission denied") && said.contains("docker") {
            "Docker permission error: add this user to the `docker` group (then log in again) or run itbackup via sudo".into()
        } else if said.contains("no such service") {
            "the compose file has no such service: set IT_COMPOSE_SERVICE_POSTGRES / _NEO4J / _OPENSEARCH to the names your compose file uses, and check IT_COMPOSE_FILES and IT_COMPOSE_PROJECT".into()
        } else if said.contains("is not running") || said.contains("no container found") {
            "the service's container is not running: start the stack (`docker compose up -d`) and check `docker compose ps`".into()
        } else if said.contains("cannot connect to the docker daemon") {
            "the Docker daemon is not running or not reachable (DOCKER_HOST)".into()
        } else {
            "check `docker compose ps` and the service's logs (`docker compose logs <service>`); an orchestrator may have restarted the container".into()
        },
    )
}

/// An error for a tool that could not be started at all.
pub fn spawn_failed(service: Service, step: &str, program: &str, err: io::Error) -> Error {
    let hint = if err.kind() == io::ErrorKind::NotFound && program.ends_with("docker") {
        format!("`{program}` is not installed or not on PATH: compose mode (IT_COMPOSE_FILES, IT_COMPOSE_PROJECT or --compose) runs the stores' tools through `docker compose`; install Docker, set IT_DOCKER to its path, or unset the compose variables to use local tools")
    } else if err.kind() == io::ErrorKind::NotFound {
        format!("`{program}` is not installed or not on PATH; install it (or set its directory in the config), or use compose mode (IT_COMPOSE_FILES) to run it inside the container")
    } else {
        format!("check that `{program}` can be executed")
    };
    Error::failure(step, format!("cannot start `{program}`: {err}"))
        .service(service)
        .hint(hint)
}

/// Run a command to completion and return its standard output (for short outputs).
pub fn output(cmd: &ToolCommand, service: Service, step: &str) -> Result<String> {
    let running = cmd
        .spawn(Stdio::null(), Stdio::piped())
        .map_err(|e| spawn_failed(service, step, &cmd.program, e))?;
    let mut running = running;
    let mut out = String::new();
    if let Some(mut stdout) = running.child.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .map_err(|e| Error::failure(step, e.to_string()).service(service))?;
    }
    let finished = running
        .wait()
        .map_err(|e| Error::failure(step, e.to_string()).service(service))?;
    finished.check(service, step)?;
    Ok(out)
}

/// How long a tool that only reads and answers (its version, a control
/// file) may take: a JVM starts in seconds on a loaded machine; one that has
/// not answered in a minute is stuck.
pub const SHORT_ANSWER_BOUND: Duration = Duration::from_secs(60);

/// [`output`] for a tool that must answer `within` that time (a version
/// check): one that hangs (a stuck JVM) is killed and the step fails. Its
/// output is read beside the wait and abandoned when it is killed (a
/// grandchild may still hold the pipe open).
pub fn output_within(
    cmd: &ToolCommand,
    service: Service,
    step: &str,
    within: Duration,
) -> Result<String> {
    let mut running = cmd
        .spawn(Stdio::null(), Stdio::piped())
        .map_err(|e| spawn_failed(service, step, &cmd.program, e))?;
    let deadline = std::time::Instant::now() + within;
    let mut stdout = running.child.stdout.take().expect("stdout is piped");
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = sender.send(stdout.read_to_string(&mut out).map(|_| out));
    });
    let killed = wait_or_kill(&mut running.child, deadline)
        .map_err(|e| Error::failure(step, e.to_string()).service(service))?;
    if killed {
        // Reaped only: its stderr reader may wait on a grandchild.
        let _ = running.child.wait();
        return Err(hung_error(cmd, service, step, within));
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let out = match received.recv_timeout(left.max(Duration::from_secs(1))) {
        Ok(read) => read.map_err(|e| Error::failure(step, e.to_string()).service(service))?,
        Err(_) => return Err(hung_error(cmd, service, step, within)),
    };
    let finished = running
        .wait()
        .map_err(|e| Error::failure(step, e.to_string()).service(service))?;
    finished.check(service, step)?;
    Ok(out)
}

/// Run a command, writing its standard input with `feed`; its standard output is discarded.
pub fn run_feeding(
    cmd: &ToolCommand,
    service: Service,
    step: &str,
    feed: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<String> {
    feed_tool(cmd, service, step, feed)
}

/// Like [`run_feeding`], for a tool that reads only the start of its input
/// (a header): its closing stdin early is no error when it succeeds. It must
/// end `within` that time: a tool that hangs (a server's lock, a stuck JVM)
/// is killed and the step fails, instead of holding the run forever.
pub fn run_feeding_head(
    cmd: &ToolCommand,
    service: Service,
    step: &str,
    within: Duration,
    feed: impl FnOnce(&mut dyn Write) -> io::Result<()> + Send,
) -> Result<String> {
    let (mut running, mut stdin) = start_fed(cmd, service, step)?;
    let deadline = std::time::Instant::now() + within;
    // The feed may block on a tool that stops reading: it runs beside the
    // wait, and ends with a broken pipe once the tool ends or is killed.
    let (fed, waited) = std::thread::scope(|scope| {
        let feeder = scope.spawn(move || feed(&mut stdin).and_then(|_| stdin.flush()));
        let waited = wait_or_kill(&mut running.child, deadline);
        (feeder.join().unwrap_or(Ok(())), waited)
    });
    if waited.map_err(|e| Error::failure(step, e.to_string()).service(service))? {
        let _ = running.wait();
        return Err(hung_error(cmd, service, step, within));
    }
    // It read what it needed and closed its stdin: no error when it succeeds.
    let fed = fed.or_else(|e| match e.kind() {
        io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e),
    });
    conclude_fed(cmd, service, step, running, fed)
}

/// Wait for `child` until `deadline`; past it, kill it. True when killed.
fn wait_or_kill(child: &mut Child, deadline: std::time::Instant) -> io::Result<bool> {
    loop {
        match child.try_wait()? {
            Some(_) => return Ok(false),
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                return Ok(true);
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// What the failure of a tool stopped at its bound says.
const HUNG: &str = "did not finish within";

fn hung_error(cmd: &ToolCommand, service: Service, step: &str, within: Duration) -> Error {
    Error::failure(
        step,
        format!(
            "`{}` {HUNG} {}, and was stopped",
            cmd.program,
            crate::timeout::seconds(within)
        ),
    )
    .service(service)
    .hint(
        "the tool hung: look for what it waits on (a lock, a full disk, a stuck JVM) and run again",
    )
}

/// Whether `e` is a tool stopped at its bound by [`run_feeding_head`] (not a
/// tool that ended with an answer).
pub fn hung(e: &Error) -> bool {
    e.message.contains(HUNG)
}

/// A tool started with its stdin piped, buffered.
fn start_fed(
    cmd: &ToolCommand,
    service: Service,
    step: &str,
) -> Result<(Running, io::BufWriter<std::process::ChildStdin>)> {
    let mut running = cmd
        .spawn(Stdio::piped(), Stdio::null())
        .map_err(|e| spawn_failed(service, step, &cmd.program, e))?;
    let stdin = io::BufWriter::with_capacity(
        crate::artifact::CHUNK,
        running.child.stdin.take().expect("stdin is piped"),
    );
    Ok((running, stdin))
}

/// Wait for a fed tool; its failure comes before the feed's: a tool that
/// fails early closes its stdin, and the broken pipe is not the news.
fn conclude_fed(
    cmd: &ToolCommand,
    service: Service,
    step: &str,
    running: Running,
    fed: io::Result<()>,
) -> Result<String> {
    let finished = running
        .wait()
        .map_err(|e| Error::failure(step, e.to_string()).service(service))?;
    if !finished.status.success() {
        return finished.check(service, step);
    }
    fed.map_err(|e| {
        Error::failure(step, format!("feeding `{}`: {e}", cmd.program)).service(service)
    })?;
    Ok(finished.stderr_tail)
}

fn feed_tool(
    cmd: &ToolCommand,
    service: Service,
    step: &str,
    feed: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<String> {
    let (running, mut stdin) = start_fed(cmd, service, step)?;
    let fed = feed(&mut stdin).and_then(|_| stdin.flush());
    drop(stdin);
    conclude_fed(cmd, service, step, running, fed)
}

/// Run a command, copying its standard output into `sink`.
pub fn run_with_output_into(
    cmd: &ToolCommand,
    sink: &mut impl Write,
    service: Service,
    step: &str,
) -> Result<String> {
    run_reading_output(cmd, service, step, |stdout| io::copy(stdout, sink))
        .map(|(stderr_tail, _)| stderr_tail)
}

/// Run a command whose standard output `read` consumes as it comes (a
/// stream parsed on the fly, never held whole). When `read` fails the tool
/// is killed; a tool that exited with a failure of its own is answered
/// with that failure (its output ended short because of it).
/// Returns the tool's stderr tail and what `read` returned.
pub fn run_reading_output<T>(
    cmd: &ToolCommand,
    service: Service,
    step: &str,
    read: impl FnOnce(&mut dyn Read) -> io::Result<T>,
) -> Result<(String, T)> {
    let mut running = cmd
        .spawn(Stdio::null(), Stdio::piped())
        .map_err(|e| spawn_failed(service, step, &cmd.program, e))?;
    let mut stdout = running.child.stdout.take().expect("stdout is piped");
    let read = read(&mut stdout);
    drop(stdout);
    if read.is_err() {
        let _ = running.child.kill();
    }
    let finished = running
        .wait()
        .map_err(|e| Error::failure(step, e.to_string()).service(service))?;
    // A tool that exited with a status of its own failed first (its output
    // ended short because of it); otherwise (it succeeded, or ended by a
    // signal: ours, or the broken pipe) the reading's error is the news.
    let value = match read {
        Err(e) if finished.status.code().is_none() || finished.status.success() => {
            return Err(crate::error::io_error(
                Some(service),
                step,
                "writing the artifact",
                e,
            ))
        }
        Err(_) => None,
        Ok(value) => Some(value),
    };
    let tail = finished.check(service, step)?;
    Ok((tail, value.expect("a tool that succeeded was read")))
}
