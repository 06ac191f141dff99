//! The text form of 32-byte keys in configuration and on the wire: base64url without padding.
//! A leaf module, so configuration can check keys without depending on the token code.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// Decodes a base64url key of exactly 32 bytes; `what` names it in the error.
pub fn decode_key32(key: &str, what: &str) -> Result<[u8; 32], String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(key.trim())
        .map_err(|_| "not base64url".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("{what} is 32 bytes"))
}

/// A raw Ed25519 public key (the JWK "x").
pub fn decode_public_key(key: &str) -> Result<[u8; 32], String> {
    decode_key32(key, "an Ed25519 public key")
}

/// An Ed25519 signing seed (`LIANYU_SIGNING_KEY`).
pub fn decode_seed(seed: &str) -> Result<[u8; 32], String> {
    decode_key32(seed, "an Ed25519 seed")
}

/// An opaque version of a resource as a caller reads it (an AIP-154 etag): the first 12 bytes
/// of the SHA-256 of `message`'s encoding, in hex. Build `message` from exactly what the etag
/// stands for — the terms a caller accepts, say — so that it changes when they do and only
/// then.
pub fn etag(message: &impl prost::Message) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(message.encode_to_vec())[..12])
}

/// Lowercase hexadecimal of `bytes` (digests, fingerprints, ids derived from them).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
