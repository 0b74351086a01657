//! Access control of the API's TCP listener: TLS (rustls with the ring provider, like gossip) and
//! one of two credentials on every request, a client certificate signed by `api_client_ca_file`
//! or `Authorization: Bearer <token>` matching `api_token_file`.
//!
//! A request with neither gets 401, one whose credentials are wrong gets 403, both with the API's
//! JSON error body. A client certificate from another CA does not fail the TLS handshake: the
//! handshake still proves the client holds the certificate's key, and the certificate is checked
//! against the CA right after it, so that the client gets a 403 that says what is wrong instead
//! of an opaque TLS alert. The unix socket is guarded by file permissions instead (see
//! `docs/security.md`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoClientAuth, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::ApiError;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TCP listener's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// Which setting (`api_tls_cert_file`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The token file is empty.
    #[error("api_token_file {0}: the file is empty")]
    EmptyToken(PathBuf),
    /// Neither a client CA nor a token file: anyone could use the API.
    #[error(
        "the TLS API listener needs client credentials: set api_client_ca_file (client \
         certificates) and/or api_token_file (bearer token)"
    )]
    NoCredentials,
    /// rustls refused the certificate, key or CA.
    #[error("TLS settings of the API: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not make a verifier.
    #[error("api_client_ca_file: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The files of the TLS TCP listener (`api_tls_*`, `api_client_ca_file`, `api_token_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// CA whose client certificates are accepted.
    pub client_ca_file: Option<PathBuf>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
}

/// A client certificate as checked after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// No certificate was presented.
    None,
    /// A certificate signed by the client CA.
    Valid,
    /// A certificate the client CA does not vouch for, and why.
    Invalid(String),
}

/// What the auth check knows about a TLS connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its certificate.
    pub cert: ClientCert,
}

/// The TLS acceptor and the credentials of the TCP listener.
#[derive(Clone)]
pub struct TcpAccess {
    acceptor: TlsAcceptor,
    client_ca: Option<Arc<dyn ClientCertVerifier>>,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for TcpAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpAccess")
            .field("client_ca", &self.client_ca.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

fn pem_err(what: &'static str, path: &Path, reason: impl ToString) -> AccessError {
    AccessError::Pem {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, AccessError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_err(what, path, "no certificate in the file"));
    }
    Ok(certs)
}

impl TcpAccess {
    /// Loads the certificate, key, client CA and token. At least one credential kind is needed.
    pub fn load(s: &TlsSettings) -> Result<TcpAccess, AccessError> {
        if s.client_ca_file.is_none() && s.token_file.is_none() {
            return Err(AccessError::NoCredentials);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs("api_tls_cert_file", &s.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&s.key_file)
            .map_err(|e| pem_err("api_tls_key_file", &s.key_file, e))?;
        let client_ca = match &s.client_ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs("api_client_ca_file", path)? {
                    roots
                        .add(c)
                        .map_err(|e| pem_err("api_client_ca_file", path, e))?;
                }
                let v =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .allow_unauthenticated()
                        .build()?;
                Some(v)
            }
            None => None,
        };
        let verifier: Arc<dyn ClientCertVerifier> = match &client_ca {
            Some(v) => Arc::new(Deferred(v.clone())),
            None => Arc::new(NoClientAuth),
        };
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        let token = match &s.token_file {
            Some(path) => {
                let t = std::fs::read_to_string(path)
                    .map_err(|e| pem_err("api_token_file", path, e))?;
                let t = t.trim();
                if t.is_empty() {
                    return Err(AccessError::EmptyToken(path.clone()));
                }
                Some(Arc::from(t))
            }
            None => None,
        };
        Ok(TcpAccess {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            client_ca,
            token,
        })
    }

    /// Wraps `listener`: connections are accepted after a TLS handshake (run concurrently, each
    /// with a deadline).
    pub fn listener(&self, listener: TcpListener) -> TlsListener {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let access = self.clone();
        let local = listener.local_addr();
        let task = tokio::spawn(async move {
            loop {
                let (stream, addr) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("API TCP accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let access = access.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let hs =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, access.acceptor.accept(stream));
                    match hs.await {
                        Ok(Ok(tls)) => {
                            let cert = access.check_cert(&tls);
                            let _ = tx.send((tls, Peer { addr, cert })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "API TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%addr, "API TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { rx, task, local }
    }

    fn check_cert(&self, tls: &TlsStream<TcpStream>) -> ClientCert {
        let Some(chain) = tls.get_ref().1.peer_certificates() else {
            return ClientCert::None;
        };
        let (Some(ca), Some((end, rest))) = (&self.client_ca, chain.split_first()) else {
            return ClientCert::None;
        };
        match ca.verify_client_cert(end, rest, UnixTime::now()) {
            Ok(_) => ClientCert::Valid,
            Err(e) => ClientCert::Invalid(e.to_string()),
        }
    }

    /// The credential check of one request from `peer`: `Ok` or the 401/403 to answer.
    pub fn authorize(
        &self,
        peer: &Peer,
        authorization: Option<&HeaderValue>,
    ) -> Result<(), ApiError> {
        if peer.cert == ClientCert::Valid {
            return Ok(());
        }
        let bearer = authorization.map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.strip_prefix("Bearer ").map(str::trim))
        });
        let forbidden = |m: String| ApiError::new(StatusCode::FORBIDDEN, m);
        match (bearer, &self.token) {
            (Some(Some(given)), Some(token)) if constant_time_eq(given, token) => Ok(()),
            (Some(Some(_)), Some(_)) => Err(forbidden("bearer token does not match api_token_file".into())),
            (Some(Some(_)), None) => Err(forbidden(
                "bearer tokens are not accepted by this fleetd (no api_token_file); use a client certificate".into(),
            )),
            (Some(None), _) => Err(forbidden(
                "unsupported Authorization header; expected \"Bearer <token>\"".into(),
            )),
            (None, _) => match &peer.cert {
                ClientCert::Invalid(why) => Err(forbidden(format!(
                    "client certificate not accepted (not signed by api_client_ca_file): {why}"
                ))),
                _ => Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "credentials required: present a client certificate signed by the API's client CA \
                     or an Authorization: Bearer token",
                )),
            },
        }
    }
}

/// Compares without an early exit on the first differing byte (length is not secret).
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Middleware of the TCP listener's router: refuses requests without valid credentials.
pub async fn require_credentials(
    State(access): State<Arc<TcpAccess>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    match access.authorize(&peer, req.headers().get(header::AUTHORIZATION)) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::debug!(addr = %peer.addr, "API request refused: {}", e.message);
            let unauthorized = e.status == StatusCode::UNAUTHORIZED;
            let mut r = e.into_response();
            if unauthorized {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"fleet\""),
                );
            }
            super::common_headers(r).await
        }
    }
}

/// TLS connections of a [`TcpAccess`], as an axum listener.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    task: tokio::task::JoinHandle<()>,
    local: io::Result<SocketAddr>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task only ends when aborted, i.e. when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        match &self.local {
            Ok(addr) => Ok(Peer {
                addr: *addr,
                cert: ClientCert::None,
            }),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// Accepts any client certificate during the handshake (its signature over the handshake is still
/// verified, proving the client holds the key); [`TcpAccess::check_cert`] checks it against the CA
/// right after, so a wrong certificate is answered with a 403 rather than a TLS alert.
#[derive(Debug)]
struct Deferred(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
