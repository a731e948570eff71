//! The live Neo4j server: connections, bounded queries, the state of the
//! user database, and stopping and starting the server around the dump
//! method.
//!
//! The server and its user database are told apart. A store that a killed
//! `neo4j-admin database load` left half-written keeps only that database
//! offline: the server runs and its `system` database answers. Whatever
//! must work in that state (waiting for a start, the server's version, the
//! recovery of a killed run, a restore of a dump, which is what repairs the
//! database) asks the `system` database; the rest needs the user database
//! and says, when it is offline, why and how to repair it.

use std::time::{Duration, Instant};

use neo4rs::{query, ConfigBuilder, Graph};

use super::{quote, Neo4j, SVC};
use crate::error::{Error, Kind, Result};
use crate::lock::StoppedServer;
use crate::process::{self, mask_userinfo, ToolCommand};
use crate::target::Target;
use crate::timeout::Phase;

/// The database every Neo4j server runs, whatever state its user databases are in.
const SYSTEM_DB: &str = "system";

/// How long a start may take until the server answers and its user database settles.
const START_WAIT: Duration = Duration::from_secs(180);

/// A failed connection, and whether the server said the database is unavailable.
struct ConnectError {
    error: Error,
    database_unavailable: bool,
}

/// What the server says about its user database (`SHOW DATABASE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DatabaseState {
    /// `online`, `offline`, `starting`, ...
    pub current: String,
    pub requested: String,
    /// Neo4j's reason when the database failed to start; empty otherwise.
    pub message: String,
}

impl DatabaseState {
    fn online(&self) -> bool {
        self.current == "online"
    }

    /// Started, or failed to start: no longer on its way.
    fn settled(&self) -> bool {
        self.online() || self.current == self.requested || !self.message.is_empty()
    }
}

impl Neo4j {
    /// A connection to the user database, answering.
    pub(super) async fn graph(&self) -> Result<Graph> {
        let database = self.settings.database.as_str();
        match self.connect(database).await {
            Ok(graph) => Ok(graph),
            Err(ConnectError {
                error,
                database_unavailable: true,
            }) => match self.database_state().await {
                Ok(Some(state)) if !state.online() => Err(self.offline_error("connect", &state)),
                _ => Err(error),
            },
            Err(ConnectError { error, .. }) => Err(error),
        }
    }

    /// The error for a user database that is not online although the server runs.
    fn offline_error(&self, step: &str, state: &DatabaseState) -> Error {
        let reason = match state.message.as_str() {
            "" => String::new(),
            message => format!(": {message}"),
        };
        Error::refused(
            step,
            format!(
                "database {} is {} on Neo4j at {}{reason}",
                self.settings.database,
                state.current,
                mask_userinfo(&self.settings.uri)
            ),
        )
        .service(SVC)
        .hint("the server runs but this database did not start (Neo4j's debug.log says why). A run killed inside `neo4j-admin database load` leaves it so: restore a backup taken with --neo4j-method dump (`itbackup restore --services neo4j`), which replaces its files")
    }

    /// A connection to `database`, proven by one query in an explicit transaction.
    async fn connect(&self, database: &str) -> std::result::Result<Graph, ConnectError> {
        let failed = |error: Error| ConnectError {
            error,
            database_unavailable: false,
        };
        let config = ConfigBuilder::default()
            .uri(&self.settings.uri)
            .user(&self.settings.user)
            .password(self.settings.password.expose())
            .db(database)
            .fetch_size(2000)
            .max_connections(self.settings.transactions + 2)
            .build()
            .map_err(|e| failed(super::neo_error("connect", e)))?;
        let uri = mask_userinfo(&self.settings.uri);
        // The system database runs administration commands only.
        let ping = if database == SYSTEM_DB {
            "SHOW DATABASE system YIELD name"
        } else {
            "RETURN 1"
        };
        // The driver connects lazily and retries autocommit queries for a
        // minute; an explicit transaction is not retried, so this ping turns a
        // dead or refusing server into a prompt, clear error.
        let connect_and_ping = async {
            let graph = Graph::connect(config).await?;
            let mut txn = graph.start_txn().await?;
            txn.run(query(ping)).await?;
            txn.commit().await?;
            Ok::<Graph, neo4rs::Error>(graph)
        };
        let timeouts = &self.settings.timeouts;
        let e = match tokio::time::timeout(timeouts.connect, connect_and_ping).await {
            Ok(Ok(graph)) => return Ok(graph),
            Err(_) => {
                return Err(failed(timeouts.error(
                    Some(SVC),
                    "connect",
                    Phase::Connect,
                    &format!("Neo4j at {uri}"),
                    &format!("cannot reach Neo4j at {uri}: "),
                )))
            }
            Ok(Err(e)) => e,
        };
        let text = mask_userinfo(&e.to_string());
        let database_unavailable = matches!(&e, neo4rs::Error::Neo4j(server)
            if server.code().ends_with(".DatabaseUnavailable") || server.code().ends_with(".DatabaseNotFound"));
        if super::neo_error("connect", e).kind == Kind::Authentication {
            return Err(failed(
                Error::authentication(
                    "connect",
                    format!(
                        "Neo4j at {uri} refused the credentials of user '{}': {text}",
                        self.settings.user
                    ),
                )
                .service(SVC)
                .hint("check NEO4J_USER and NEO4J_PASSWORD (default test12345)"),
            ));
        }
        Err(ConnectError {
            error: Error::unreachable("connect", format!("cannot reach Neo4j at {uri}: {text}"))
                .service(SVC)
                .hint("is Neo4j running and reachable? check NEO4J_URI (default bolt://localhost:7687), and `docker compose ps` in a compose stack"),
            database_unavailable,
        })
    }

    /// The state of the user database, asked of the system database; None
    /// when the server does not know it.
    pub(super) async fn database_state(&self) -> Result<Option<DatabaseState>> {
        let system = self.connect(SYSTEM_DB).await.map_err(|e| e.error)?;
        let cypher = format!(
            "SHOW DATABASE {} YIELD currentStatus, requestedStatus, statusMessage",
            quote(&self.settings.database)
        );
        let rows = self.rows(&system, &cypher, "database status").await?;
        Ok(rows.first().map(|row| DatabaseState {
            current: row.get("currentStatus").unwrap_or_default(),
            requested: row.get("requestedStatus").unwrap_or_default(),
            message: row.get("statusMessage").unwrap_or_default(),
        }))
    }

    /// Rows of a query, each as a map of column → Bolt value.
    pub(super) async fn rows(
        &self,
        graph: &Graph,
        cypher: &str,
        step: &str,
    ) -> Result<Vec<neo4rs::Row>> {
        let mut stream = self.bounded(step, graph.execute(query(cypher))).await?;
        let mut rows = Vec::new();
        while let Some(row) = self.bounded(step, stream.next()).await? {
            rows.push(row);
        }
        Ok(rows)
    }

    /// One exchange with the server (a query's first answer, or its next
    /// batch of rows), bounded by the idle timeout: Community has no
    /// per-transaction timeout the driver can set, so a query that stops
    /// answering is abandoned here, and dropping its connection ends it on
    /// the server. Used for reads; a restore's long writes (the wipe, index
    /// builds) are not cut.
    pub(super) async fn bounded<T>(
        &self,
        step: &str,
        work: impl std::future::Future<Output = std::result::Result<T, neo4rs::Error>>,
    ) -> Result<T> {
        let timeouts = &self.settings.timeouts;
        match tokio::time::timeout(timeouts.idle, work).await {
            Ok(result) => result.map_err(|e| super::neo_error(step, e)),
            Err(_) => Err(timeouts.error(
                Some(SVC),
                step,
                Phase::Idle,
                &format!("Neo4j at {}", self.settings.uri),
                &format!("{}: ", self.settings.uri),
            )),
        }
    }

    /// The server's version and edition, asked over `graph`.
    pub(super) async fn version_and_edition(&self, graph: &Graph) -> Result<(String, String)> {
        let rows = self
            .rows(graph, "CALL dbms.components() YIELD versions, edition RETURN versions[0] AS version, edition", "server version")
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::failure("server version", "no answer").service(SVC))?;
        Ok((
            row.get("version").unwrap_or_default(),
            row.get("edition").unwrap_or_default(),
        ))
    }

    /// The server's version and edition, whatever state the user database is in.
    pub(super) async fn server_version(&self) -> Result<(String, String)> {
        let system = self.connect(SYSTEM_DB).await.map_err(|e| e.error)?;
        self.version_and_edition(&system).await
    }

    /// neo4j-admin; in compose mode in a fresh container of the (stopped)
    /// service, which mounts the same data volume.
    pub(super) fn admin(&self) -> ToolCommand {
        match &self.target {
            Target::Local => ToolCommand::new(self.settings.admin.clone()),
            Target::Compose(compose) => compose.run(SVC, ToolCommand::new("neo4j-admin")),
        }
    }

    pub(super) fn lifecycle_command(&self, which: &str) -> Result<ToolCommand> {
        if let Target::Compose(compose) = &self.target {
            return Ok(match which {
                "stop" => compose.stop(SVC),
                _ => compose.start(SVC),
            });
        }
        let command = match which {
            "stop" => &self.settings.stop_command,
            _ => &self.settings.start_command,
        };
        let command = command.as_ref().ok_or_else(|| {
            Error::failure(format!("{which} server"), "the dump method needs the server stopped, and no way to stop and start it is configured")
                .service(SVC)
                .hint("set IT_NEO4J_STOP_CMD and IT_NEO4J_START_CMD (or stop_command/start_command under [neo4j] in the config), use compose mode (IT_COMPOSE_FILES), or use --neo4j-method logical, which needs no downtime")
        })?;
        Ok(ToolCommand::new("sh").args(["-c", command.as_str()]))
    }

    pub(super) async fn run_tool(cmd: ToolCommand, step: &'static str) -> Result<()> {
        super::super::blocking(SVC, move || process::output(&cmd, SVC, step).map(|_| ())).await
    }

    /// Wait after a start until the server answers and its user database
    /// has started or failed to (an offline database is returned, not an
    /// error: the server runs).
    async fn wait_until_up(&self) -> Result<DatabaseState> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let answer = self.database_state().await;
            let state = match answer {
                Ok(Some(state)) if state.settled() => return Ok(state),
                Ok(Some(state)) => Some(state),
                Ok(None) => None,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.hint("Neo4j did not come back within 3 minutes after the start command; look at its log"))
                }
                Err(_) => None,
            };
            if Instant::now() >= deadline {
                return match state {
                    Some(state) => Ok(state),
                    None => Err(Error::failure(
                        "wait for server",
                        format!("Neo4j does not know database {}", self.settings.database),
                    )
                    .service(SVC)
                    .hint("check NEO4J_DATABASE against `SHOW DATABASES`")),
                };
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stop the server, run `work` (named `what`), start it again whatever
    /// happened, wait for it. The stop is recorded on this host until the
    /// server answers again, so that a run killed in between is made good
    /// by the next one ([`crate::stores::Store::recover_from_killed_run`]).
    /// The user database must then be online.
    pub(super) async fn with_server_stopped<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let stop = self.lifecycle_command("stop")?;
        self.lifecycle_command("start")?;
        let stopped = StoppedServer::of(SVC, &self.settings.uri);
        stopped.record(SVC, what)?;
        Self::run_tool(stop, "stop server").await?;
        let result = work.await;
        let up = self.start_and_wait().await;
        if up.is_ok() {
            stopped.clear();
        }
        let value = result?;
        let state = up?;
        if !state.online() {
            return Err(self.offline_error("start server", &state));
        }
        Ok(value)
    }

    /// Run the start command and wait until the server answers and its user
    /// database has settled.
    pub(super) async fn start_and_wait(&self) -> Result<DatabaseState> {
        Self::run_tool(self.lifecycle_command("start")?, "start server").await?;
        self.wait_until_up().await
    }

    /// After a run killed while the server was stopped: stop it (a shutdown
    /// in progress is waited for; a stopped server is left so), start it,
    /// wait. A user database that then stays offline is named, not fatal: a
    /// restore of a dump is what repairs it.
    pub(super) async fn restart_after(&self, by: &str) -> Result<()> {
        let restart = async {
            Self::run_tool(self.lifecycle_command("stop")?, "stop server").await?;
            self.start_and_wait().await
        };
        let state = restart
            .await
            .map_err(|e| e.hint(format!("{by}; start it, then run again")))?;
        if !state.online() {
            tracing::warn!(service = %SVC, "{}", self.offline_error("start server", &state));
        }
        Ok(())
    }
}
