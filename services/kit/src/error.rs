//! The one mapping from a service's error enum to `tonic::Status`: every status carries
//! `google.rpc.ErrorInfo` (a stable UPPER_SNAKE reason and the service's domain), invalid
//! arguments carry `google.rpc.BadRequest` field violations, and internal errors are logged
//! with a correlation id that is the only thing the caller sees.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::storage::StorageError;

/// One field that failed validation, named by its path in the request (`member.identifiers[0].value`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// What a service error tells the kit to build its status.
pub trait ServiceError: std::error::Error {
    fn code(&self) -> Code;
    /// Stable UPPER_SNAKE reason clients can switch on.
    fn reason(&self) -> &'static str;
    fn field_violations(&self) -> Vec<FieldViolation> {
        Vec::new()
    }
}

/// Maps a service error to its status. `domain` is `lianyu.<service>`.
pub fn to_status<E: ServiceError>(domain: &str, error: &E) -> Status {
    let code = error.code();
    if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
        let id = uuid::Uuid::new_v4().to_string();
        // Internal errors come from storage and I/O, whose messages hold no member data.
        tracing::error!(error.id = %id, error = %error, reason = error.reason(), "internal error");
        let meta = HashMap::from([("error_id".to_owned(), id.clone())]);
        return status_with_info(
            Code::Internal,
            format!("internal error (id {id})"),
            error.reason(),
            domain,
            meta,
        );
    }
    let mut details = ErrorDetails::with_error_info(error.reason(), domain, HashMap::new());
    let violations = error.field_violations();
    if !violations.is_empty() {
        details.set_bad_request(
            violations
                .into_iter()
                .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                .collect::<Vec<_>>(),
        );
    }
    Status::with_error_details(code, error.to_string(), details)
}

/// A status with `ErrorInfo` only.
pub fn status_with_info(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    domain: &str,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, domain, metadata),
    )
}

/// Errors raised by the kit's own helpers; services wrap it in their enum with `#[from]`.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// INVALID_ARGUMENT with field violations, reason INVALID_ARGUMENT.
    #[error("invalid request: {}", summary(.0))]
    Invalid(Vec<FieldViolation>),
    /// ALREADY_EXISTS, reason REQUEST_ID_REUSED: the same request_id with a different request.
    #[error("request_id was already used for a different request")]
    RequestIdReused,
    /// NOT_FOUND, reason MEMBER_ERASED: a replay of a call whose reply was about a person
    /// since erased; the reply was purged with the person's data.
    #[error("the member this request was about has been erased; its reply is gone")]
    SubjectErased,
    /// Classified storage failure (see `StorageError` for each code).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn summary(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl KitError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }
}

impl ServiceError for KitError {
    fn code(&self) -> Code {
        match self {
            KitError::Invalid(_) => Code::InvalidArgument,
            KitError::RequestIdReused => Code::AlreadyExists,
            KitError::SubjectErased => Code::NotFound,
            KitError::Storage(e) => e.code(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            KitError::Invalid(_) => "INVALID_ARGUMENT",
            KitError::RequestIdReused => "REQUEST_ID_REUSED",
            KitError::SubjectErased => "MEMBER_ERASED",
            KitError::Storage(e) => e.reason(),
        }
    }

    fn field_violations(&self) -> Vec<FieldViolation> {
        match self {
            KitError::Invalid(v) => v.clone(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(status: &Status) -> (String, String) {
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        (info.reason.clone(), info.domain.clone())
    }

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status = to_status(
            "lianyu.test",
            &KitError::invalid("page_size", "must not be negative"),
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            info(&status),
            ("INVALID_ARGUMENT".into(), "lianyu.test".into())
        );
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request");
        assert_eq!(bad.field_violations[0].field, "page_size");
        assert_eq!(bad.field_violations[0].description, "must not be negative");
    }

    #[test]
    fn internal_errors_hide_their_cause_behind_an_id() {
        let err = KitError::Storage(StorageError::Other("disk on fire at /var/lib".into()));
        let status = to_status("lianyu.test", &err);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("disk"), "{}", status.message());
        let details = status.get_error_details();
        let id = &details.error_info().unwrap().metadata["error_id"];
        assert!(status.message().contains(id.as_str()));
    }

    #[test]
    fn reused_request_id_is_already_exists() {
        let status = to_status("lianyu.test", &KitError::RequestIdReused);
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(info(&status).0, "REQUEST_ID_REUSED");
    }
}
