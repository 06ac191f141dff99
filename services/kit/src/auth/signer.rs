//! The Ed25519 key tokens are signed with. The identity service signs with the key in
//! `LIANYU_SIGNING_KEY`; in local mode, `lianyu up` keeps a development key in its data
//! directory so anyone can mint a token for the local mesh. Production never reads or
//! creates that file (see `config::Mode`).

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding},
};
use jsonwebtoken::{EncodingKey, Header};
use sha2::{Digest, Sha256};

use super::Claims;
use crate::config::{AuthConfig, TrustedKey};

const FILE: &str = "dev-signing-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("no dev signing key at {0} (run `lianyu up` first, or pass --data-dir)")]
    NotFound(PathBuf),
    #[error("dev signing key at {path}: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error("signing key: {0}")]
    BadSeed(String),
    #[error("cannot write dev signing key: {0}")]
    Io(#[from] io::Error),
    #[error("cannot sign token: {0}")]
    Sign(String),
    #[error("refused to sign: {0}")]
    Refused(&'static str),
}

/// What a minted token says about its holder.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The partner; for a service token ([`TokenRequest::service`]), the mesh service's name.
    pub partner_id: String,
    pub operator: bool,
    /// A mesh service's token (role `service`): it carries internal scopes only. Partner and
    /// operator tokens never carry one; [`Signer::mint`] refuses to mix them.
    pub service: bool,
    pub store: Option<String>,
    pub scopes: Vec<String>,
    pub ttl: Duration,
    /// The credential a token is issued for (`IssueToken`), so revoking it ends the token.
    pub credential: Option<String>,
}

impl TokenRequest {
    /// A brand's or mall's token request with every scope, valid for an hour: what the local
    /// mesh's demo, benchmarks and tests mint.
    pub fn partner(partner_id: &str) -> Self {
        Self {
            partner_id: partner_id.to_owned(),
            operator: false,
            store: None,
            scopes: crate::auth::ALL_SCOPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ttl: Duration::from_secs(3600),
            credential: None,
            service: false,
        }
    }

    /// A mesh service's token request (`entitlements`, `live`, …): role `service`, the
    /// internal scopes of the contracts it calls ([`crate::auth::service_scopes`]) and nothing
    /// else, valid for `ttl`.
    pub fn service(service: &str, ttl: Duration) -> Self {
        Self {
            partner_id: service.to_owned(),
            operator: false,
            store: None,
            scopes: crate::auth::service_scopes(service)
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ttl,
            credential: None,
            service: true,
        }
    }
}

/// An Ed25519 key that signs tokens: the identity service's, or the local mesh's dev key.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.key_id())
    }
}

impl Signer {
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The key from its 32-byte seed, base64url without padding (what `LIANYU_SIGNING_KEY` holds).
    pub fn from_seed(seed: &str) -> Result<Self, SignerError> {
        let seed = crate::keycodec::decode_seed(seed).map_err(SignerError::BadSeed)?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The seed, base64url: what to put in `LIANYU_SIGNING_KEY`.
    pub fn seed(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.to_bytes())
    }

    /// Loads the key in `dir`, or creates it (readable by the owner only).
    pub fn load_or_create(dir: &Path) -> Result<Self, SignerError> {
        match Self::load(dir) {
            Err(SignerError::NotFound(_)) => {
                fs::create_dir_all(dir)?;
                let key = Self::generate();
                let pem = key
                    .key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| SignerError::Sign(e.to_string()))?;
                // Written whole under a private name, then linked into place: two processes
                // starting at once (`lianyu up` and `lianyu token`, two services of one data
                // directory) never read half a key, and the second keeps the first's key.
                if publish_private(&dir.join(FILE), pem.as_bytes())? {
                    Ok(key)
                } else {
                    Self::load(dir)
                }
            }
            other => other,
        }
    }

    pub fn load(dir: &Path) -> Result<Self, SignerError> {
        let path = dir.join(FILE);
        let pem = match fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SignerError::NotFound(path));
            }
            Err(e) => return Err(e.into()),
        };
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| SignerError::Unreadable {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { key })
    }

    /// The key's id: `ed-` and the first bytes of its public key's SHA-256, so a rotated key
    /// always gets a new id.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.key.verifying_key().as_bytes());
        format!("ed-{}", crate::keycodec::hex(&digest[..6]))
    }

    pub fn trusted_key(&self) -> TrustedKey {
        TrustedKey {
            key_id: self.key_id(),
            public_key: URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
        }
    }

    /// Signs a token for `auth`'s issuer and audience.
    /// Signs a token for `request`. A service token with anything but internal scopes, or a
    /// partner or operator token with an internal scope, is refused: the verifier would refuse
    /// it anyway, and no code path may make one.
    pub fn mint(&self, auth: &AuthConfig, request: &TokenRequest) -> Result<String, SignerError> {
        if let Err(why) = super::role_fits_scopes(
            request.service,
            request.operator,
            request.store.is_some(),
            request.scopes.iter().map(String::as_str),
        ) {
            return Err(SignerError::Refused(why));
        }
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: auth.issuer.clone(),
            aud: auth.audience.clone(),
            sub: request.partner_id.clone(),
            iat: now,
            exp: now + i64::try_from(request.ttl.as_secs()).unwrap_or(i64::MAX / 2),
            jti: uuid::Uuid::new_v4().to_string(),
            store: request.store.clone(),
            scope: request.scopes.join(" "),
            role: if request.service {
                super::SERVICE_ROLE.into()
            } else if request.operator {
                "operator".into()
            } else {
                String::new()
            },
            cid: request.credential.clone(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it for expired or foreign-audience tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, SignerError> {
        let der = self
            .key
            .to_pkcs8_der()
            .map_err(|e| SignerError::Sign(e.to_string()))?;
        let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.key_id());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
            .map_err(|e| SignerError::Sign(e.to_string()))
    }
}

/// Loads the 32-byte secret in `dir/name`, creating it (owner-only) when missing. Local mode only.
pub fn load_or_create_local_secret(dir: &Path, name: &str) -> Result<[u8; 32], SignerError> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = base64::Engine::decode(&URL_SAFE_NO_PAD, text.trim()).map_err(|e| {
                SignerError::Unreadable {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| SignerError::Unreadable {
                path,
                message: "expected 32 bytes".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)?;
            let secret: [u8; 32] = rand::random();
            if publish_private(&path, URL_SAFE_NO_PAD.encode(secret).as_bytes())? {
                Ok(secret)
            } else {
                load_or_create_local_secret(dir, name)
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes `contents` whole under a private name, then links it into place at `path`: two
/// processes starting at once on one data directory never read half a file, and the second
/// keeps the first's. `false` when another process got there first (read its file instead).
fn publish_private(path: &Path, contents: &[u8]) -> io::Result<bool> {
    let staging = path.with_extension(format!("staging-{}", uuid::Uuid::new_v4().simple()));
    write_private(&staging, contents)?;
    let linked = fs::hard_link(&staging, path);
    let _ = fs::remove_file(&staging);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_starting_at_once_on_one_data_directory_share_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| Signer::load_or_create(dir.path()).unwrap().key_id()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let secrets: Vec<[u8; 32]> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| load_or_create_local_secret(dir.path(), "master").unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.iter().all(|s| *s == secrets[0]));
        // Nothing half-made is left behind.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
