//! Update masks (AIP-134): an update names the fields it changes, so a client that does not
//! know a newer field never blanks it. `*` names every updatable field.

use std::collections::BTreeSet;

use prost_types::FieldMask;

use crate::error::{FieldViolation, KitError};

/// The fields `mask` names, each one of `updatable`. A missing or empty mask, or a path that
/// is not updatable, is INVALID_ARGUMENT on `update_mask`.
pub fn paths(
    mask: Option<&FieldMask>,
    updatable: &[&'static str],
) -> Result<BTreeSet<&'static str>, KitError> {
    let given = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if given.is_empty() {
        return Err(KitError::invalid(
            "update_mask",
            format!("name the fields to change: {}", updatable.join(", ")),
        ));
    }
    if given.iter().any(|p| p == "*") {
        return Ok(updatable.iter().copied().collect());
    }
    let mut out = BTreeSet::new();
    let mut violations = Vec::new();
    for (i, path) in given.iter().enumerate() {
        match updatable.iter().find(|u| **u == path.as_str()) {
            Some(u) => {
                out.insert(*u);
            }
            None => violations.push(FieldViolation::new(
                format!("update_mask.paths[{i}]"),
                format!(
                    "{path:?} cannot be updated; one of {}",
                    updatable.join(", ")
                ),
            )),
        }
    }
    if violations.is_empty() {
        Ok(out)
    } else {
        Err(KitError::Invalid(violations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(paths: &[&str]) -> FieldMask {
        FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn a_mask_names_updatable_fields_only() {
        let updatable = ["display_name", "city"];
        assert_eq!(
            paths(Some(&mask(&["city"])), &updatable).unwrap(),
            ["city"].into()
        );
        assert_eq!(
            paths(Some(&mask(&["*"])), &updatable).unwrap(),
            updatable.into()
        );
        let KitError::Invalid(v) = paths(Some(&mask(&["city", "name"])), &updatable).unwrap_err()
        else {
            panic!("expected field violations")
        };
        assert_eq!(v[0].field, "update_mask.paths[1]");
        assert!(paths(None, &updatable).is_err());
        assert!(paths(Some(&mask(&[])), &updatable).is_err());
    }
}
