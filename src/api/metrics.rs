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
    metrics::header(
        &mut extra,
        "fleet_registry_damaged_keys",
        "gauge",
        "Keys under the prefix whose value does not parse (claims: or bound to no lease), by kind; \
         the mirror keeps their last good value (kept=\"true\") until they are fixed.",
    );
    let mut counts: std::collections::BTreeMap<(&str, bool), usize> =
        ["unit", "unit_file", "claim", "machine"]
            .iter()
            .flat_map(|k| [((*k, true), 0), ((*k, false), 0)])
            .collect();
    if let Ok(damage) = state.registry.damage() {
        for d in damage.values() {
            *counts.entry((d.kind(), d.kept)).or_default() += 1;
        }
    }
    for ((kind, kept), n) in counts {
        let _ = writeln!(
            extra,
            "fleet_registry_damaged_keys{{kind=\"{kind}\",kept=\"{kept}\"}} {n}"
        );
    }
    metrics::header(
        &mut extra,
        "fleet_registry_unparsable_values_total",
        "counter",
        "Values under the prefix (puts seen by the watch or a read) that did not parse.",
    );
    let _ = writeln!(
        extra,
        "fleet_registry_unparsable_values_total {}",
        crate::registry::unparsable_values_total()
    );
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
