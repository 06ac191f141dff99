//! Resource names (AIP-122): `partners/{partner}/stores/{store}` parsed against its pattern in
//! one place, so every service answers a malformed name the same way — a field violation that
//! states the expected format — and never reads a segment it did not check.

/// Longest accepted id segment.
pub const MAX_SEGMENT: usize = 64;

/// The ids in `name` for each `{…}` of `pattern`, in order. Literal segments must match exactly;
/// each id is 1 to 64 ASCII letters, digits, '-' or '_'. The error is the description of a
/// field violation: "expected partners/{partner}/stores/{store}".
pub fn parse<'a, const N: usize>(name: &'a str, pattern: &str) -> Result<[&'a str; N], String> {
    let expected = || format!("expected {pattern}");
    let mut ids = [""; N];
    let mut found = 0;
    let mut parts = name.split('/');
    for literal in pattern.split('/') {
        let part = parts.next().ok_or_else(expected)?;
        if literal.starts_with('{') && literal.ends_with('}') {
            let ok = !part.is_empty()
                && part.len() <= MAX_SEGMENT
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok || found == N {
                return Err(expected());
            }
            ids[found] = part;
            found += 1;
        } else if part != literal {
            return Err(expected());
        }
    }
    if parts.next().is_some() || found != N {
        return Err(expected());
    }
    Ok(ids)
}

/// `pattern` with its `{…}` segments filled in order: the inverse of [`parse`].
pub fn format(pattern: &str, ids: &[&str]) -> String {
    let mut ids = ids.iter();
    pattern
        .split('/')
        .map(|literal| {
            if literal.starts_with('{') {
                ids.next().copied().unwrap_or_default()
            } else {
                literal
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: &str = "partners/{partner}/stores/{store}";

    #[test]
    fn a_name_gives_its_ids_in_order_and_formats_back() {
        let [partner, store] = parse("partners/brand-a/stores/sh01", STORE).unwrap();
        assert_eq!((partner, store), ("brand-a", "sh01"));
        assert_eq!(
            format(STORE, &[partner, store]),
            "partners/brand-a/stores/sh01"
        );
    }

    #[test]
    fn malformed_names_say_what_is_expected() {
        for bad in [
            "",
            "partners/brand-a",
            "partners/brand-a/stores/",
            "partners/brand-a/shops/sh01",
            "partners/brand-a/stores/sh01/extra",
            "partners/../stores/sh01",
            "partners/brand a/stores/sh01",
        ] {
            assert_eq!(
                parse::<2>(bad, STORE),
                Err("expected partners/{partner}/stores/{store}".into()),
                "{bad:?}"
            );
        }
        let long = format!("partners/{}/stores/x", "a".repeat(MAX_SEGMENT + 1));
        assert!(parse::<2>(&long, STORE).is_err());
    }
}
