//! The HTTP transport to fleetd: the endpoint (unix socket, http, https with a CA, a client certificate
//! or a bearer token), one kept-alive HTTP/1.1 connection, and batches over several at once.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use super::{BatchRequest, ClientError, RawResponse, Transport, PARALLEL_REQUESTS};

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
