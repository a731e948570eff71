//! Connections to the server: timeouts, and errors that say why a
//! connection was refused.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::error::{Error, Kind, Result};
use crate::timeout::Phase;

use super::replace::WORK_DB;
use super::{Postgres, SVC};

impl Postgres {
    pub(super) async fn connect(
        &self,
        database: &str,
        step: &str,
    ) -> Result<tokio_postgres::Client> {
        let timeouts = self.settings.timeouts;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.settings.host)
            .port(self.settings.port)
            .user(&self.settings.user)
            .dbname(database)
            .application_name("itbackup")
            .connect_timeout(timeouts.connect)
            // A peer that vanishes (host down, network cut) is found by TCP
            // keepalive and unacknowledged sends, not waited for for ever; a
            // statement the server is still running is never cut (counting
            // the rows of a large table can take minutes).
            .keepalives(true)
            .keepalives_idle(timeouts.idle.min(Duration::from_secs(60)))
            .tcp_user_timeout(timeouts.idle);
        if let Some(password) = &self.settings.password {
            config.password(password.expose());
        }
        // A restore killed while `postgres` was renamed aside (see
        // `replace`) leaves the cluster without it until the next restore,
        // which must still be able to connect: like pg_dumpall and psql it
        // falls back to template1, and then (a plain-format restore renames
        // template1 aside too) to the killed run's work database.
        let candidates = if database == "postgres" {
            vec!["postgres", "template1", WORK_DB]
        } else {
            vec![database]
        };
        for (n, candidate) in candidates.iter().enumerate() {
            config.dbname(*candidate);
            let (client, connection) = match self.connect_within(&config, candidate, step).await? {
                Ok(connected) => connected,
                Err(e)
                    if n + 1 < candidates.len()
                        && e.code() == Some(&SqlState::INVALID_CATALOG_NAME) =>
                {
                    tracing::warn!("postgres: the database {candidate} does not exist (an interrupted restore?); trying {}", candidates[n + 1]);
                    continue;
                }
                Err(e) => return Err(self.connect_error(candidate, step, e)),
            };
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("postgres connection closed: {e}");
                }
            });
            return Ok(client);
        }
        unreachable!("the last candidate returns")
    }

    /// Connect with `config`, bounded by the connect timeout as a whole:
    /// tokio-postgres' own connect_timeout covers only the TCP connection, so
    /// a server that takes it and never answers the startup would hang. The
    /// outer error is the timeout; the inner one is the server's answer.
    async fn connect_within(
        &self,
        config: &tokio_postgres::Config,
        database: &str,
        step: &str,
    ) -> Result<std::result::Result<Connected, tokio_postgres::Error>> {
        let timeouts = self.settings.timeouts;
        tokio::time::timeout(timeouts.connect, config.connect(NoTls))
            .await
            .map_err(|_| {
                let endpoint = self.endpoint();
                timeouts.error(
                    Some(SVC),
                    step,
                    Phase::Connect,
                    &format!("PostgreSQL at {endpoint}"),
                    &format!(
                        "cannot connect to {endpoint} (database {database}, user {}): ",
                        self.settings.user
                    ),
                )
            })
    }

    fn connect_error(&self, database: &str, step: &str, err: tokio_postgres::Error) -> Error {
        let endpoint = self.endpoint();
        let user = &self.settings.user;
        let message =
            format!("cannot connect to {endpoint} (database {database}, user {user}): {err}");
        let text = format!("{err:?}");
        let (kind, hint) = match err.code() {
            Some(code) if *code == SqlState::INVALID_PASSWORD => (Kind::Authentication, format!(
                "password authentication failed for user {user}: check PGPASSWORD (the compose stack's POSTGRES_PASSWORD)"
            )),
            Some(code) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => (Kind::Authentication, format!(
                "the server refuses user {user} from this host: check PGUSER and the server's pg_hba.conf"
            )),
            Some(code) if *code == SqlState::INVALID_CATALOG_NAME => {
                (Kind::StoreRefused, format!("database {database} does not exist on {endpoint}"))
            }
            // tokio-postgres names this configuration error in its text only.
            _ if text.contains("password missing") => {
                (Kind::Authentication, "the server wants a password: set PGPASSWORD".to_string())
            }
            Some(_) => (Kind::StoreRefused, format!(
                "is PostgreSQL running and reachable at {endpoint}? check `docker compose ps` and PGHOST/PGPORT"
            )),
            None => (Kind::Unreachable, format!(
                "is PostgreSQL running and reachable at {endpoint}? check `docker compose ps` and PGHOST/PGPORT"
            )),
        };
        Error::new(kind, step, message).service(SVC).hint(hint)
    }

    pub(super) fn query_error(step: &str, err: tokio_postgres::Error) -> Error {
        let detail = err
            .as_db_error()
            .map(|db| db.message().to_string())
            .unwrap_or_else(|| err.to_string());
        // The server answered (a SQLSTATE) or the connection broke.
        let kind = match err.code() {
            Some(code) if *code == SqlState::DISK_FULL => Kind::NoSpace,
            Some(_) => Kind::StoreRefused,
            None if err.is_closed() => Kind::Unreachable,
            None => Kind::Failure,
        };
        Error::new(kind, step, detail).service(SVC)
    }
}

/// A client and the connection task that drives it.
pub(super) type Connected = (
    tokio_postgres::Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
);
