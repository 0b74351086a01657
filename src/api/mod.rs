//! The HTTP API v1 (fleet-compatible), served on a unix socket and optionally TCP.
//!
//! Routes (each under both `/fleet/v1` and `/v1-alpha`): `GET discovery`, `GET units`,
//! `GET|PUT|DELETE units/{name}`, `GET state`, `GET state/{name}`, `GET|PATCH machines`; and three fleet extensions
//! (fleet v1 used SSH for the first two), `GET units/{name}/status`, `GET units/{name}/journal` and
//! `POST units/{name}/restart`, answered by the unit's machine(s) ([`relay`]). `/` and the bare prefixes
//! answer 405, anything else 404. `GET /metrics` serves Prometheus metrics ([`crate::metrics`]).
//! Every response carries `Server: fleetd/<version>` and (except `/metrics`) `Content-Type:
//! application/json`, 201 and 204 included; every error is `{"error":{"code":N,"message":"..."}}`.
//! The status-code rules of each route are documented on its handler and exercised by `tests/api.rs`.
//!
//! Where this API deliberately differs from fleet v1.0.0 (each the obvious fix):
//! - an invalid `desiredState` is a 400 (fleet stored it and corrupted the unit);
//! - options of an existing unit are validated too (fleet only validated new units);
//! - a template can never get a state other than `inactive`, on create, replace or update
//!   (replacing a unit, i.e. different options, without `desiredState` makes it `inactive`, as
//!   in fleet: the original fleetctl waits for that before it sets the state it wants again);
//! - `nextPageToken` is only sent when another page has items (fleet also sent it after an
//!   exactly full last page, pointing at an empty page);
//! - `GET`/`DELETE` of a syntactically invalid name is a 404, like any unit that does not exist;
//! - `Content-Type: application/json; charset=...` is accepted; error bodies are JSON everywhere,
//!   including 404/405 (fleet answered those with an empty body);
//! - bodies larger than `api_max_body` are refused with 413; a body that is not a JSON object where
//!   one is expected (`[]` as a unit) is a 400;
//! - the errors hyper answers by itself (a URI of 64 KiB or more, headers too large, a malformed
//!   request line) carry the same JSON error body (`wire`);
//! - `PATCH /machines` may name any machine of the cluster, as in fleet: each machine applies its
//!   own ops (relayed over the agents' channel) and keeps them across restarts; a machine that is
//!   not in the cluster is a 404 and nothing is applied.
//!
//! Architecture invariant: handlers validate everything before they write, and each write is one
//! registry call (one etcd transaction), so a request that fails has written nothing.

pub mod access;
pub mod activation;
pub mod cluster;
mod error;
mod machines;
mod metrics;
pub mod pagination;
pub mod relay;
/// The API's JSON documents (one definition, shared with fleetctl).
pub use fleet_api_types as schema;
mod units;
mod wire;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use http_body_util::BodyExt;
use tokio::net::{TcpListener, UnixListener};

pub use cluster::{ClusterView, LocalCluster, MachineInfo, MetadataOp, UnitStateInfo};
pub use error::{ApiError, ETCD_UNAVAILABLE};

use crate::registry::Registry;

/// The value of the `Server` header.
pub const SERVER: &str = concat!("fleetd/", env!("CARGO_PKG_VERSION"));

/// The discovery document served at `GET /fleet/v1/discovery`.
pub const DISCOVERY: &str = include_str!("discovery.json");

/// Settings that SIGHUP may change while serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSettings {
    /// Items per page (`token_limit`).
    pub token_limit: u16,
    /// Largest accepted request body (`api_max_body`).
    pub max_body: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            token_limit: 100,
            max_body: 1024 * 1024,
        }
    }
}

/// Everything the handlers need; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    registry: Registry,
    cluster: Arc<dyn ClusterView>,
    settings: Arc<RwLock<ApiSettings>>,
    relay: Option<Arc<dyn relay::UnitRelay>>,
}

impl ApiState {
    /// State over `registry` (units) and `cluster` (machines, unit states).
    pub fn new(
        registry: Registry,
        cluster: Arc<dyn ClusterView>,
        settings: ApiSettings,
    ) -> ApiState {
        ApiState {
            registry,
            cluster,
            settings: Arc::new(RwLock::new(settings)),
            relay: None,
        }
    }

    /// The same state, asking units' machines for status and journal through `relay` (without one,
    /// those routes answer 501).
    pub fn with_relay(mut self, relay: Arc<dyn relay::UnitRelay>) -> ApiState {
        self.relay = Some(relay);
        self
    }

    /// Replaces the settings (takes effect for the next request).
    pub fn set_settings(&self, s: ApiSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// The current settings.
    pub fn settings(&self) -> ApiSettings {
        *self.settings.read().unwrap_or_else(|e| e.into_inner())
    }

    fn token_limit(&self) -> u16 {
        self.settings().token_limit
    }

    fn max_body(&self) -> usize {
        self.settings().max_body
    }
}

/// The API router (both prefixes, error fallbacks, `Server` header).
pub fn router(state: ApiState) -> Router {
    let mut r = Router::new();
    for p in ["/fleet/v1", "/v1-alpha"] {
        r = r
            .route(
                &format!("{p}/discovery"),
                get(discovery).fallback(only("GET")),
            )
            .route(
                &format!("{p}/units"),
                get(units::list).fallback(only("GET")),
            )
            .route(
                &format!("{p}/units/{{name}}"),
                get(units::get)
                    .put(units::set)
                    .delete(units::destroy)
                    .fallback(only("GET, PUT and DELETE")),
            )
            .route(
                &format!("{p}/units/{{name}}/status"),
                get(relay::status).fallback(only("GET")),
            )
            .route(
                &format!("{p}/units/{{name}}/journal"),
                get(relay::journal).fallback(only("GET")),
            )
            .route(
                &format!("{p}/units/{{name}}/restart"),
                post(relay::restart).fallback(only("POST")),
            )
            .route(
                &format!("{p}/state"),
                get(machines::states).fallback(only("GET")),
            )
            .route(
                &format!("{p}/state/{{name}}"),
                get(machines::state).fallback(only("GET")),
            )
            .route(
                &format!("{p}/machines"),
                get(machines::list)
                    .patch(machines::patch)
                    .fallback(only("GET and PATCH")),
            )
            .route(p, any(prefix_not_allowed));
    }
    r.route("/metrics", get(metrics::scrape).fallback(only("GET")))
        .route("/", any(root_not_allowed))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_on_identity_conflict,
        ))
        .layer(axum::middleware::map_response(common_headers))
        .with_state(state)
}

/// While another live agent holds this machine's ID, every route answers 503 with the reason
/// (fleet v1 refused to serve with a duplicate machine ID too).
async fn refuse_on_identity_conflict(
    State(state): State<ApiState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match state.cluster.identity_conflict() {
        Some(msg) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).into_response(),
        None => next.run(req).await,
    }
}

/// `Server: fleetd/<version>` on every answer, and `Content-Type: application/json` on every answer
/// that has no other type (fleet's did, 201 and 204 included; clients check it).
async fn common_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static(SERVER));
    if !h.contains_key(header::CONTENT_TYPE) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    r
}

async fn discovery() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DISCOVERY,
    )
        .into_response()
}

fn only(methods: &'static str) -> impl Fn() -> std::future::Ready<ApiError> + Clone {
    move || {
        std::future::ready(ApiError::method_not_allowed(format!(
            "only {methods} supported against this resource"
        )))
    }
}

async fn prefix_not_allowed() -> ApiError {
    ApiError::method_not_allowed("no method is supported on the API root; see /fleet/v1/discovery")
}

async fn root_not_allowed() -> ApiError {
    ApiError::method_not_allowed("no method is supported on /; the API is under /fleet/v1")
}

async fn not_found() -> ApiError {
    ApiError::not_found("not found")
}

/// The query string as pairs, in order.
pub(crate) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    /// Every value of `name`.
    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of `name`, if given once; a 400 when repeated. An empty value counts as absent.
    fn single(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.all(name).as_slice() {
            [] => Ok(None),
            [v] => Ok((!v.is_empty()).then_some(*v)),
            _ => Err(ApiError::bad_request(format!("too many values for {name}"))),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }
}

/// 415 unless there is exactly one `Content-Type` and it is `application/json`
/// (parameters such as `; charset=utf-8` are allowed).
pub(crate) fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let values: Vec<&HeaderValue> = headers.get_all(header::CONTENT_TYPE).iter().collect();
    let unsupported = |m: String| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, m);
    match values.as_slice() {
        [] => Err(unsupported(
            "missing Content-Type header; expecting \"application/json\"".into(),
        )),
        [v] => {
            let ok = v
                .to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
            if ok {
                Ok(())
            } else {
                Err(unsupported(format!(
                    "unsupported Content-Type {:?}; expecting \"application/json\"",
                    String::from_utf8_lossy(v.as_bytes())
                )))
            }
        }
        _ => Err(unsupported(format!(
            "expected exactly one Content-Type header, found {}",
            values.len()
        ))),
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {max} bytes (fleetd's api_max_body)"),
    )
}

/// Reads the whole body, refusing (413) more than `max` bytes.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Err(e) => Err(ApiError::bad_request(format!("unable to read body: {e}"))),
    }
}

/// Binds the API's unix socket: removes a stale socket file (refusing if a server still answers
/// on it, or if the path is not a socket), then sets the permission bits to `mode`.
pub fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another server is listening on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
            tracing::info!("removed stale socket {}", path.display());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// Gives the API socket at `path` to `group` (a name from /etc/group, or a numeric GID); the owner
/// stays the user fleetd runs as (root).
pub fn set_socket_group(path: &Path, group: &str) -> io::Result<()> {
    let gid = match group.parse::<u32>() {
        Ok(gid) => gid,
        Err(_) => {
            lookup_group(group, &std::fs::read_to_string("/etc/group")?).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("group {group:?} is not in /etc/group"),
                )
            })?
        }
    };
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// The GID of `name` in the text of an /etc/group file.
fn lookup_group(name: &str, etc_group: &str) -> Option<u32> {
    etc_group.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.trim().parse().ok()
    })
}

/// Where the API listens.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The unix socket and its path (removed when serving ends, unless `keep_socket_file`).
    pub unix: Option<(UnixListener, PathBuf)>,
    /// The socket file belongs to someone else (systemd's socket activation): leave it in place.
    pub keep_socket_file: bool,
    /// The TCP listener.
    pub tcp: Option<TcpListener>,
    /// TLS and credentials of the TCP listener; `None` serves plain HTTP without access control
    /// (`api_tcp_insecure`).
    pub tcp_access: Option<Arc<access::TcpAccess>>,
}

/// Serves `router` on every listener until `shutdown` resolves, then finishes the requests in
/// flight and removes the socket file.
pub async fn serve(
    router: Router,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let socket_path = listeners
        .unix
        .as_ref()
        .filter(|_| !listeners.keep_socket_file)
        .map(|(_, p)| p.clone());
    if let Some((l, _)) = listeners.unix {
        let mut rx = rx.clone();
        let r = router.clone();
        tasks.spawn(async move {
            axum::serve(wire::JsonErrors(l), r)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
    }
    match (listeners.tcp, listeners.tcp_access) {
        (Some(l), Some(access)) => {
            let mut rx = rx.clone();
            let app = router.layer(axum::middleware::from_fn_with_state(
                access.clone(),
                access::require_credentials,
            ));
            tasks.spawn(async move {
                axum::serve(
                    wire::JsonErrors(access.listener(l)),
                    app.into_make_service_with_connect_info::<access::Peer>(),
                )
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            });
        }
        (Some(l), None) => {
            let mut rx = rx.clone();
            tasks.spawn(async move {
                axum::serve(wire::JsonErrors(l), router)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await
            });
        }
        (None, _) => {}
    }
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(io::Error::other(e)),
        }
    }
    if let Some(p) = socket_path {
        let _ = std::fs::remove_file(p);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cts {
            h.append(header::CONTENT_TYPE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn content_type_must_be_one_json() {
        assert!(check_json_content_type(&headers(&["application/json"])).is_ok());
        assert!(check_json_content_type(&headers(&["application/json; charset=utf-8"])).is_ok());
        for bad in [
            &[][..],
            &["text/plain"][..],
            &["application/json", "application/json"][..],
            &["application/jsonx"][..],
        ] {
            let e = check_json_content_type(&headers(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad:?}");
        }
    }

    #[test]
    fn the_discovery_document_lists_every_route() {
        let v: serde_json::Value = serde_json::from_str(DISCOVERY).unwrap();
        assert_eq!(v["id"], "fleet:v1");
        let mut listed: Vec<(String, String)> = Vec::new();
        for (_, r) in v["resources"].as_object().unwrap() {
            for (_, m) in r["methods"].as_object().unwrap() {
                listed.push((
                    m["httpMethod"].as_str().unwrap().to_string(),
                    m["path"].as_str().unwrap().to_string(),
                ));
                if let Some(resp) = m["response"]["$ref"].as_str() {
                    assert!(v["schemas"][resp].is_object(), "schema {resp}");
                }
            }
        }
        listed.sort();
        let mut routes: Vec<(String, String)> = [
            ("GET", "machines"),
            ("PATCH", "machines"),
            ("GET", "state"),
            ("GET", "state/{unitName}"),
            ("GET", "units"),
            ("GET", "units/{unitName}"),
            ("PUT", "units/{unitName}"),
            ("DELETE", "units/{unitName}"),
            ("GET", "units/{unitName}/status"),
            ("GET", "units/{unitName}/journal"),
            ("POST", "units/{unitName}/restart"),
        ]
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
        routes.sort();
        assert_eq!(listed, routes);
    }

    #[test]
    fn groups_are_found_by_name() {
        let etc = "root:x:0:\nfleet:x:973:alice,bob\nadm:x:4:\n";
        assert_eq!(lookup_group("fleet", etc), Some(973));
        assert_eq!(lookup_group("root", etc), Some(0));
        assert_eq!(lookup_group("flee", etc), None);
    }

    #[test]
    fn a_stale_socket_is_replaced_but_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        {
            let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _l = bind_unix(&p, 0o600).unwrap();
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let e = bind_unix(&p, 0o600).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        });
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(rt.block_on(async { bind_unix(&f, 0o600) }).is_err());
        assert!(f.exists());
    }
}
