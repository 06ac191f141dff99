//! The access log's hash chain: each record's hash covers the previous hash and the record,
//! so changing or removing any record breaks every hash after it.

use sha2::{Digest, Sha256};

/// One cross-partner read of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub seq: i64,
    pub accessor: String,
    /// The partner whose data was read.
    pub source: String,
    pub member_id: String,
    pub purpose: i32,
    pub receipt_id: String,
    pub allowed: bool,
    pub at_millis: i64,
}

/// The hash of the first record's predecessor.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Hex SHA-256 over the previous hash and the record's fields, length-prefixed so no two
/// different records serialise alike.
pub fn chain_hash(previous: &str, a: &Access) -> String {
    let mut h = Sha256::new();
    for field in [
        previous,
        &a.seq.to_string(),
        &a.accessor,
        &a.source,
        &a.member_id,
        &a.purpose.to_string(),
        &a.receipt_id,
        if a.allowed { "1" } else { "0" },
        &a.at_millis.to_string(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a run of records with their stored hashes, starting after `previous`; returns the
/// sequence of the first record whose hash does not match.
pub fn verify(previous: &str, records: &[(Access, String)]) -> Result<(), i64> {
    let mut prev = previous.to_owned();
    for (access, stored) in records {
        let expected = chain_hash(&prev, access);
        if &expected != stored {
            return Err(access.seq);
        }
        prev = expected;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(seq: i64, allowed: bool) -> Access {
        Access {
            seq,
            accessor: "mall".into(),
            source: "brand".into(),
            member_id: "m1".into(),
            purpose: 1,
            receipt_id: "r1".into(),
            allowed,
            at_millis: 1_000 + seq,
        }
    }

    #[test]
    fn tampering_breaks_the_chain_at_the_changed_record() {
        let mut prev = GENESIS.to_owned();
        let mut records = Vec::new();
        for seq in 1..=3 {
            let a = access(seq, true);
            prev = chain_hash(&prev, &a);
            records.push((a, prev.clone()));
        }
        assert_eq!(verify(GENESIS, &records), Ok(()));
        records[1].0.allowed = false;
        assert_eq!(verify(GENESIS, &records), Err(2));
        records[1].0.allowed = true;
        records.remove(1);
        assert_eq!(
            verify(GENESIS, &records),
            Err(3),
            "a removed record shows too"
        );
    }
}
