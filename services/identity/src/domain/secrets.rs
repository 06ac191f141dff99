//! The identity service's secrets, derived from one master key that lives in configuration,
//! never in the database: keyed hashes to look identifiers up, sealing to show them again,
//! and partner-scoped member ids.

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit},
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::identifier::Identifier;

type HmacSha256 = Hmac<Sha256>;

pub struct Secrets {
    lookup: [u8; 32],
    credential: [u8; 32],
    scope: [u8; 32],
    seal: XChaCha20Poly1305,
}

impl Secrets {
    pub fn from_master(master: &[u8; 32]) -> Self {
        let lookup = derive(master, b"lianyu identity lookup v1");
        let scope = derive(master, b"lianyu identity scoped-id v1");
        let seal = derive(master, b"lianyu identity seal v1");
        Self {
            lookup,
            credential: derive(master, b"lianyu identity credential v1"),
            scope,
            seal: XChaCha20Poly1305::new(&seal.into()),
        }
    }

    /// The keyed hash an identifier is found by: equal identifiers, equal hashes; without the
    /// key, a leaked table does not reveal phone numbers by brute force over the number space.
    pub fn lookup_hash(&self, id: &Identifier) -> String {
        hex(&mac(
            &self.lookup,
            &[
                id.kind.as_str().as_bytes(),
                id.namespace.as_bytes(),
                id.value.as_bytes(),
            ],
        ))
    }

    /// The keyed hash a client secret is stored as.
    pub fn credential_hash(&self, secret: &str) -> String {
        hex(&mac(&self.credential, &[secret.as_bytes()]))
    }

    /// Whether `secret` hashes to `stored`, compared in constant time.
    pub fn credential_matches(&self, secret: &str, stored: &str) -> bool {
        let Some(expected) = unhex(stored) else {
            return false;
        };
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.credential)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(&(secret.len() as u64).to_be_bytes());
        m.update(secret.as_bytes());
        m.verify_slice(&expected).is_ok()
    }

    /// The stable pseudonymous id of `member_id` for `partner`, unique to the pair.
    pub fn scoped_id(&self, partner: &str, member_id: &str) -> String {
        let digest = mac(&self.scope, &[partner.as_bytes(), member_id.as_bytes()]);
        format!("m{}", &hex(&digest)[..30])
    }

    /// Encrypts a value for storage: a random nonce, then the ciphertext.
    pub fn seal(&self, plaintext: &str) -> Vec<u8> {
        self.seal_bytes(plaintext.as_bytes())
    }

    pub fn open(&self, sealed: &[u8]) -> Option<String> {
        String::from_utf8(self.open_bytes(sealed)?).ok()
    }

    fn seal_bytes(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        out.extend(
            self.seal
                .encrypt(&XNonce::from(nonce), plaintext)
                .unwrap_or_default(),
        );
        out
    }

    fn open_bytes(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(24);
        let nonce = XNonce::from(<[u8; 24]>::try_from(nonce).ok()?);
        self.seal.decrypt(&nonce, ciphertext).ok()
    }
}

/// Stored responses of identity's mutations echo identifiers: they are sealed, and requests are
/// digested with a key, like everything else identity keeps.
impl lianyu_kit::idempotency::AtRest for Secrets {
    fn digest(&self, request: &[u8]) -> Vec<u8> {
        mac(&self.lookup, &[b"request", request]).to_vec()
    }

    fn seal(&self, response: &[u8]) -> Vec<u8> {
        self.seal_bytes(response)
    }

    fn open(&self, stored: &[u8]) -> Option<Vec<u8>> {
        self.open_bytes(stored)
    }
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    mac(master, &[label])
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for part in parts {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

use lianyu_kit::keycodec::hex;

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::identifier::Kind;

    #[test]
    fn scoped_ids_differ_per_partner_and_are_stable() {
        let s = Secrets::from_master(&[7; 32]);
        assert_eq!(s.scoped_id("brand", "m1"), s.scoped_id("brand", "m1"));
        assert_ne!(s.scoped_id("brand", "m1"), s.scoped_id("mall", "m1"));
        assert_ne!(
            Secrets::from_master(&[8; 32]).scoped_id("brand", "m1"),
            s.scoped_id("brand", "m1")
        );
    }

    #[test]
    fn sealing_round_trips_and_rejects_tampering() {
        let s = Secrets::from_master(&[7; 32]);
        let mut sealed = s.seal("+8613800138000");
        assert_eq!(s.open(&sealed).as_deref(), Some("+8613800138000"));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(s.open(&sealed), None);
    }

    #[test]
    fn lookup_hashes_depend_on_namespace() {
        let s = Secrets::from_master(&[7; 32]);
        let a = Identifier::parse(
            Kind::WechatUnionId,
            "o6_bmasdasdsad6_2sgVt7hMZOPfL",
            "open-a",
            true,
            "b",
        )
        .unwrap();
        let b = Identifier::parse(
            Kind::WechatUnionId,
            "o6_bmasdasdsad6_2sgVt7hMZOPfL",
            "open-b",
            true,
            "b",
        )
        .unwrap();
        assert_ne!(s.lookup_hash(&a), s.lookup_hash(&b));
    }
}
