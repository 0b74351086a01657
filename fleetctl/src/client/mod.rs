//! The fleet HTTP API v1 as seen by fleetctl: the endpoint, the transport (HTTP/1.1 over a unix socket or
//! TCP, one kept-alive connection), the JSON entities, and the typed calls including the
//! `nextPageToken` paging loop.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use fleet_api_types::{
    DesiredState, ErrorDoc, Machine, MachineId, MachinePage, RestartOutput, RestartResult, Unit,
    UnitOutput, UnitPage, UnitState, UnitStatePage,
};
use hyper::body::Bytes;
use hyper::Method;
use serde::de::DeserializeOwned;

/// The API path prefix (fleet also accepts `/v1-alpha`; we always use the stable one).
pub use fleet_api_types::API_PREFIX;

mod http;
pub use http::{Credentials, Endpoint, HttpTransport};

/// Everything that can go wrong talking to fleetd.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The `--endpoint` value is not a URL this client can use.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Opening the connection to fleetd failed (socket missing, connection refused, ...).
    #[error("cannot connect to fleetd at {endpoint}: {source}")]
    Connect {
        /// The endpoint as given.
        endpoint: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed after the connection was open.
    #[error("{method} {path} to fleetd at {endpoint} failed: {source}")]
    Http {
        /// The endpoint as given.
        endpoint: String,
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// fleetd did not answer within `--request-timeout`.
    #[error("{method} {path} to fleetd at {endpoint} timed out after {timeout:?} (see --request-timeout)")]
    Timeout {
        /// The endpoint as given.
        endpoint: String,
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// A `--ca-file`, `--cert-file`, `--key-file` or `--token-file` cannot be used.
    #[error("{flag} {path}: {reason}")]
    Credentials {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The API answered with its error document `{"error":{"code":N,"message":"..."}}`.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's message.
        message: String,
        /// The machines to choose from with `machineID=` (the document's `machineIDs`; a 409 about a
        /// global unit on several machines), else empty.
        choose_from: Vec<MachineId>,
    },
    /// The API answered something that is not what the v1 API answers.
    #[error("unexpected answer from fleetd to {method} {path} (HTTP {status}): {detail}")]
    Unexpected {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
}

impl ClientError {
    /// The HTTP status of an API error, if this is one.
    pub fn api_status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The machines an API error says to choose from with `machineID=` (empty for other errors).
    pub fn choose_from(&self) -> &[MachineId] {
        match self {
            ClientError::Api { choose_from, .. } => choose_from,
            _ => &[],
        }
    }
}

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
}

/// The one door to fleetd: send a request, get the raw answer. [`HttpTransport`] is the real one; tests
/// use fakes.
pub trait Transport {
    /// Send `method path` (path includes the query) with an optional JSON body.
    fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<RawResponse, ClientError>>;

    /// Send every request of `batch`; the answers in the batch's order. This default sends them one
    /// after the other; [`HttpTransport`] sends up to [`PARALLEL_REQUESTS`] at once.
    fn send_batch(
        &mut self,
        batch: Vec<BatchRequest>,
    ) -> impl Future<Output = Vec<Result<RawResponse, ClientError>>> {
        async move {
            let mut out = Vec::with_capacity(batch.len());
            for (method, path, body) in batch {
                out.push(self.send(method, &path, body).await);
            }
            out
        }
    }
}

/// One request of a batch: method, path (with the query), JSON body.
pub type BatchRequest = (Method, String, Option<Vec<u8>>);

/// How many requests of a batch [`HttpTransport`] has in flight at once, each on its own connection:
/// fleetd answers them in parallel and etcd commits their transactions together.
pub const PARALLEL_REQUESTS: usize = 16;

/// Upper bound on pages followed in one listing, so that a server that keeps answering the same token
/// cannot make fleetctl loop forever (100 items a page: ten million items).
pub const MAX_PAGES: usize = 100_000;

/// Typed calls of the v1 API over some [`Transport`].
pub struct Api<T> {
    transport: T,
}

/// Percent-encode a path segment or query value (everything but unreserved characters).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl<T: Transport> Api<T> {
    /// Calls over `transport`.
    pub fn new(transport: T) -> Self {
        Api { transport }
    }

    /// The transport (tests inspect their fakes through it).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let resp = self.transport.send(method.clone(), path, body).await?;
        Self::checked(method, path, resp)
    }

    /// `resp` when it is a 2xx, else the API's error.
    fn checked(method: Method, path: &str, resp: RawResponse) -> Result<RawResponse, ClientError> {
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        Err(match serde_json::from_slice::<ErrorDoc>(&resp.body) {
            Ok(doc) => ClientError::Api {
                status: resp.status,
                message: doc.error.message,
                choose_from: doc.error.machine_ids,
            },
            Err(_) => ClientError::Unexpected {
                method,
                path: path.to_string(),
                status: resp.status,
                detail: format!(
                    "not a fleet API error document: {:?}",
                    String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                ),
            },
        })
    }

    async fn get_json<D: DeserializeOwned>(&mut self, path: &str) -> Result<D, ClientError> {
        let resp = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Unexpected {
            method: Method::GET,
            path: path.to_string(),
            status: resp.status,
            detail: format!("undecodable JSON: {e}"),
        })
    }

    /// GET `path` page after page, following `nextPageToken` until the server stops sending one.
    async fn paged<D, I>(
        &mut self,
        path: &str,
        split: impl Fn(D) -> (Vec<I>, Option<String>),
    ) -> Result<Vec<I>, ClientError>
    where
        D: DeserializeOwned,
    {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let url = match &token {
                None => path.to_string(),
                Some(t) => {
                    let sep = if path.contains('?') { '&' } else { '?' };
                    format!("{path}{sep}nextPageToken={}", encode_component(t))
                }
            };
            let (mut page, next) = split(self.get_json::<D>(&url).await?);
            items.append(&mut page);
            match next {
                Some(t) if !t.is_empty() => {
                    if token.as_deref() == Some(t.as_str()) {
                        return Err(ClientError::Unexpected {
                            method: Method::GET,
                            path: url,
                            status: 200,
                            detail: format!("the server sent the same nextPageToken {t:?} twice"),
                        });
                    }
                    token = Some(t);
                }
                _ => return Ok(items),
            }
        }
        Err(ClientError::Unexpected {
            method: Method::GET,
            path: path.to_string(),
            status: 200,
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// All units (`GET /fleet/v1/units`, every page).
    pub async fn units(&mut self) -> Result<Vec<Unit>, ClientError> {
        self.paged(&format!("{API_PREFIX}/units"), |p: UnitPage| {
            (p.units, p.next_page_token)
        })
        .await
    }

    /// One unit, `None` when it does not exist.
    pub async fn unit(&mut self, name: &str) -> Result<Option<Unit>, ClientError> {
        match self
            .get_json(&format!("{API_PREFIX}/units/{}", encode_component(name)))
            .await
        {
            Ok(u) => Ok(Some(u)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create or replace a unit (PUT with options; desired state as given, inactive when empty).
    pub async fn put_unit(&mut self, unit: &Unit) -> Result<(), ClientError> {
        let body = serde_json::to_vec(unit).expect("a unit always serializes");
        self.call(
            Method::PUT,
            &format!("{API_PREFIX}/units/{}", encode_component(&unit.name)),
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// Create or replace every unit of `units` at once ([`Transport::send_batch`]: one request, so
    /// one etcd transaction, per unit); one result per unit, in order.
    pub async fn put_units(&mut self, units: &[Unit]) -> Vec<Result<(), ClientError>> {
        let batch: Vec<BatchRequest> = units
            .iter()
            .map(|u| {
                (
                    Method::PUT,
                    format!("{API_PREFIX}/units/{}", encode_component(&u.name)),
                    Some(serde_json::to_vec(u).expect("a unit always serializes")),
                )
            })
            .collect();
        let paths: Vec<String> = batch.iter().map(|(_, p, _)| p.clone()).collect();
        self.transport
            .send_batch(batch)
            .await
            .into_iter()
            .zip(paths)
            .map(|(r, path)| r.and_then(|resp| Self::checked(Method::PUT, &path, resp).map(|_| ())))
            .collect()
    }

    /// Set the desired state of every unit of `names` at once; one result per unit, in order.
    pub async fn set_desired_states(
        &mut self,
        names: &[&str],
        state: DesiredState,
    ) -> Vec<Result<(), ClientError>> {
        let units: Vec<Unit> = names
            .iter()
            .map(|n| Unit {
                name: n.to_string(),
                desired_state: Some(state),
                ..Unit::default()
            })
            .collect();
        self.put_units(&units).await
    }

    /// Set the desired state of an existing unit (PUT without options).
    pub async fn set_desired_state(
        &mut self,
        name: &str,
        state: DesiredState,
    ) -> Result<(), ClientError> {
        self.put_unit(&Unit {
            name: name.to_string(),
            desired_state: Some(state),
            ..Unit::default()
        })
        .await
    }

    /// Delete a unit; `Ok(false)` when it did not exist.
    pub async fn destroy_unit(&mut self, name: &str) -> Result<bool, ClientError> {
        match self
            .call(
                Method::DELETE,
                &format!("{API_PREFIX}/units/{}", encode_component(name)),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::Api { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Unit states (`GET /fleet/v1/state`, every page), optionally for one unit only.
    pub async fn unit_states(&mut self, unit: Option<&str>) -> Result<Vec<UnitState>, ClientError> {
        let path = match unit {
            Some(u) => format!("{API_PREFIX}/state?unitName={}", encode_component(u)),
            None => format!("{API_PREFIX}/state"),
        };
        self.paged(&path, |p: UnitStatePage| (p.states, p.next_page_token))
            .await
    }

    /// `systemctl status` of a unit with its last `lines` journal lines, from its machine (or from
    /// `machine`, for a global unit).
    pub async fn unit_status(
        &mut self,
        name: &str,
        lines: u32,
        machine: Option<&str>,
    ) -> Result<UnitOutput, ClientError> {
        let mut path = format!(
            "{API_PREFIX}/units/{}/status?lines={lines}",
            encode_component(name)
        );
        if let Some(m) = machine {
            path.push_str(&format!("&machineID={}", encode_component(m)));
        }
        self.get_json(&path).await
    }

    /// Journal lines of a unit: the last `lines`, or at most `lines` after `cursor`.
    pub async fn unit_journal(
        &mut self,
        name: &str,
        lines: u32,
        cursor: Option<&str>,
        machine: Option<&str>,
    ) -> Result<UnitOutput, ClientError> {
        let mut path = format!(
            "{API_PREFIX}/units/{}/journal?lines={lines}",
            encode_component(name)
        );
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", encode_component(c)));
        }
        if let Some(m) = machine {
            path.push_str(&format!("&machineID={}", encode_component(m)));
        }
        self.get_json(&path).await
    }

    /// A restart (systemd's `RestartUnit`) of a unit on the machines running it, or only on `machine` (fleet
    /// extension `POST units/{name}/restart`): one result per machine asked.
    pub async fn restart_unit(
        &mut self,
        name: &str,
        machine: Option<&str>,
    ) -> Result<Vec<RestartResult>, ClientError> {
        let mut path = format!("{API_PREFIX}/units/{}/restart", encode_component(name));
        if let Some(m) = machine {
            path.push_str(&format!("?machineID={}", encode_component(m)));
        }
        let resp = self.call(Method::POST, &path, None).await?;
        serde_json::from_slice::<RestartOutput>(&resp.body)
            .map(|r| r.restarts)
            .map_err(|e| ClientError::Unexpected {
                method: Method::POST,
                path,
                status: resp.status,
                detail: format!("undecodable JSON: {e}"),
            })
    }

    /// All machines (`GET /fleet/v1/machines`, every page).
    pub async fn machines(&mut self) -> Result<Vec<Machine>, ClientError> {
        self.paged(&format!("{API_PREFIX}/machines"), |p: MachinePage| {
            (p.machines, p.next_page_token)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A scripted transport for unit tests.
    use super::*;
    use std::collections::VecDeque;

    /// Answers requests from a queue and records what was asked.
    #[derive(Default)]
    pub struct Scripted {
        /// (status, body) answers, in order.
        pub answers: VecDeque<(u16, String)>,
        /// `METHOD path` of every request, in order, with the body if any.
        pub requests: Vec<(String, Option<String>)>,
    }

    impl Scripted {
        pub fn new(answers: &[(u16, &str)]) -> Self {
            Scripted {
                answers: answers.iter().map(|(s, b)| (*s, b.to_string())).collect(),
                requests: Vec::new(),
            }
        }
    }

    impl Transport for Scripted {
        async fn send(
            &mut self,
            method: Method,
            path: &str,
            body: Option<Vec<u8>>,
        ) -> Result<RawResponse, ClientError> {
            self.requests.push((
                format!("{method} {path}"),
                body.map(|b| String::from_utf8(b).unwrap()),
            ));
            let (status, body) = self
                .answers
                .pop_front()
                .unwrap_or_else(|| panic!("no scripted answer for {method} {path}"));
            Ok(RawResponse {
                status,
                body: Bytes::from(body),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Scripted;
    use super::*;

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("unix:///var/run/fleet.sock").unwrap(),
            Endpoint::Unix("/var/run/fleet.sock".into())
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:49153").unwrap(),
            Endpoint::Http {
                authority: "127.0.0.1:49153".into(),
                base: String::new()
            }
        );
        assert_eq!(
            Endpoint::parse("http://fleet.example/api/").unwrap(),
            Endpoint::Http {
                authority: "fleet.example:80".into(),
                base: "/api".into()
            }
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:8080,http://other:1").unwrap(),
            Endpoint::Http {
                authority: "[::1]:8080".into(),
                base: String::new()
            }
        );
        assert_eq!(
            Endpoint::parse("https://fleet.example").unwrap(),
            Endpoint::Https {
                authority: "fleet.example:443".into(),
                base: String::new()
            }
        );
        assert!(Endpoint::parse("tcp://h:1").is_err());
        assert!(Endpoint::parse("unix://").is_err());
        assert!(Endpoint::parse("http:///x").is_err());
    }

    #[test]
    fn listing_follows_next_page_token_until_it_is_absent() {
        let api_answers = [
            (
                200,
                r#"{"units":[{"name":"a.service","desiredState":"inactive"}],"nextPageToken":"ZAACAA=="}"#,
            ),
            (
                200,
                r#"{"units":[{"name":"b.service"}],"nextPageToken":"ZAADAA=="}"#,
            ),
            (200, r#"{"units":[{"name":"c.service"}]}"#),
        ];
        let mut api = Api::new(Scripted::new(&api_answers));
        let units = block(api.units()).unwrap();
        let names: Vec<_> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["a.service", "b.service", "c.service"]);
        let paths: Vec<_> = api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "GET /fleet/v1/units",
                "GET /fleet/v1/units?nextPageToken=ZAACAA%3D%3D",
                "GET /fleet/v1/units?nextPageToken=ZAADAA%3D%3D",
            ]
        );
    }

    #[test]
    fn paging_keeps_other_query_parameters_and_stops_on_an_empty_token() {
        let mut api = Api::new(Scripted::new(&[
            (
                200,
                r#"{"states":[{"name":"a.service"}],"nextPageToken":"T"}"#,
            ),
            (200, r#"{"states":[],"nextPageToken":""}"#),
        ]));
        let states = block(api.unit_states(Some("a@b.service"))).unwrap();
        assert_eq!(states.len(), 1);
        let paths: Vec<_> = api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "GET /fleet/v1/state?unitName=a%40b.service",
                "GET /fleet/v1/state?unitName=a%40b.service&nextPageToken=T",
            ]
        );
    }

    #[test]
    fn a_repeated_page_token_is_an_error_not_a_loop() {
        let mut api = Api::new(Scripted::new(&[
            (200, r#"{"machines":[],"nextPageToken":"X"}"#),
            (200, r#"{"machines":[],"nextPageToken":"X"}"#),
        ]));
        let err = block(api.machines()).unwrap_err().to_string();
        assert!(err.contains("same nextPageToken"), "{err}");
    }

    #[test]
    fn api_errors_carry_the_server_message_and_404_means_absent() {
        let mut api = Api::new(Scripted::new(&[
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            (
                409,
                r#"{"error":{"code":409,"message":"unit does not exist and options field empty"}}"#,
            ),
            (502, "<html>bad gateway</html>"),
        ]));
        assert_eq!(block(api.unit("x.service")).unwrap(), None);
        let e = block(api.set_desired_state("x.service", DesiredState::Loaded)).unwrap_err();
        assert_eq!(e.api_status(), Some(409));
        assert_eq!(e.to_string(), "unit does not exist and options field empty");
        let e = block(api.units()).unwrap_err().to_string();
        assert!(e.contains("HTTP 502") && e.contains("bad gateway"), "{e}");
        let (req, body) = &api.transport().requests[1];
        assert_eq!(req, "PUT /fleet/v1/units/x.service");
        assert_eq!(
            body.as_deref(),
            Some(r#"{"name":"x.service","desiredState":"loaded"}"#)
        );
    }

    #[test]
    fn connecting_to_a_missing_socket_names_the_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let ep = format!("unix://{}/nope.sock", dir.path().display());
        let mut t = HttpTransport::new(&ep, Duration::from_secs(1)).unwrap();
        let e = block(t.send(Method::GET, "/fleet/v1/units", None))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&ep) && e.contains("cannot connect"), "{e}");
    }
}
