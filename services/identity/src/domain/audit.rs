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
    /// When a mesh service asked (identity's internal CheckConsents): the service, and the
    /// partner whose request it was serving. Empty for a partner's own read.
    pub via_service: String,
    pub acting_partner: String,
}

/// A read as the log keeps it: the access and its place in the hash chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRecord {
    pub access: Access,
    /// Hex SHA-256 of the previous record's hash and this record.
    pub chain_hash: String,
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
    // Covered only when present, so records written before services asked keep their hashes.
    if !a.via_service.is_empty() {
        for field in [&a.via_service, &a.acting_partner] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
    }
    lianyu_kit::keycodec::hex(&h.finalize())
}

/// Walks the chain record by record (the log is read in pages), then against the head row.
#[derive(Clone, Debug)]
pub struct ChainCheck {
    previous: String,
    next_seq: i64,
    pub checked: i64,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self {
            previous: GENESIS.to_owned(),
            next_seq: 1,
            checked: 0,
        }
    }
}

impl ChainCheck {
    /// Checks the next record: its sequence follows the last one and its stored hash is the
    /// hash of the previous one and itself. Err carries the sequence of the broken record.
    pub fn next(&mut self, access: &Access, stored: &str) -> Result<(), i64> {
        let expected = chain_hash(&self.previous, access);
        if access.seq != self.next_seq || expected != stored {
            return Err(access.seq);
        }
        self.previous = expected;
        self.next_seq += 1;
        self.checked += 1;
        Ok(())
    }

    /// After the last record: the head must name it, so records cut off the end show too.
    /// Err carries the first sequence missing.
    pub fn finish(&self, head_seq: i64, head_hash: &str) -> Result<(), i64> {
        if head_seq == self.next_seq - 1 && head_hash == self.previous {
            Ok(())
        } else {
            Err(self.next_seq)
        }
    }
}

/// Checks a whole run of records from the start of the log.
pub fn verify(records: &[(Access, String)]) -> Result<ChainCheck, i64> {
    let mut check = ChainCheck::default();
    for (access, stored) in records {
        check.next(access, stored)?;
    }
    Ok(check)
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
            via_service: String::new(),
            acting_partner: String::new(),
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
        let intact = verify(&records).unwrap();
        assert_eq!(intact.checked, 3);
        assert_eq!(intact.finish(3, &prev), Ok(()));
        assert_eq!(
            intact.finish(4, "later"),
            Err(4),
            "records cut off the end show against the head"
        );
        records[1].0.allowed = false;
        assert_eq!(verify(&records).unwrap_err(), 2);
        records[1].0.allowed = true;
        records.remove(1);
        assert_eq!(
            verify(&records).unwrap_err(),
            3,
            "a removed record shows too"
        );
    }
}
