//! Request validation every service shares: collect every field violation of a request and
//! answer them together (INVALID_ARGUMENT with `google.rpc.BadRequest`), never one per retry.

use crate::{
    error::{FieldViolation, KitError},
    ids::PartnerId,
    names,
};

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

    /// A list of "partners/{partner}" names, checked one by one (`field[i]`), at most `max`,
    /// appended to `into` without repeats (so a caller can put itself first).
    pub fn partners(
        &mut self,
        field: &str,
        given: &[String],
        max: usize,
        into: &mut Vec<PartnerId>,
    ) {
        if given.len() > max {
            self.add(field, format!("at most {max} partners"));
        }
        for (i, name) in given.iter().enumerate() {
            if let Some(id) = self.check(format!("{field}[{i}]"), partner(name))
                && !into.contains(&id)
            {
                into.push(id);
            }
        }
    }

    /// How many violations are recorded so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing was recorded, otherwise INVALID_ARGUMENT with every violation.
    pub fn finish(self) -> Result<(), KitError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(KitError::Invalid(self.0))
        }
    }
}

/// A "partners/{partner}" name's partner id.
pub fn partner(name: &str) -> Result<PartnerId, String> {
    names::parse(name, "partners/{partner}").map(|[id]| PartnerId::new(id))
}

/// Checks a free-text field: trimmed, non-empty when required, at most `max` characters, no
/// control characters.
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
