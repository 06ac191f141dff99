//! Opaque page tokens (AIP-158) for keyset pagination: a token carries the last key returned
//! and a fingerprint of the query, so a token from one query is refused by another.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select,
};

use crate::{error::KitError, storage::StorageError};

pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: u64 = 1000;

/// A validated page request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Rows to return; fetch one more to learn whether a next page exists.
    pub size: u64,
    /// Return rows whose key sorts after this one.
    pub after: Option<String>,
    fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct Token {
    k: String,
    q: String,
}

impl Page {
    /// Validates `page_size` (0 means the default; above the maximum is clamped, as AIP-158 asks)
    /// and `page_token` against the query's parameters (`query` lists them, caller's partner first).
    pub fn parse(page_size: i32, page_token: &str, query: &[&str]) -> Result<Self, KitError> {
        let size = match page_size {
            n if n < 0 => return Err(KitError::invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => u64::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
        };
        let fingerprint = fingerprint(query);
        let after = if page_token.is_empty() {
            None
        } else {
            let bad = || KitError::invalid("page_token", "not a page token from this query");
            let bytes = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| bad())?;
            let token: Token = serde_json::from_slice(&bytes).map_err(|_| bad())?;
            if token.q != fingerprint {
                return Err(bad());
            }
            Some(token.k)
        };
        Ok(Self {
            size,
            after,
            fingerprint,
        })
    }

    /// The token for the page after `last_key`, or empty when `has_more` is false.
    pub fn next_token(&self, last_key: Option<&str>, has_more: bool) -> String {
        match (has_more, last_key) {
            (true, Some(k)) => {
                let token = Token {
                    k: k.to_owned(),
                    q: self.fingerprint.clone(),
                };
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
            }
            _ => String::new(),
        }
    }
}

impl Page {
    /// Cuts rows fetched with `size + 1` to the page and makes the next page's token from the
    /// last row kept.
    pub fn finish<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        let more = rows.len() as u64 > self.size;
        rows.truncate(usize::try_from(self.size).unwrap_or(usize::MAX));
        let token = self.next_token(rows.last().map(key).as_deref(), more);
        (rows, token)
    }
}

impl Page {
    /// Runs `query` for this page, scoped to one tenant: only rows whose `tenant.0` column
    /// holds `tenant.1` (the caller's partner), ordered by `key` ascending after the token's
    /// key, one row more than the page so that [`Page::finish`] knows whether another follows.
    /// The scope is not optional: a list a partner pages through holds only its own rows.
    pub async fn fetch<E: EntityTrait>(
        &self,
        conn: &impl ConnectionTrait,
        query: Select<E>,
        tenant: (E::Column, &str),
        key: E::Column,
    ) -> Result<Vec<E::Model>, StorageError> {
        self.fetch_ordered(conn, query, tenant, key, false).await
    }

    /// [`Page::fetch`] newest first: `key` descending, before the token's key (for keys that
    /// grow with time, such as UUIDv7 ids).
    pub async fn fetch_newest<E: EntityTrait>(
        &self,
        conn: &impl ConnectionTrait,
        query: Select<E>,
        tenant: (E::Column, &str),
        key: E::Column,
    ) -> Result<Vec<E::Model>, StorageError> {
        self.fetch_ordered(conn, query, tenant, key, true).await
    }

    async fn fetch_ordered<E: EntityTrait>(
        &self,
        conn: &impl ConnectionTrait,
        query: Select<E>,
        tenant: (E::Column, &str),
        key: E::Column,
        newest_first: bool,
    ) -> Result<Vec<E::Model>, StorageError> {
        let mut query = query.filter(tenant.0.eq(tenant.1)).limit(self.size + 1);
        query = if newest_first {
            query.order_by_desc(key)
        } else {
            query.order_by_asc(key)
        };
        if let Some(after) = &self.after {
            query = query.filter(if newest_first {
                key.lt(after.clone())
            } else {
                key.gt(after.clone())
            });
        }
        Ok(query.all(conn).await?)
    }
}

fn fingerprint(query: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in query {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    URL_SAFE_NO_PAD.encode(&hasher.finalize()[..9])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_and_clamp() {
        assert_eq!(Page::parse(0, "", &["p1"]).unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(Page::parse(5000, "", &["p1"]).unwrap().size, MAX_PAGE_SIZE);
        assert!(Page::parse(-1, "", &["p1"]).is_err());
    }

    #[test]
    fn a_token_resumes_its_own_query_only() {
        let first = Page::parse(10, "", &["p1", "ACTIVE"]).unwrap();
        let token = first.next_token(Some("key-10"), true);
        assert_eq!(
            Page::parse(10, &token, &["p1", "ACTIVE"])
                .unwrap()
                .after
                .as_deref(),
            Some("key-10")
        );
        let other_partner = Page::parse(10, &token, &["p2", "ACTIVE"]).unwrap_err();
        assert!(matches!(other_partner, KitError::Invalid(v) if v[0].field == "page_token"));
        assert!(Page::parse(10, "garbage!", &["p1", "ACTIVE"]).is_err());
        assert_eq!(first.next_token(Some("key-10"), false), "");
    }

    #[test]
    fn finish_keeps_one_page_and_points_past_it() {
        let page = Page::parse(2, "", &["p1"]).unwrap();
        let (rows, token) = page.finish(vec![1, 2, 3], |n| n.to_string());
        assert_eq!(rows, [1, 2]);
        assert_eq!(
            Page::parse(2, &token, &["p1"]).unwrap().after.as_deref(),
            Some("2")
        );
        let (rows, token) = page.finish(vec![1, 2], |n| n.to_string());
        assert_eq!((rows.len(), token.as_str()), (2, ""));
    }
}
