//! Which operations `ListOperations` lists: AIP-160's filter, the few terms operations need.

use lianyu_kit::{KitError, names};

/// What a `ListOperations` filter keeps; `None` keeps any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperationFilter {
    /// Only finished operations (`done = true`) or only running ones (`done = false`).
    pub done: Option<bool>,
    /// Only those computing this segment, "campaigns/{campaign}/segments/{segment}".
    pub segment: Option<String>,
}

/// The terms a filter may name.
const TERMS: &str =
    "done (true or false) and segment (\"campaigns/{campaign}/segments/{segment}\")";

impl OperationFilter {
    /// Parses `filter`: empty, or terms `field = value` joined by `AND` — `done = true`,
    /// `done = false`, `segment = "campaigns/c/segments/s"` (the quotes are optional). Anything
    /// else is INVALID_ARGUMENT on `filter`, saying what is allowed.
    pub fn parse(filter: &str) -> Result<Self, KitError> {
        let bad = |why: String| KitError::invalid("filter", why);
        let mut out = Self::default();
        if filter.trim().is_empty() {
            return Ok(out);
        }
        for term in filter.split(" AND ") {
            let Some((field, value)) = term.split_once('=') else {
                return Err(bad(format!(
                    "`{}` is not `field = value`; filterable: {TERMS}",
                    term.trim()
                )));
            };
            let (field, value) = (field.trim(), value.trim());
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            match field {
                "done" if out.done.is_none() => {
                    out.done = Some(match value {
                        "true" => true,
                        "false" => false,
                        other => return Err(bad(format!("done is true or false, not `{other}`"))),
                    });
                }
                "segment" if out.segment.is_none() => {
                    names::parse::<2>(value, "campaigns/{campaign}/segments/{segment}")
                        .map_err(|e| bad(format!("segment: {e}")))?;
                    out.segment = Some(value.to_owned());
                }
                "done" | "segment" => return Err(bad(format!("{field} is named twice"))),
                other => {
                    return Err(bad(format!(
                        "`{other}` cannot be filtered on; filterable: {TERMS}"
                    )));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::OperationFilter;

    fn why(filter: &str) -> String {
        let e = OperationFilter::parse(filter).unwrap_err();
        let v = lianyu_kit::ServiceError::field_violations(&e);
        assert_eq!(v.len(), 1, "{filter}");
        assert_eq!(v[0].field, "filter");
        v[0].description.clone()
    }

    #[test]
    fn a_filter_keeps_finished_or_running_operations_of_one_segment() {
        assert_eq!(
            OperationFilter::parse("").unwrap(),
            OperationFilter::default()
        );
        assert_eq!(
            OperationFilter::parse("done = false").unwrap(),
            OperationFilter {
                done: Some(false),
                segment: None
            }
        );
        let both = OperationFilter {
            done: Some(true),
            segment: Some("campaigns/c1/segments/s1".into()),
        };
        for f in [
            "done=true AND segment=campaigns/c1/segments/s1",
            "segment = \"campaigns/c1/segments/s1\" AND done = true",
        ] {
            assert_eq!(OperationFilter::parse(f).unwrap(), both, "{f}");
        }
    }

    #[test]
    fn a_filter_it_cannot_apply_is_refused_with_what_it_can() {
        assert!(why("state = done").contains("filterable: done"));
        assert!(why("done").contains("not `field = value`"));
        assert!(why("done = yes").contains("true or false"));
        assert!(why("done = true AND done = false").contains("named twice"));
        assert!(why("segment = segments/s1").starts_with("segment:"));
        assert!(why("done = true OR done = false").contains("true or false"));
    }
}
