//! The one mapping from a service's error enum to `tonic::Status`: every status carries
//! `google.rpc.ErrorInfo` (a stable UPPER_SNAKE reason and the service's domain), invalid
//! arguments carry `google.rpc.BadRequest` field violations, and internal errors are logged
//! with a correlation id that is the only thing the caller sees.

use std::collections::HashMap;

pub use tonic::Code;
use tonic::Status;
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
    /// The `ErrorInfo` domain: `lianyu.<service>`.
    fn domain(&self) -> &'static str {
        "lianyu"
    }
    /// `ErrorInfo` metadata a client may switch on beside the reason (a resource's current
    /// `state` when a transition is refused).
    fn metadata(&self) -> HashMap<String, String> {
        HashMap::new()
    }
    /// How long the caller should wait before trying again, for a failure that passes (a
    /// database or a peer that did not answer); carried as `RetryInfo` and
    /// `grpc-retry-pushback-ms`, jittered.
    fn retry_after(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A delay drawn at random from half to one and a half times `after`, so that callers told
/// to wait together do not all come back together.
pub(crate) fn jittered(after: std::time::Duration) -> std::time::Duration {
    use rand::Rng;
    after / 2 + after.mul_f64(rand::thread_rng().r#gen::<f64>())
}

/// Tells gRPC's own retry policies when to try again: the `grpc-retry-pushback-ms` metadata
/// they honour (a client reading `google.rpc.RetryInfo` (AIP-194) finds the same delay in the
/// details).
pub(crate) fn push_back(status: &mut Status, delay: std::time::Duration) {
    if let Ok(ms) = delay.as_millis().to_string().parse() {
        status.metadata_mut().insert("grpc-retry-pushback-ms", ms);
    }
}

/// Implements [`ServiceError`] for a service's error enum: each of its own (unit) variants with
/// its code and reason, `Kit(KitError)` delegated to the kit, in the service's error domain.
///
/// ```ignore
/// lianyu_kit::service_error!(LiveError, "lianyu.live", {
///     SessionNotFound => (NotFound, "SESSION_NOT_FOUND"),
/// });
/// ```
#[macro_export]
macro_rules! service_error {
    ($error:ty, $domain:literal, { $($variant:ident => ($code:ident, $reason:literal)),+ $(,)? }) => {
        impl $crate::error::ServiceError for $error {
            fn code(&self) -> $crate::error::Code {
                match self {
                    $(Self::$variant => $crate::error::Code::$code,)+
                    Self::Kit(e) => $crate::error::ServiceError::code(e),
                }
            }

            fn reason(&self) -> &'static str {
                match self {
                    $(Self::$variant => $reason,)+
                    Self::Kit(e) => $crate::error::ServiceError::reason(e),
                }
            }

            fn field_violations(&self) -> Vec<$crate::error::FieldViolation> {
                match self {
                    Self::Kit(e) => $crate::error::ServiceError::field_violations(e),
                    _ => Vec::new(),
                }
            }

            fn domain(&self) -> &'static str {
                $domain
            }

            fn metadata(&self) -> ::std::collections::HashMap<String, String> {
                match self {
                    Self::Kit(e) => $crate::error::ServiceError::metadata(e),
                    _ => ::std::collections::HashMap::new(),
                }
            }

            fn retry_after(&self) -> Option<::std::time::Duration> {
                match self {
                    Self::Kit(e) => $crate::error::ServiceError::retry_after(e),
                    _ => None,
                }
            }
        }
    };
}

/// How long a caller is told to wait after CONCURRENT_UPDATE.
const CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a caller is told to wait when a service this call needs did not answer (each
/// call already retried it within its own deadline): long enough for a restarted replica to
/// be ready, short enough for a till.
const PEER_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

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
    let mut metadata: HashMap<String, String> = error
        .metadata()
        .into_iter()
        .map(|(k, v)| (k, bounded(&v, MAX_TEXT).into_owned()))
        .collect();
    let violations = error.field_violations();
    let mut message = bounded(&error.to_string(), MAX_MESSAGE).into_owned();
    if violations.len() > MAX_VIOLATIONS {
        metadata.insert("violations".to_owned(), violations.len().to_string());
        message = format!(
            "{} ({} problems; the first {MAX_VIOLATIONS} are in the details)",
            bounded(&message, MAX_MESSAGE - 64),
            violations.len()
        );
    }
    let mut details = ErrorDetails::with_error_info(error.reason(), domain, metadata);
    if !violations.is_empty() {
        details.set_bad_request(
            violations
                .iter()
                .take(MAX_VIOLATIONS)
                .map(|v| {
                    tonic_types::FieldViolation::new(
                        bounded(&v.field, MAX_TEXT),
                        bounded(&v.description, MAX_TEXT),
                    )
                })
                .collect::<Vec<_>>(),
        );
    }
    let delay = error.retry_after().map(jittered);
    if delay.is_some() {
        details.set_retry_info(delay);
    }
    let mut status = Status::with_error_details(code, message, details);
    if let Some(delay) = delay {
        push_back(&mut status, delay);
    }
    status
}

/// Field violations a status carries at most; the rest are counted in `ErrorInfo` metadata
/// `violations`. With [`MAX_TEXT`] and [`MAX_MESSAGE`] this keeps an error's trailers (the
/// message percent-encoded, the details base64-encoded and holding the message again) well
/// under the 8 KiB that gRPC's C core — Python's, Ruby's, PHP's, C#'s clients — accepts
/// before it drops the answer for RESOURCE_EXHAUSTED "received metadata size exceeds…", so
/// a caller who sent a huge bad request still learns what was wrong with it.
pub const MAX_VIOLATIONS: usize = 10;

/// Bytes of a violation's field or description, or a metadata value, at most.
pub const MAX_TEXT: usize = 160;

/// Bytes of a status message at most.
pub const MAX_MESSAGE: usize = 480;

/// `text` cut to at most `max` bytes on a character boundary, with "…" when it was cut.
fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
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

/// The failures every service shares, each with its code and a stable reason; a service's own
/// error enum holds only its domain cases and wraps this one with `#[from]`, so any `?` on a
/// kit helper or a generic refusal converts on its own.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// INVALID_ARGUMENT with field violations, reason INVALID_ARGUMENT.
    #[error("invalid request: {}", summary(.0))]
    Invalid(Vec<FieldViolation>),
    /// NOT_FOUND with the given reason (`STORE_NOT_FOUND`); also what another partner's ids
    /// get, so a caller cannot tell "not yours" from "does not exist".
    #[error("{}", not_found(.0))]
    NotFound(&'static str),
    /// UNAUTHENTICATED, for example INVALID_CLIENT: one answer for every bad credential.
    #[error("{1}")]
    Unauthenticated(&'static str, &'static str),
    /// PERMISSION_DENIED, for example OPERATOR_ONLY.
    #[error("{1}")]
    Denied(&'static str, &'static str),
    /// FAILED_PRECONDITION: the system is not in the state the call needs (NO_ACTIVE_ALLIANCE).
    #[error("{1}")]
    Precondition(&'static str, String),
    /// FAILED_PRECONDITION for a transition the resource's state does not allow: the reason
    /// (BENEFIT_STATE), the current state (also in `ErrorInfo` metadata `state`) and what the
    /// call needed.
    #[error("{2} (it is {1})")]
    WrongState(&'static str, &'static str, String),
    /// ALREADY_EXISTS, for example PARTNER_EXISTS.
    #[error("{1}")]
    Exists(&'static str, &'static str),
    /// RESOURCE_EXHAUSTED, for example TOO_MANY_TOKEN_REQUESTS.
    #[error("{1}")]
    Exhausted(&'static str, &'static str),
    /// UNAVAILABLE: a peer the decision depends on did not answer in time, for example
    /// IDENTITY_UNAVAILABLE. Nothing was written; the caller may retry.
    #[error("{1}")]
    Unavailable(&'static str, String),
    /// INTERNAL: never the caller's fault (signing a token failed). The message is logged with
    /// an id; the caller sees only the id.
    #[error("internal: {0}")]
    Internal(String),
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

/// "STORE_NOT_FOUND" reads "store not found"; "MEMBER_ERASED" reads "member erased".
fn not_found(reason: &str) -> String {
    reason.to_lowercase().replace('_', " ")
}

fn summary(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl KitError {
    /// A read's failure as a [`StorageError`], which can be cloned: what one batched read
    /// ([`crate::batched::Batched`]) hands each of its callers. Anything but a storage failure
    /// becomes `StorageError::Other` (INTERNAL).
    pub fn into_storage(self) -> StorageError {
        match self {
            KitError::Storage(e) => e,
            other => StorageError::Other(other.to_string()),
        }
    }

    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }
}

impl ServiceError for KitError {
    fn code(&self) -> Code {
        match self {
            KitError::Invalid(_) => Code::InvalidArgument,
            KitError::NotFound(_) => Code::NotFound,
            KitError::Unauthenticated(..) => Code::Unauthenticated,
            KitError::Denied(..) => Code::PermissionDenied,
            KitError::Precondition(..) | KitError::WrongState(..) => Code::FailedPrecondition,
            KitError::Exists(..) => Code::AlreadyExists,
            KitError::Exhausted(..) => Code::ResourceExhausted,
            KitError::Unavailable(..) => Code::Unavailable,
            KitError::Internal(_) => Code::Internal,
            KitError::RequestIdReused => Code::AlreadyExists,
            KitError::SubjectErased => Code::NotFound,
            KitError::Storage(e) => e.code(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            KitError::Invalid(_) => "INVALID_ARGUMENT",
            KitError::NotFound(reason)
            | KitError::Unauthenticated(reason, _)
            | KitError::Denied(reason, _)
            | KitError::Precondition(reason, _)
            | KitError::WrongState(reason, ..)
            | KitError::Exists(reason, _)
            | KitError::Exhausted(reason, _) => reason,
            KitError::Unavailable(reason, _) => reason,
            KitError::Internal(_) => "INTERNAL",
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

    fn metadata(&self) -> HashMap<String, String> {
        match self {
            KitError::WrongState(_, state, _) => {
                HashMap::from([("state".to_owned(), (*state).to_owned())])
            }
            _ => HashMap::new(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            // The database's health is checked this often; a recovered one serves by then.
            KitError::Storage(StorageError::Unavailable(_)) => Some(crate::dbhealth::EVERY),
            // Another writer won a race; trying again at once would meet it again.
            KitError::Storage(StorageError::Conflict(_)) => Some(CONFLICT_RETRY),
            KitError::Unavailable(..) => Some(PEER_RETRY),
            _ => None,
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

    /// A request with thousands of bad fields, each echoing a long value, still gets an answer
    /// that fits a gRPC C-core client's 8 KiB metadata limit and says what was wrong.
    #[test]
    fn a_huge_bad_request_gets_a_bounded_answer_that_still_names_its_fields() {
        let long = "聯".repeat(30_000);
        let violations: Vec<_> = (0..500)
            .map(|i| {
                FieldViolation::new(format!("members[{i}]"), format!("{long} is not a member"))
            })
            .collect();
        let status = to_status("lianyu.test", &KitError::Invalid(violations));
        assert_eq!(status.code(), Code::InvalidArgument);
        // What goes on the wire: the message percent-encoded, the details base64-encoded.
        let encoded_message: usize = status
            .message()
            .bytes()
            .map(|b| {
                if b.is_ascii_graphic() || b == b' ' {
                    1
                } else {
                    3
                }
            })
            .sum();
        let wire = encoded_message + status.details().len().div_ceil(3) * 4;
        assert!(wire < 6 * 1024, "{wire} bytes of trailers");
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request");
        assert_eq!(bad.field_violations.len(), MAX_VIOLATIONS);
        assert_eq!(bad.field_violations[0].field, "members[0]");
        assert!(bad.field_violations[0].description.ends_with('…'));
        assert_eq!(details.error_info().unwrap().metadata["violations"], "500");
        assert!(
            status.message().contains("500 problems"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn bounded_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded("short", 10), "short");
        let cut = bounded("聯域聯域聯域", 8);
        assert!(cut.len() <= 8 && cut.ends_with('…'), "{cut}");
        assert_eq!(cut, "聯…");
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
    fn not_found_names_what_in_its_reason_and_message() {
        let status = to_status("lianyu.test", &KitError::NotFound("STORE_NOT_FOUND"));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(info(&status).0, "STORE_NOT_FOUND");
        assert_eq!(status.message(), "store not found");
    }

    #[test]
    fn violations_report_every_problem_at_once() {
        let mut v = crate::validate::Violations::default();
        assert_eq!(
            v.check("a", crate::validate::text("  ok ", true, 5)),
            Some("ok".into())
        );
        v.check("b", crate::validate::text("", true, 5));
        v.check("c", crate::validate::text("far too long", false, 5));
        v.check("d", crate::validate::text("bell\u{7}", false, 50));
        let status = to_status("lianyu.test", &v.finish().unwrap_err());
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|f| (f.field.as_str(), f.description.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("b", "required"),
                ("c", "at most 5 characters"),
                ("d", "must not contain control characters"),
            ]
        );
    }

    #[test]
    fn reused_request_id_is_already_exists() {
        let status = to_status("lianyu.test", &KitError::RequestIdReused);
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(info(&status).0, "REQUEST_ID_REUSED");
    }

    /// A service's own error enum, as `service_error!` builds its status.
    #[derive(Debug, thiserror::Error)]
    enum ShopError {
        #[error("no such shop")]
        ShopNotFound,
        #[error(transparent)]
        Kit(#[from] KitError),
    }

    crate::service_error!(ShopError, "lianyu.shop", {
        ShopNotFound => (NotFound, "SHOP_NOT_FOUND"),
    });

    /// The delay a status tells its caller to wait, as `RetryInfo` and as gRPC's pushback
    /// metadata; both or neither.
    fn told_to_wait(status: &Status) -> Option<(std::time::Duration, u64)> {
        let retry = status.get_error_details().retry_info().cloned();
        let pushback = status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        assert_eq!(retry.is_some(), pushback.is_some(), "{status:?}");
        Some((retry?.retry_delay?, pushback?))
    }

    /// A failure that passes tells the caller when to come back — within half to one and a
    /// half times its delay, the same in both forms — through a service's error enum too; a
    /// refusal that a retry would only repeat tells it nothing of the kind.
    #[test]
    fn a_passing_failure_tells_when_to_retry_and_a_lasting_one_does_not() {
        use std::time::Duration;
        let passing: [(ShopError, Duration); 3] = [
            (
                KitError::Storage(StorageError::Unavailable("pool timed out".into())).into(),
                crate::dbhealth::EVERY,
            ),
            (
                KitError::Storage(StorageError::Conflict("deadlock".into())).into(),
                CONFLICT_RETRY,
            ),
            (
                KitError::Unavailable("IDENTITY_UNAVAILABLE", "identity did not answer".into())
                    .into(),
                PEER_RETRY,
            ),
        ];
        for (error, after) in passing {
            let status = to_status("lianyu.shop", &error);
            let (delay, ms) = told_to_wait(&status).expect("a delay");
            assert!(delay >= after / 2 && delay <= after * 3 / 2, "{delay:?}");
            assert_eq!(u128::from(ms), delay.as_millis());
            assert_eq!(info(&status).1, "lianyu.shop");
        }
        for lasting in [
            ShopError::ShopNotFound,
            KitError::RequestIdReused.into(),
            KitError::Storage(StorageError::Full("disk full".into())).into(),
            KitError::Storage(StorageError::Other("syntax".into())).into(),
            KitError::invalid("name", "required").into(),
        ] {
            assert_eq!(told_to_wait(&to_status("lianyu.shop", &lasting)), None);
        }
    }
}
