//! Services verify tokens by themselves, with the public keys the identity service publishes
//! through `AuthService/GetSigningKeys`. This task keeps them current: it reads them at start,
//! again every `LIANYU_KEY_REFRESH_INTERVAL`, and at once (at most every few seconds) when a
//! token names a key id it does not know yet, which is what a signing-key rotation looks like
//! from here. The same answer lists revoked credentials and suspended partners, whose unexpired tokens
//! are refused.

use std::{sync::Arc, time::Duration};

use lianyu_proto::identity::v1::{GetSigningKeysRequest, auth_service_client::AuthServiceClient};
use tokio_util::sync::CancellationToken;

use super::{TokenVerifier, decode_public_key};
use crate::config::TrustedKey;

/// The shortest gap between two reads, so a stream of forged key ids cannot hammer identity.
const MIN_GAP: Duration = Duration::from_secs(5);

/// Keeps `verifier` trusting `static_keys` plus the keys identity at `identity_url` publishes,
/// until `stopping` is cancelled. A failed read keeps the keys already trusted.
pub async fn refresh_keys(
    verifier: Arc<TokenVerifier>,
    static_keys: Vec<TrustedKey>,
    identity_url: String,
    interval: Duration,
    stopping: CancellationToken,
) {
    let channel = match crate::client::peer(&identity_url, Duration::from_secs(5)) {
        Ok(channel) => channel,
        Err(e) => {
            tracing::error!(error = %e, "cannot fetch signing keys");
            return;
        }
    };
    let mut client = AuthServiceClient::new(channel);
    let mut retry = Duration::from_millis(250);
    loop {
        // Single revocations and suspensions applied while the lists are read are newer than
        // the lists: those lists are then skipped, and the next read brings everything.
        let seen = verifier.changes();
        let wait = match fetch(&mut client).await {
            Ok((fetched, revoked, suspended)) => {
                verifier.replace_lists_as_of(seen, revoked, suspended);
                let mut keys = static_keys.clone();
                keys.extend(fetched);
                match verifier.replace_keys(&keys) {
                    Ok(()) => {
                        tracing::debug!(keys = keys.len(), "signing keys refreshed");
                        retry = Duration::from_millis(250);
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "identity published an unusable key");
                        Some(interval)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "cannot read identity's signing keys");
                let wait = retry;
                retry = (retry * 2).min(Duration::from_secs(30)).min(interval);
                Some(wait)
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                () = tokio::time::sleep(wait) => continue,
                () = stopping.cancelled() => return,
            }
        }
        // At most one read per gap; an unknown key id seen meanwhile is remembered by the
        // `Notify` permit and answered as soon as the gap ends.
        let gap = MIN_GAP.min(interval);
        tokio::select! {
            () = tokio::time::sleep(gap) => {}
            () = stopping.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(interval.saturating_sub(gap)) => {}
            () = verifier.unknown_key_seen() => {}
            () = stopping.cancelled() => return,
        }
    }
}

/// The published keys, the credentials whose tokens are refused, and the suspended partners.
async fn fetch(
    client: &mut AuthServiceClient<crate::client::PeerChannel>,
) -> Result<(Vec<TrustedKey>, Vec<String>, Vec<String>), tonic::Status> {
    let published = client
        .get_signing_keys(GetSigningKeysRequest {})
        .await?
        .into_inner();
    let keys = published
        .keys
        .into_iter()
        .filter(|k| k.algorithm == "EdDSA" && decode_public_key(&k.public_key).is_ok())
        .map(|k| TrustedKey {
            key_id: k.key_id,
            public_key: k.public_key,
        })
        .collect();
    Ok((
        keys,
        published.revoked_credentials,
        published.suspended_partners,
    ))
}
