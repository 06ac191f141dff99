//! The identity domain: values built only through checking constructors, the rules for
//! linking members and for consent, and the service's one error enum. No gRPC, no SQL.

pub mod audit;
pub mod consent;
pub mod credential;
pub mod identifier;
pub mod linking;
pub mod merge;
pub mod partner;
pub mod purpose;
pub mod secrets;

use lianyu_kit::{FieldViolation, KitError, ServiceError};
use tonic::Code;

/// Every way an identity call can fail, each with its gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// INVALID_ARGUMENT with field violations.
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldViolation>),
    /// NOT_FOUND, reason `<WHAT>_NOT_FOUND`. Also what another partner's ids get.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// UNAUTHENTICATED, for example INVALID_CLIENT: one answer for every bad credential.
    #[error("{1}")]
    Unauthenticated(&'static str, &'static str),
    /// PERMISSION_DENIED, for example OPERATOR_ONLY.
    #[error("{1}")]
    Denied(&'static str, &'static str),
    /// FAILED_PRECONDITION: NO_ACTIVE_ALLIANCE, PURPOSE_NOT_ALLOWED, MEMBER_ERASED, ...
    #[error("{1}")]
    Precondition(&'static str, String),
    /// ALREADY_EXISTS, for example PARTNER_EXISTS.
    #[error("{1}")]
    Exists(&'static str, &'static str),
    /// RESOURCE_EXHAUSTED, for example TOO_MANY_TOKEN_REQUESTS.
    #[error("{1}")]
    Exhausted(&'static str, &'static str),
    /// INTERNAL: something that is never the caller's fault (signing a token failed).
    #[error("internal: {0}")]
    Internal(String),
    #[error(transparent)]
    Kit(#[from] KitError),
}

impl IdentityError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }
}

impl From<lianyu_kit::storage::StorageError> for IdentityError {
    fn from(e: lianyu_kit::storage::StorageError) -> Self {
        Self::Kit(KitError::Storage(e))
    }
}

impl ServiceError for IdentityError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Unauthenticated(..) => Code::Unauthenticated,
            Self::Denied(..) => Code::PermissionDenied,
            Self::Precondition(..) => Code::FailedPrecondition,
            Self::Exists(..) => Code::AlreadyExists,
            Self::Exhausted(..) => Code::ResourceExhausted,
            Self::Internal(_) => Code::Internal,
            Self::Kit(e) => e.code(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "INVALID_ARGUMENT",
            Self::NotFound("partner") => "PARTNER_NOT_FOUND",
            Self::NotFound("alliance") => "ALLIANCE_NOT_FOUND",
            Self::NotFound("member") => "MEMBER_NOT_FOUND",
            Self::NotFound("erased member") => "MEMBER_ERASED",
            Self::NotFound("store") => "STORE_NOT_FOUND",
            Self::NotFound("identifier") => "IDENTIFIER_NOT_FOUND",
            Self::NotFound("credential") => "CREDENTIAL_NOT_FOUND",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Unauthenticated(reason, _)
            | Self::Exhausted(reason, _)
            | Self::Denied(reason, _)
            | Self::Precondition(reason, _)
            | Self::Exists(reason, _) => reason,
            Self::Internal(_) => "INTERNAL",
            Self::Kit(e) => e.reason(),
        }
    }

    fn field_violations(&self) -> Vec<FieldViolation> {
        match self {
            Self::Invalid(v) => v.clone(),
            Self::Kit(e) => e.field_violations(),
            _ => Vec::new(),
        }
    }
}

/// Collects field violations so a request reports all its problems at once.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Keeps the value when `result` is Ok, records the violation otherwise.
    pub fn check<T>(&mut self, field: impl Into<String>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    pub fn finish(self) -> Result<(), IdentityError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(IdentityError::Invalid(self.0))
        }
    }
}

/// Checks a free-text field: trimmed, non-empty when required, at most `max` characters.
pub fn text(value: &str, required: bool, max: usize) -> Result<String, String> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err("required".into());
    }
    if value.chars().count() > max {
        return Err(format!("at most {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(value.to_owned())
}
