//! The error body of every failed request: `{"error":{"code":N,"message":"..."}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleet_sched::MachineId;

use crate::registry::RegistryError;

/// The message of a 503 while etcd cannot be reached (fleet's wording).
pub const ETCD_UNAVAILABLE: &str = "fleet server unable to communicate with etcd";

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Status code.
    pub status: StatusCode,
    /// Message for the client.
    pub message: String,
    /// The machines the client must choose from with `machineID=` (the error body's `machineIDs`).
    pub choose_from: Vec<MachineId>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            choose_from: Vec::new(),
        }
    }

    /// 409 for a request about a unit on several machines that must name one of `machines` with
    /// `machineID=`: clients read the choice from the body's `machineIDs`, not from the message.
    pub fn choose_machine(message: impl Into<String>, machines: Vec<MachineId>) -> ApiError {
        ApiError {
            choose_from: machines,
            ..ApiError::conflict(message)
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 405.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        match e {
            RegistryError::Unavailable(reason) => {
                tracing::debug!("answering 503: {reason}");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ETCD_UNAVAILABLE)
            }
            RegistryError::NotFound(_) => ApiError::not_found("unit does not exist"),
            RegistryError::AlreadyExists(n) => {
                ApiError::conflict(format!("unit {n} already exists"))
            }
            RegistryError::Conflict(n) => {
                ApiError::conflict(format!("unit {n} is being changed concurrently; try again"))
            }
            e @ RegistryError::NoSpace(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("fleet server unable to write to etcd: {e}"),
            ),
            RegistryError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
            e @ (RegistryError::Etcd(_) | RegistryError::Tls { .. }) => {
                tracing::error!("registry error: {e}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&fleet_api_types::ErrorDoc {
            error: fleet_api_types::ErrorBody {
                code: self.status.as_u16(),
                message: self.message,
                machine_ids: self.choose_from,
            },
        })
        .expect("an error document always serializes");
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}
