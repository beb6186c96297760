//! A typed client of the daemon's REST API, over HTTP or its Unix socket: what `mptcpctl`
//! uses, with the same wire types the API answers with ([`crate::RuleView`] and the rest)
//! and the one request body ([`RuleRequest`]), so the CLI and the API cannot disagree on
//! the schema.
//!
//! Blocking (ureq): a command-line tool makes one request at a time.
//!
//! ```no_run
//! use mptcp_policy::{Access, PathManager, Settings};
//! use mptcp_socksd::{ApiClient, RuleRequest};
//!
//! let api = ApiClient::new("http://127.0.0.1:5000", None);
//! let settings = Settings {
//!     path_manager: PathManager::Ndiffports(Some(3)),
//!     ..Settings::default()
//! };
//! let request = RuleRequest::new("10.0.0.0/8", &settings, Access::Default);
//! let (rule, created) = api.add_rule(&request)?;
//! println!("{} {}", if created { "added" } else { "replaced" }, rule.ip);
//! for rule in api.rules()? {
//!     println!("{} {}", rule.ip, rule.path_manager);
//! }
//! # Ok::<(), mptcp_socksd::ClientError>(())
//! ```

mod unix;

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use ureq::http::StatusCode;

use crate::api::{
    Capabilities, ConnectionView, Health, LearnedView, RuleRequest, RuleView, rule_path,
};

/// How long one exchange with the API may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The API answered with an error status; `message` is its `error` text. A 401 is
    /// shown with a hint at the token.
    #[error(
        "{message} (HTTP {status}){hint}",
        hint = if *status == 401 { "; pass --token or set MPTCP_SOCKS_API_TOKEN" } else { "" }
    )]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// The API answered something that is not what the route answers.
    #[error("{0}")]
    BadAnswer(String),
    /// The API could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The API address or the token cannot be used.
    #[error("{0}")]
    Usage(String),
}

/// How the API is reached.
#[derive(Debug)]
enum Transport {
    /// `http://HOST:PORT` (the default).
    Http(ureq::Agent),
    /// The daemon's `--api unix:PATH`.
    Unix(PathBuf),
}

/// A client of one daemon's REST API.
#[derive(Debug)]
pub struct ApiClient {
    transport: Transport,
    /// The URL without a trailing `/`, or `unix:PATH`: what the messages call the API.
    base: String,
    token: Option<String>,
}

/// A status and body from the API.
struct Answer {
    status: StatusCode,
    text: String,
}

impl ApiClient {
    /// A client of the API at `api`: `http://HOST:PORT` (`HOST:PORT` alone means plain
    /// HTTP) or `unix:PATH`, sending `token` as a bearer token when given (an empty one
    /// counts as none). Nothing is sent until a request is made.
    pub fn new(api: &str, token: Option<String>) -> Self {
        let token = token.filter(|t| !t.is_empty());
        if let Some(path) = api.strip_prefix("unix:") {
            return ApiClient {
                transport: Transport::Unix(PathBuf::from(path)),
                base: api.to_owned(),
                token,
            };
        }
        let agent = ureq::Agent::config_builder()
            // Error statuses carry the server's message: read them, do not turn them into
            // a bare "status 422".
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        let base = api.trim_end_matches('/');
        // `--api 10.0.0.1:5000` is what an operator types; the seed's server was plain HTTP.
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        ApiClient {
            transport: Transport::Http(agent),
            base,
            token,
        }
    }

    /// The API's address as messages name it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /health`.
    ///
    /// # Errors
    /// See [`ClientError`]; likewise for every other request.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.get("/health")
    }

    /// `GET /rules`: every rule, in file order.
    pub fn rules(&self) -> Result<Vec<RuleView>, ClientError> {
        self.get("/rules")
    }

    /// `GET /rules/{destination}`.
    pub fn rule(&self, destination: &str) -> Result<RuleView, ClientError> {
        self.get(&rule_path(destination))
    }

    /// `POST /rules`: the stored rule, and whether it is new (`false`: it replaced one).
    pub fn add_rule(&self, request: &RuleRequest) -> Result<(RuleView, bool), ClientError> {
        let body = serde_json::to_string(request)
            .map_err(|e| ClientError::Usage(format!("cannot write the request: {e}")))?;
        let answer = self.send("POST", "/rules", Some(&body))?;
        let created = answer.status == StatusCode::CREATED;
        Ok((decode(self.expect_ok(answer)?)?, created))
    }

    /// `DELETE /rules/{destination}`.
    pub fn delete_rule(&self, destination: &str) -> Result<(), ClientError> {
        let answer = self.send("DELETE", &rule_path(destination), None)?;
        self.expect_ok(answer).map(drop)
    }

    /// `GET /capabilities`.
    pub fn capabilities(&self) -> Result<Capabilities, ClientError> {
        self.get("/capabilities")
    }

    /// `GET /connections`.
    pub fn connections(&self) -> Result<Vec<ConnectionView>, ClientError> {
        self.get("/connections")
    }

    /// `GET /learned`: what `via=auto:NAME` rules learned.
    pub fn learned(&self) -> Result<Vec<LearnedView>, ClientError> {
        self.get("/learned")
    }

    /// `DELETE /learned`.
    pub fn forget_learned(&self) -> Result<(), ClientError> {
        let answer = self.send("DELETE", "/learned", None)?;
        self.expect_ok(answer).map(drop)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let answer = self.send("GET", path, None)?;
        decode(self.expect_ok(answer)?)
    }

    fn authorization(&self) -> Result<Option<String>, ClientError> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        // It goes into a header line: a line break would end it.
        if token.bytes().any(|b| b.is_ascii_control()) {
            return Err(ClientError::Usage(
                "the token contains control characters".into(),
            ));
        }
        Ok(Some(format!("Bearer {token}")))
    }

    fn send(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer, ClientError> {
        let auth = self.authorization()?;
        match &self.transport {
            Transport::Http(agent) => {
                let url = format!("{}{path}", self.base);
                let response = match (method, body) {
                    ("POST", Some(body)) => {
                        let mut request =
                            agent.post(url).header("Content-Type", "application/json");
                        if let Some(auth) = &auth {
                            request = request.header("Authorization", auth);
                        }
                        request.send(body)
                    }
                    _ => {
                        let mut request = if method == "DELETE" {
                            agent.delete(url)
                        } else {
                            agent.get(url)
                        };
                        if let Some(auth) = &auth {
                            request = request.header("Authorization", auth);
                        }
                        request.call()
                    }
                };
                let mut response = response.map_err(|err| self.transport_error(err))?;
                let text = response.body_mut().read_to_string().map_err(|err| {
                    ClientError::BadAnswer(format!("cannot read the answer: {err}"))
                })?;
                Ok(Answer {
                    status: response.status(),
                    text,
                })
            }
            Transport::Unix(socket) => {
                let raw =
                    unix::exchange(socket, method, path, auth.as_deref(), body).map_err(|err| {
                        ClientError::Unreachable(format!(
                            "cannot reach the API at {}: {err} (is mptcp-socksd running, with \
                             --api {}?)",
                            self.base, self.base
                        ))
                    })?;
                let (status, body) = unix::parse_answer(&raw).map_err(|err| {
                    ClientError::BadAnswer(format!(
                        "bad answer from the API at {}: {err}",
                        self.base
                    ))
                })?;
                Ok(Answer {
                    status,
                    text: String::from_utf8_lossy(&body).into_owned(),
                })
            }
        }
    }

    fn transport_error(&self, err: ureq::Error) -> ClientError {
        match err {
            ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
                ClientError::Usage(format!("bad API address {:?}: {err}", self.base))
            }
            ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(_) => ClientError::Unreachable(format!(
                "cannot reach the API at {}: {err} (is mptcp-socksd running, with its API on \
                 that address?)",
                self.base
            )),
            other => ClientError::BadAnswer(format!("request to {} failed: {other}", self.base)),
        }
    }

    /// The JSON body of a successful answer (`null` for 204), or the server's message.
    fn expect_ok(&self, answer: Answer) -> Result<Value, ClientError> {
        let Answer { status, text } = answer;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|err| {
                ClientError::BadAnswer(format!("the API answered with bad JSON: {err}"))
            });
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| text.trim().to_owned());
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }
}

fn decode<T: DeserializeOwned>(body: Value) -> Result<T, ClientError> {
    serde_json::from_value(body)
        .map_err(|err| ClientError::BadAnswer(format!("unexpected answer from the API: {err}")))
}
