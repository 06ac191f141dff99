//! The identity domain: values built only through checking constructors, the rules for
//! linking members and for consent, and the service's own error cases. No gRPC, no SQL.

pub mod audit;
pub mod consent;
pub mod credential;
pub mod identifier;
pub mod linking;
pub mod merge;
pub mod partner;
pub mod purpose;
pub mod secrets;

use lianyu_kit::KitError;
pub use lianyu_kit::validate::{Violations, text};

/// Identity's own failures. Everything generic (invalid arguments, other things not found,
/// refusals with a reason) is the kit's [`KitError`]; the api maps both to statuses.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// NOT_FOUND / MEMBER_NOT_FOUND: no member by that scoped id for the caller — also what
    /// another partner's scoped id gets.
    #[error("member not found")]
    MemberNotFound,
    /// NOT_FOUND / MEMBER_ERASED: the caller erased its records of this member; the id is a
    /// tombstone and is never handed out again.
    #[error("member erased")]
    MemberErased,
    /// ABORTED / TERMS_VERSION_MISMATCH: the alliance's terms changed since the caller read
    /// the `terms_version` it gave.
    #[error("the alliance's terms changed since they were read; read them again")]
    TermsVersionMismatch,
    #[error(transparent)]
    Kit(#[from] KitError),
}

impl From<lianyu_kit::storage::StorageError> for IdentityError {
    fn from(e: lianyu_kit::storage::StorageError) -> Self {
        Self::Kit(KitError::Storage(e))
    }
}
