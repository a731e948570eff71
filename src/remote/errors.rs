//! What a failed repository request means: the bound that ran out, the
//! kind of failure, and the hint; and the client's bounds and retries.

use crate::error::{Error, Kind};
use crate::timeout::{self, Phase};

/// The bound a repository request ran out of, if that is why it failed.
pub(super) fn timed_out(err: &object_store::Error) -> Option<Phase> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut found = None;
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<reqwest::Error>() {
            if e.is_timeout() {
                return Some(if e.is_connect() {
                    Phase::Connect
                } else {
                    Phase::Idle
                });
            }
        }
        if let Some(e) = e.downcast_ref::<object_store::client::HttpError>() {
            if e.kind() == object_store::client::HttpErrorKind::Timeout {
                found = Some(Phase::Idle);
            }
        }
        source = e.source();
    }
    found
}

pub(super) fn remote_error(step: &str, url: &str, err: object_store::Error) -> Error {
    if let Some(phase) = timed_out(&err) {
        let timeouts = timeout::remote();
        return timeouts.error(
            None,
            step,
            phase,
            &format!("the repository {url}"),
            &format!("{url}: "),
        );
    }
    let (kind, hint) = match &err {
        // Temporary credentials (AWS_SESSION_TOKEN, a role's) that ran out
        // during a long run: S3 answers 400 with one of these codes.
        _ if expired_credentials(&err) => (
            Kind::Authentication,
            "the repository's credentials expired during the run (temporary credentials: AWS_SESSION_TOKEN or a role's); renew them and run again: nothing counts as complete without its manifest, and push resumes what it had sent",
        ),
        object_store::Error::NotFound { .. } => (
            Kind::NotFound,
            "the bucket or object does not exist; check the URL (s3://bucket/prefix)",
        ),
        object_store::Error::Unauthenticated { .. }
        | object_store::Error::PermissionDenied { .. } => (
            Kind::Authentication,
            "the server refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the backend's own variables)",
        ),
        _ => (
            cause_kind(&err),
            "is the remote reachable? for S3-compatible servers set AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP=true for plain http)",
        ),
    };
    Error::new(kind, step, format!("{url}: {err}")).hint(hint)
}

/// Whether the store refused the request because its credentials expired.
fn expired_credentials(err: &object_store::Error) -> bool {
    let text = err.to_string();
    [
        "ExpiredToken",
        "TokenRefreshRequired",
        "RequestExpired",
        "ExpiredTokenException",
    ]
    .iter()
    .any(|code| text.contains(code))
}

/// The kind of a repository error that object_store does not name: found
/// in its chain of causes (a connection that failed, a local disk that is
/// full), else a plain failure.
pub(super) fn cause_kind(err: &object_store::Error) -> Kind {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<reqwest::Error>()
            .is_some_and(|e| e.is_connect())
            || e.downcast_ref::<object_store::client::HttpError>()
                .is_some_and(|e| e.kind() == object_store::client::HttpErrorKind::Connect)
        {
            return Kind::Unreachable;
        }
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            if crate::error::io_kind(e) == Kind::NoSpace {
                return Kind::NoSpace;
            }
        }
        source = e.source();
    }
    Kind::Failure
}

/// Connect and idle (per read) bounds; no total bound, which would cut the
/// download of a large artifact that is still flowing (object_store's
/// default is 30 s per request).
pub(super) fn client_options() -> object_store::ClientOptions {
    let timeouts = timeout::remote();
    object_store::ClientOptions::new()
        .with_connect_timeout(timeouts.connect)
        .with_read_timeout(timeouts.idle)
        .with_timeout_disabled()
}

/// Retries (of timeouts too) stop once a request is older than the idle
/// bound: a silent repository fails within about twice that, instead of
/// object_store's default of three minutes of retries.
pub(super) fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        retry_timeout: timeout::remote().idle,
        ..Default::default()
    }
}
