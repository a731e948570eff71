//! The thin HTTP client of OpenSearch's REST API, and how its failures read.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::error::{Error, Kind, Result};
use crate::process::mask_userinfo;
use crate::timeout::{Phase, Timeouts};

use super::SVC;

/// Thin HTTP client for the REST API, cheap to clone into tasks.
#[derive(Clone)]
pub(super) struct Http {
    pub(super) base: String,
    pub(super) client: reqwest::Client,
    pub(super) username: Option<String>,
    pub(super) password: Option<crate::secret::Secret>,
    pub(super) timeouts: Timeouts,
}

/// An HTTP failure: the status (if the server answered) and a readable message.
pub(super) struct HttpError {
    pub(super) status: Option<StatusCode>,
    pub(super) message: String,
    pub(super) unreachable: bool,
    /// Which bound ran out, when one did.
    pub(super) timed_out: Option<Phase>,
}

/// The bound a reqwest error ran out of, if any.
pub(super) fn timed_out(e: &reqwest::Error) -> Option<Phase> {
    match (e.is_timeout(), e.is_connect()) {
        (true, true) => Some(Phase::Connect),
        (true, false) => Some(Phase::Idle),
        _ => None,
    }
}

impl Http {
    pub(super) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let builder = self.client.request(method, url);
        match &self.username {
            Some(user) => builder.basic_auth(user, self.password.as_ref().map(|p| p.expose())),
            None => builder,
        }
    }

    pub(super) async fn send_raw(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> std::result::Result<Value, HttpError> {
        let bytes = self.send_bytes(builder).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Send; the body of a successful answer as bytes, any other answer as an error.
    pub(super) async fn send_bytes(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> std::result::Result<bytes::Bytes, HttpError> {
        let response = builder.send().await.map_err(|e| HttpError {
            status: None,
            unreachable: e.is_connect() || e.is_timeout(),
            timed_out: timed_out(&e),
            message: mask_userinfo(&e.to_string()),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| HttpError {
            status: Some(status),
            unreachable: false,
            timed_out: timed_out(&e),
            message: e.to_string(),
        })?;
        if status.is_success() {
            return Ok(bytes);
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reason = body
            .pointer("/error/reason")
            .or_else(|| body.pointer("/error"))
            .map(|r| r.to_string())
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned()
            });
        Err(HttpError {
            status: Some(status),
            unreachable: false,
            timed_out: None,
            message: format!("HTTP {status}: {reason}"),
        })
    }

    pub(super) fn error(&self, step: &str, err: HttpError) -> Error {
        let base = mask_userinfo(&self.base);
        if let Some(phase) = err.timed_out {
            return self.timeouts.error(
                Some(SVC),
                step,
                phase,
                &format!("OpenSearch at {base}"),
                &format!("{base}: "),
            );
        }
        let mut e = Error::failure(step, err.message).service(SVC);
        e.http_status = err.status.map(|s| s.as_u16());
        if err.unreachable {
            e.of_kind(Kind::Unreachable).hint(format!("is OpenSearch running and reachable at {base}? check `docker compose ps` and OPENSEARCH_URL"))
        } else if err.status == Some(StatusCode::UNAUTHORIZED)
            || err.status == Some(StatusCode::FORBIDDEN)
        {
            e.of_kind(Kind::Authentication).hint("the cluster refused our credentials: check OPENSEARCH_USER and OPENSEARCH_PASSWORD")
        } else if err.status.is_some_and(|s| !s.is_success()) {
            e.of_kind(Kind::StoreRefused)
        } else {
            e
        }
    }

    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        step: &str,
    ) -> Result<Value> {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        self.send_raw(builder)
            .await
            .map_err(|e| self.error(step, e))
    }

    pub(super) async fn get(&self, path: &str, step: &str) -> Result<Value> {
        self.call(Method::GET, path, None, step).await
    }

    /// GET of a listing endpoint; a 404 means the list is empty. OpenSearch answers
    /// `GET _ingest/pipeline` with `404 {}` when no pipeline exists.
    pub(super) async fn get_listing(&self, path: &str, step: &str) -> Result<Value> {
        match self.send_raw(self.request(Method::GET, path)).await {
            Ok(body) => Ok(body),
            Err(HttpError {
                status: Some(StatusCode::NOT_FOUND),
                ..
            }) => Ok(json!({})),
            Err(e) => Err(self.error(step, e)),
        }
    }

    /// DELETE that treats "not there" as done.
    pub(super) async fn delete_if_present(&self, path: &str, step: &str) -> Result<()> {
        match self.send_raw(self.request(Method::DELETE, path)).await {
            Ok(_) => Ok(()),
            Err(HttpError {
                status: Some(StatusCode::NOT_FOUND),
                ..
            }) => Ok(()),
            Err(e) => Err(self.error(step, e)),
        }
    }
}
