//! The fleet HTTP API v1 as seen by fleetctl: the endpoint, the transport (HTTP/1.1 over a unix socket or
//! TCP, one kept-alive connection), the JSON entities, and the typed calls including the
//! `nextPageToken` paging loop.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use fleet_api_types::{
    ErrorDoc, Machine, MachinePage, RestartOutput, RestartResult, Unit, UnitOutput, UnitPage,
    UnitState, UnitStatePage,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// The API path prefix (fleet also accepts `/v1-alpha`; we always use the stable one).
pub use fleet_api_types::API_PREFIX;

/// Where fleetd's API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///var/run/fleet.sock`: HTTP over a unix socket at this path.
    Unix(PathBuf),
    /// `http://host:port[/base]`: HTTP over TCP.
    Http {
        /// `host:port` to connect to (port 80 when the URL has none).
        authority: String,
        /// Path prefix put before `/fleet/v1` (empty, or starting with `/` and without a trailing `/`).
        base: String,
    },
    /// `https://host:port[/base]`: HTTP over TLS (fleetd's `api_tls_cert_file`), see [`Credentials`].
    Https {
        /// `host:port` to connect to (port 443 when the URL has none).
        authority: String,
        /// Path prefix put before `/fleet/v1`.
        base: String,
    },
}

/// What fleetctl presents to an https endpoint: the CA to verify fleetd with (`--ca-file`), and a
/// client certificate (`--cert-file`, `--key-file`) and/or a bearer token (`--token-file`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// CA certificate (PEM) that signed fleetd's server certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its key (PEM).
    pub key_file: Option<PathBuf>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
}

/// TLS settings and token loaded from [`Credentials`].
#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    token: Option<String>,
}

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
}

impl Endpoint {
    /// Parse `--endpoint`. fleet accepted a comma-separated list and used only the first; so do we (the
    /// caller warns).
    pub fn parse(endpoint: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: &str| ClientError::BadEndpoint {
            endpoint: endpoint.to_string(),
            reason: reason.to_string(),
        };
        let first = endpoint.split(',').next().unwrap_or("").trim();
        if let Some(path) = first.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad(
                    "unix:// needs a socket path, e.g. unix:///var/run/fleet.sock",
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (rest, tls) = match first.strip_prefix("https://") {
            Some(rest) => (Some(rest), true),
            None => (first.strip_prefix("http://"), false),
        };
        if let Some(rest) = rest {
            let (authority, base) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
                None => (rest, ""),
            };
            if authority.is_empty() {
                return Err(bad("http:// needs a host, e.g. http://127.0.0.1:49153"));
            }
            let authority = if has_port(authority) {
                authority.to_string()
            } else {
                format!("{authority}:{}", if tls { 443 } else { 80 })
            };
            let base = base.to_string();
            return Ok(if tls {
                Endpoint::Https { authority, base }
            } else {
                Endpoint::Http { authority, base }
            });
        }
        Err(bad(
            "expected unix://PATH, http://HOST:PORT or https://HOST:PORT",
        ))
    }
}

/// True when an authority (`host`, `host:port`, `[v6]`, `[v6]:port`) carries a port.
fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.starts_with('[') || host.ends_with(']'))
        }
        None => false,
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

/// HTTP/1.1 to fleetd over one kept-alive connection, reopened when fleetd closes it.
pub struct HttpTransport {
    endpoint: Endpoint,
    /// The endpoint as the user wrote it, for messages.
    shown: String,
    timeout: Duration,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
    tls: Option<Tls>,
}

fn cred_err(flag: &'static str, path: &std::path::Path, reason: impl ToString) -> ClientError {
    ClientError::Credentials {
        flag,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Tls {
    fn load(c: &Credentials) -> Result<Tls, ClientError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |flag, path: &std::path::Path| {
            CertificateDer::pem_file_iter(path)
                .map_err(|e| cred_err(flag, path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| cred_err(flag, path, e))
        };
        let Some(ca) = &c.ca_file else {
            return Err(cred_err(
                "--ca-file",
                std::path::Path::new(""),
                "https endpoints need --ca-file: the CA that signed fleetd's api_tls_cert_file",
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs("--ca-file", ca)? {
            roots.add(cert).map_err(|e| cred_err("--ca-file", ca, e))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| cred_err("--ca-file", ca, e))?
            .with_root_certificates(roots);
        let config = match (&c.cert_file, &c.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certs("--cert-file", cert)?;
                let k = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| cred_err("--key-file", key, e))?;
                builder
                    .with_client_auth_cert(chain, k)
                    .map_err(|e| cred_err("--key-file", key, e))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(p), None) | (None, Some(p)) => {
                return Err(cred_err(
                    "--cert-file/--key-file",
                    p,
                    "--cert-file and --key-file go together",
                ))
            }
        };
        let token = match &c.token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p).map_err(|e| cred_err("--token-file", p, e))?;
                let t = t.trim().to_string();
                if t.is_empty() {
                    return Err(cred_err("--token-file", p, "the file is empty"));
                }
                Some(t)
            }
            None => None,
        };
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            token,
        })
    }
}

impl HttpTransport {
    /// Another transport to the same endpoint, with its own connection.
    fn sibling(&self) -> HttpTransport {
        HttpTransport {
            endpoint: self.endpoint.clone(),
            shown: self.shown.clone(),
            timeout: self.timeout,
            sender: None,
            tls: self.tls.clone(),
        }
    }

    /// A transport for `endpoint` (as written by the user) with a per-request timeout.
    pub fn new(shown: &str, timeout: Duration) -> Result<Self, ClientError> {
        Ok(HttpTransport {
            endpoint: Endpoint::parse(shown)?,
            shown: shown.to_string(),
            timeout,
            sender: None,
            tls: None,
        })
    }

    /// Uses `creds` for an https endpoint (loads the files now); ignored for other endpoints.
    pub fn with_credentials(mut self, creds: &Credentials) -> Result<Self, ClientError> {
        if matches!(self.endpoint, Endpoint::Https { .. }) {
            self.tls = Some(Tls::load(creds)?);
        }
        Ok(self)
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, ClientError> {
        let connect_err = |source| ClientError::Connect {
            endpoint: self.shown.clone(),
            source,
        };
        let http_err = |source| ClientError::Http {
            endpoint: self.shown.clone(),
            method: Method::GET,
            path: String::from("(connect)"),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_err)?;
                let (sender, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                Ok(sender)
            }
            Endpoint::Http { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(connect_err)?;
                let _ = stream.set_nodelay(true);
                let (sender, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                Ok(sender)
            }
            Endpoint::Https { authority, .. } => {
                let tls = self.tls.as_ref().ok_or_else(|| {
                    cred_err(
                        "--ca-file",
                        std::path::Path::new(""),
                        "https endpoints need --ca-file",
                    )
                })?;
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name =
                    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                        ClientError::BadEndpoint {
                            endpoint: self.shown.clone(),
                            reason: format!("{host:?} is not a TLS server name: {e}"),
                        }
                    })?;
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(connect_err)?;
                let _ = stream.set_nodelay(true);
                let stream = tls
                    .connector
                    .connect(name, stream)
                    .await
                    .map_err(connect_err)?;
                let (sender, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                Ok(sender)
            }
        }
    }

    async fn send_inner(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let (host, full_path) = match &self.endpoint {
            Endpoint::Unix(_) => ("fleet".to_string(), path.to_string()),
            Endpoint::Http { authority, base } | Endpoint::Https { authority, base } => {
                (authority.clone(), format!("{base}{path}"))
            }
        };
        // A kept-alive connection may have been closed by fleetd since the last request: retry once on
        // a fresh connection when the old one fails before an answer (all our requests are idempotent).
        for attempt in 0..2 {
            let reused = self.sender.is_some();
            let mut sender = match self.sender.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            let http_err = |source| ClientError::Http {
                endpoint: self.shown.clone(),
                method: method.clone(),
                path: path.to_string(),
                source,
            };
            if let Err(e) = sender.ready().await {
                if reused && attempt == 0 {
                    continue;
                }
                return Err(http_err(e));
            }
            let mut req = Request::builder()
                .method(method.clone())
                .uri(full_path.as_str())
                .header(hyper::header::HOST, host.as_str())
                .header(hyper::header::ACCEPT, "application/json");
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            if let Some(token) = self.tls.as_ref().and_then(|t| t.token.as_deref()) {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = req
                .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| ClientError::Unexpected {
                    method: method.clone(),
                    path: path.to_string(),
                    status: 0,
                    detail: format!("cannot build request: {e}"),
                })?;
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) if reused && attempt == 0 && e.is_canceled() => continue,
                Err(e) => return Err(http_err(e)),
            };
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(http_err)?
                .to_bytes();
            self.sender = Some(sender);
            return Ok(RawResponse { status, body });
        }
        unreachable!("the loop returns on its second attempt")
    }
}

impl Transport for HttpTransport {
    async fn send_batch(
        &mut self,
        batch: Vec<BatchRequest>,
    ) -> Vec<Result<RawResponse, ClientError>> {
        let n = batch.len();
        if n <= 1 {
            let mut out = Vec::with_capacity(n);
            for (method, path, body) in batch {
                out.push(self.send(method, &path, body).await);
            }
            return out;
        }
        let queue = std::sync::Arc::new(std::sync::Mutex::new(
            batch
                .into_iter()
                .enumerate()
                .collect::<std::collections::VecDeque<_>>(),
        ));
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..PARALLEL_REQUESTS.min(n) {
            let mut t = self.sibling();
            if w == 0 {
                t.sender = self.sender.take();
            }
            let queue = queue.clone();
            workers.spawn(async move {
                let mut done = Vec::new();
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let Some((i, (method, path, body))) = next else {
                        break;
                    };
                    done.push((i, t.send(method, &path, body).await));
                }
                (t, done)
            });
        }
        let mut out: Vec<Option<Result<RawResponse, ClientError>>> = (0..n).map(|_| None).collect();
        while let Some(joined) = workers.join_next().await {
            let (t, done) = joined.expect("a batch worker does not panic");
            if self.sender.is_none() {
                self.sender = t.sender;
            }
            for (i, r) in done {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every request of the batch was sent"))
            .collect()
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.send_inner(method.clone(), path, body)).await {
            Ok(r) => r,
            Err(_) => {
                self.sender = None;
                Err(ClientError::Timeout {
                    endpoint: self.shown.clone(),
                    method,
                    path: path.to_string(),
                    timeout,
                })
            }
        }
    }
}

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
        state: &str,
    ) -> Vec<Result<(), ClientError>> {
        let units: Vec<Unit> = names
            .iter()
            .map(|n| Unit {
                name: n.to_string(),
                desired_state: state.to_string(),
                ..Unit::default()
            })
            .collect();
        self.put_units(&units).await
    }

    /// Set the desired state of an existing unit (PUT without options).
    pub async fn set_desired_state(&mut self, name: &str, state: &str) -> Result<(), ClientError> {
        self.put_unit(&Unit {
            name: name.to_string(),
            desired_state: state.to_string(),
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
        let e = block(api.set_desired_state("x.service", "loaded")).unwrap_err();
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
