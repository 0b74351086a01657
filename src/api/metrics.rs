//! `GET /metrics`: fleetd's metrics in the Prometheus text format (see [`crate::metrics`]).
//! Served on every API listener, behind the same access control as the rest of the API.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use crate::metrics;

/// Renders the process-wide metrics plus what only the API state knows (etcd reachability).
pub(crate) async fn scrape(State(state): State<ApiState>) -> Response {
    let mut extra = String::new();
    let status = state.registry.status();
    metrics::header(
        &mut extra,
        "fleet_etcd_available",
        "gauge",
        "1 while this fleetd's etcd watch is healthy.",
    );
    let _ = writeln!(extra, "fleet_etcd_available {}", u8::from(status.available));
    metrics::header(
        &mut extra,
        "fleet_etcd_revision",
        "gauge",
        "The etcd revision this fleetd's mirror has applied.",
    );
    let _ = writeln!(extra, "fleet_etcd_revision {}", status.revision);
    let body = metrics::global().render(&extra).await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}
