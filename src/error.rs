//! Errors at the HTTP boundary.
//!
//! Storage returns [`StoreError`]; handlers turn domain failures into a [`Failure`] (a kind,
//! a stable code, a client-facing message and field details), which `?` turns into the
//! generated [`agentplane_api::ApiError`]; the generated `From<ApiError>` of each operation's
//! response enum answers the documented response of its status. Internal details are logged,
//! never sent.

use agentplane_api::models::{Error as ErrorBody, ErrorDetail, ErrorEnvelope, ErrorType};

use crate::db::StoreError;

/// The class of a failure; each maps to one documented status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PreconditionFailed,
    UnsupportedMediaType,
    Unprocessable,
    TooManyRequests,
    Unavailable,
}

impl Kind {
    pub fn status(self) -> u16 {
        match self {
            Kind::BadRequest => 400,
            Kind::Unauthorized => 401,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::Conflict => 409,
            Kind::PreconditionFailed => 412,
            Kind::UnsupportedMediaType => 415,
            Kind::Unprocessable => 422,
            Kind::TooManyRequests => 429,
            Kind::Unavailable => 503,
        }
    }

    fn error_type(self) -> ErrorType {
        match self {
            Kind::BadRequest | Kind::Unprocessable | Kind::UnsupportedMediaType => {
                ErrorType::InvalidRequestError
            }
            Kind::Unauthorized => ErrorType::AuthenticationError,
            Kind::Forbidden => ErrorType::AuthorizationError,
            Kind::NotFound => ErrorType::NotFoundError,
            Kind::Conflict => ErrorType::ConflictError,
            Kind::PreconditionFailed => ErrorType::PreconditionFailedError,
            Kind::TooManyRequests => ErrorType::RateLimitError,
            Kind::Unavailable => ErrorType::ServiceUnavailableError,
        }
    }

    /// The kind of a framework-level error status.
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => Kind::Unauthorized,
            403 => Kind::Forbidden,
            404 | 405 => Kind::NotFound,
            409 => Kind::Conflict,
            412 => Kind::PreconditionFailed,
            415 => Kind::UnsupportedMediaType,
            422 => Kind::Unprocessable,
            429 => Kind::TooManyRequests,
            s if s >= 500 => Kind::Unavailable,
            _ => Kind::BadRequest,
        }
    }
}

/// A failed request, ready to become an error envelope.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: Kind,
    pub envelope: Box<ErrorEnvelope>,
}

/// Builds an error envelope.
pub fn envelope(
    kind: Kind, code: &str, message: impl Into<String>, details: Vec<ErrorDetail>, request_id: &str,
) -> ErrorEnvelope {
    ErrorEnvelope {
        error: ErrorBody {
            type_: kind.error_type(),
            code: code.to_string(),
            message: message.into(),
            details,
            request_id: request_id.to_string(),
            timestamp: crate::ids::now(),
            documentation_url: Some("/docs".to_string()),
        },
    }
}

/// One field detail.
pub fn detail(field: &str, code: &str, message: impl Into<String>) -> ErrorDetail {
    ErrorDetail {
        field: field.to_string(),
        code: code.to_string(),
        message: message.into(),
    }
}

impl Failure {
    pub fn new(kind: Kind, code: &str, message: impl Into<String>, request_id: &str) -> Self {
        Failure {
            kind,
            envelope: Box::new(envelope(kind, code, message, Vec::new(), request_id)),
        }
    }

    pub fn with_details(
        kind: Kind, code: &str, message: impl Into<String>, details: Vec<ErrorDetail>,
        request_id: &str,
    ) -> Self {
        Failure {
            kind,
            envelope: Box::new(envelope(kind, code, message, details, request_id)),
        }
    }

    /// A failure about one field (`field`, with the detail code `field_code`), whose detail
    /// says what its message says.
    pub fn on_field(
        kind: Kind, code: &str, field: &str, field_code: &str, message: impl Into<String>,
        request_id: &str,
    ) -> Self {
        let message = message.into();
        let details = vec![detail(field, field_code, message.clone())];
        Failure::with_details(kind, code, message, details, request_id)
    }

    /// Maps a storage error; `not_found` is the code for a missing resource (`AGENT_NOT_FOUND`).
    pub fn from_store(e: StoreError, not_found: &str, request_id: &str) -> Self {
        match e {
            StoreError::NotFound => Failure::new(
                Kind::NotFound,
                not_found,
                "no such resource in this organization",
                request_id,
            ),
            StoreError::Conflict(_) => Failure::new(
                Kind::Conflict,
                "CONFLICT",
                "the resource already exists",
                request_id,
            ),
            StoreError::PreconditionFailed => Failure::new(
                Kind::PreconditionFailed,
                "PRECONDITION_FAILED",
                "the resource changed since the ETag given in If-Match",
                request_id,
            ),
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, request_id, "database unavailable");
                Failure::new(
                    Kind::Unavailable,
                    "SERVICE_UNAVAILABLE",
                    "the database is unavailable; retry later",
                    request_id,
                )
            }
            e @ (StoreError::Database(_) | StoreError::Corrupt(_)) => {
                tracing::error!(error = %e, request_id, "storage failure");
                Failure::new(
                    Kind::Unavailable,
                    "INTERNAL_ERROR",
                    "the request could not be completed; retry later",
                    request_id,
                )
            }
        }
    }
}

impl From<Failure> for agentplane_api::ApiError {
    fn from(f: Failure) -> Self {
        agentplane_api::ApiError {
            status: f.kind.status(),
            envelope: f.envelope,
        }
    }
}

/// `map_err` for a storage result in a handler: a missing row is `not_found` (the resource's
/// code, `AGENT_NOT_FOUND`), anything else its [`Failure::from_store`].
pub fn store_error<'a>(
    not_found: &'a str, request_id: &'a str,
) -> impl FnOnce(StoreError) -> Failure + 'a {
    move |e| Failure::from_store(e, not_found, request_id)
}
