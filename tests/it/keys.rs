//! Services verify tokens with the keys identity publishes: a service that trusts no key of
//! its own accepts identity's tokens, follows a signing-key rotation, and drops a retired key.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use lianyu_kit::{
    Config,
    auth::{Signer, TokenRequest},
    config::Secret,
    testing::{TestDatabase, all_rpcs, call_empty, partner_token},
};
use lianyu_proto::{
    common::v1::PartnerKind,
    identity::v1::{
        self as pb, auth_service_client::AuthServiceClient,
        partner_service_client::PartnerServiceClient,
    },
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Request, transport::Channel};

/// Identity alone on `address`, signing with `signer` and still trusting `previous`.
struct IdentityProcess {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl IdentityProcess {
    async fn start(
        config: &Config,
        address: SocketAddr,
        signer: &Signer,
        previous: &[&Signer],
    ) -> Self {
        let mut config = config.clone();
        config.auth.signing_key = Some(Secret::new(signer.seed()));
        config.auth.trusted_keys = previous.iter().map(|k| k.trusted_key()).collect();
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            lianyu_identity::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Identity's configuration and database, an address for it, and a database for entitlements.
struct Scene {
    data: tempfile::TempDir,
    _identity_db: TestDatabase,
    entitlements_db: TestDatabase,
    identity_config: Config,
    address: SocketAddr,
    identity_url: String,
}

impl Scene {
    async fn new(name: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let identity_db = TestDatabase::new(&format!("{name}_identity")).await;
        let entitlements_db = TestDatabase::new(&format!("{name}_entitlements")).await;
        let mut identity_config = Config::local(data.path().join("identity"));
        identity_config.set_database_url("identity", identity_db.url.clone());
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Self {
            data,
            _identity_db: identity_db,
            entitlements_db,
            identity_config,
            address,
            identity_url: format!("http://{address}"),
        }
    }
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A brand-a credential, created with the local dev key's token.
async fn credential(channel: Channel, config: &Config) -> (String, String) {
    let mint =
        |request: TokenRequest| lianyu_kit::testing::mint(&config.data_dir, &config.auth, &request);
    let operator = mint(TokenRequest {
        operator: true,
        ..partner_token("operator")
    });
    PartnerServiceClient::new(channel.clone())
        .create_partner(bearer(
            pb::CreatePartnerRequest {
                request_id: "brand-a".into(),
                partner_id: "brand-a".into(),
                partner: Some(pb::Partner {
                    kind: PartnerKind::Brand as i32,
                    display_name: "Brand A".into(),
                    privacy_contact: "privacy@brand-a.example".into(),
                    ..Default::default()
                }),
            },
            &operator,
        ))
        .await
        .unwrap();
    let created = AuthServiceClient::new(channel)
        .create_credential(bearer(
            pb::CreateCredentialRequest {
                request_id: "cred".into(),
                parent: "partners/brand-a".into(),
                scopes: vec!["entitlements.read".into(), "entitlements.write".into()],
            },
            &mint(partner_token("brand-a")),
        ))
        .await
        .unwrap()
        .into_inner();
    (created.credential.unwrap().client_id, created.client_secret)
}

async fn issue(address: &str, (client_id, secret): &(String, String)) -> String {
    let channel = lianyu_kit::testing::connect(address).await;
    AuthServiceClient::new(channel)
        .issue_token(pb::IssueTokenRequest {
            client_id: client_id.clone(),
            client_secret: secret.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token
}

/// The code an entitlements call with `token` ends with, once it stops changing to `want`
/// (keys are read in the background), or the last code after ten seconds.
async fn settles_to(channel: &Channel, token: &str, want: Code) -> Code {
    let rpc = all_rpcs()
        .into_iter()
        .find(|r| r.path == "/lianyu.entitlements.v1.BenefitService/GetBenefit")
        .unwrap();
    let mut code = Code::Unknown;
    for _ in 0..100 {
        code = call_empty(channel.clone(), &rpc, Some(token)).await.code();
        if code == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    code
}

#[tokio::test]
async fn services_verify_with_identitys_published_keys_through_a_rotation() {
    let Scene {
        data,
        _identity_db,
        entitlements_db,
        identity_config,
        address,
        identity_url,
    } = Scene::new("keys").await;
    let (key_a, key_b) = (Signer::generate(), Signer::generate());
    let identity = IdentityProcess::start(&identity_config, address, &key_a, &[]).await;
    let channel = lianyu_kit::testing::connect(&identity_url).await;
    let client = credential(channel, &identity_config).await;
    let token_a = issue(&identity_url, &client).await;

    // Entitlements in production mode, reading identity's keys every second.
    let entitlements = standalone_entitlements(
        &data.path().join("entitlements"),
        (&entitlements_db.url, &identity_url),
        "1s",
        None,
    )
    .await;

    // Admitted (an empty request is then INVALID_ARGUMENT), where a stranger's token is refused.
    let stranger = Signer::generate()
        .mint(&identity_config.auth, &partner_token("brand-a"))
        .unwrap();
    assert_eq!(
        settles_to(&entitlements, &token_a, Code::InvalidArgument).await,
        Code::InvalidArgument
    );
    // Keys are loaded now (token A passed), so one call is a fair test of the stranger's.
    assert_eq!(
        settles_to(&entitlements, &stranger, Code::Unauthenticated).await,
        Code::Unauthenticated
    );

    // Rotation: identity signs with B and still publishes A until A's tokens expire.
    identity.stop().await;
    let identity = IdentityProcess::start(&identity_config, address, &key_b, &[&key_a]).await;
    let token_b = issue(&identity_url, &client).await;
    assert_ne!(
        jsonwebtoken_kid(&token_a),
        jsonwebtoken_kid(&token_b),
        "a new key has a new id"
    );
    assert_eq!(
        settles_to(&entitlements, &token_b, Code::InvalidArgument).await,
        Code::InvalidArgument
    );
    assert_eq!(
        settles_to(&entitlements, &token_a, Code::InvalidArgument).await,
        Code::InvalidArgument
    );

    // A retired key stops working once identity no longer publishes it.
    identity.stop().await;
    let _identity = IdentityProcess::start(&identity_config, address, &key_b, &[]).await;
    assert_eq!(
        settles_to(&entitlements, &token_a, Code::Unauthenticated).await,
        Code::Unauthenticated
    );
    assert_eq!(
        settles_to(&entitlements, &token_b, Code::InvalidArgument).await,
        Code::InvalidArgument
    );

    // Revoking the credential ends its unexpired tokens here too, at the next key refresh.
    revoke_brand_credential(
        lianyu_kit::testing::connect(&identity_url).await,
        &identity_config,
    )
    .await;
    assert_eq!(
        settles_to(&entitlements, &token_b, Code::Unauthenticated).await,
        Code::Unauthenticated
    );
}

/// The key id in a token's header.
fn jsonwebtoken_kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    value["kid"].as_str().unwrap().to_owned()
}

/// A credential of a mesh service, created by the operator (minted with the local dev key).
async fn service_credential(channel: Channel, config: &Config, service: &str) -> (String, String) {
    let operator = lianyu_kit::testing::mint(
        &config.data_dir,
        &config.auth,
        &TokenRequest {
            operator: true,
            ..partner_token("operator")
        },
    );
    let created = AuthServiceClient::new(channel)
        .create_credential(bearer(
            pb::CreateCredentialRequest {
                request_id: format!("svc-{service}"),
                parent: format!("services/{service}"),
                scopes: vec![],
            },
            &operator,
        ))
        .await
        .unwrap()
        .into_inner();
    (created.credential.unwrap().client_id, created.client_secret)
}

/// Entitlements started alone in production mode, as on Kubernetes: no dev key, no configured
/// key, only identity's published ones, read again every `refresh` or on an unknown key id;
/// with `service`, its own service credential for its calls to identity (its feed among them).
async fn standalone_entitlements(
    data_dir: &std::path::Path,
    (database_url, identity_url): (&str, &str),
    refresh: &str,
    service: Option<(String, String)>,
) -> Channel {
    let mut vars: HashMap<&str, String> = [
        ("LIANYU_MODE", "production".to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("LIANYU_IDENTITY_URL", identity_url.to_owned()),
        ("LIANYU_KEY_REFRESH_INTERVAL", refresh.to_owned()),
        ("LIANYU_DATA_DIR", data_dir.display().to_string()),
    ]
    .into();
    if let Some((id, secret)) = service {
        vars.insert("LIANYU_ENTITLEMENTS_CLIENT_ID", id);
        vars.insert("LIANYU_ENTITLEMENTS_CLIENT_SECRET", secret);
    }
    let config = Config::from_vars(move |name| vars.get(name).cloned()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(lianyu_entitlements::run(
        config,
        listener,
        std::future::pending(),
    ));
    lianyu_kit::testing::connect(&url).await
}

/// Revokes brand-a's (only) credential, as its owner.
async fn revoke_brand_credential(channel: Channel, config: &Config) {
    let owner =
        lianyu_kit::testing::mint(&config.data_dir, &config.auth, &partner_token("brand-a"));
    let credentials = AuthServiceClient::new(channel.clone())
        .list_credentials(bearer(
            pb::ListCredentialsRequest {
                parent: "partners/brand-a".into(),
                ..Default::default()
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner()
        .credentials;
    AuthServiceClient::new(channel)
        .revoke_credential(bearer(
            pb::RevokeCredentialRequest {
                request_id: "revoke".into(),
                name: credentials[0].name.clone(),
            },
            &owner,
        ))
        .await
        .unwrap();
}

/// Polls an entitlements call with `token` every 5 ms until it ends with `want`; how long that
/// took, or `None` after `limit`.
async fn time_until(
    channel: &Channel,
    token: &str,
    want: Code,
    limit: Duration,
) -> Option<Duration> {
    let rpc = all_rpcs()
        .into_iter()
        .find(|r| r.path == "/lianyu.entitlements.v1.BenefitService/GetBenefit")
        .unwrap();
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if call_empty(channel.clone(), &rpc, Some(token)).await.code() == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test]
async fn a_revocation_reaches_a_standalone_service_through_the_mesh_feed_not_the_key_refresh() {
    let Scene {
        data,
        _identity_db,
        entitlements_db,
        identity_config,
        address,
        identity_url,
    } = Scene::new("feed_revoke").await;
    let _identity =
        IdentityProcess::start(&identity_config, address, &Signer::generate(), &[]).await;
    let channel = lianyu_kit::testing::connect(&identity_url).await;
    let client = credential(channel.clone(), &identity_config).await;
    let token = issue(&identity_url, &client).await;
    let (service_id, service_secret) =
        service_credential(channel.clone(), &identity_config, "entitlements").await;

    // Entitlements standalone, as on Kubernetes: its own service credential, and a key refresh
    // an hour away, so only identity's mesh feed can tell it of the revocation in time.
    let entitlements = standalone_entitlements(
        &data.path().join("entitlements"),
        (&entitlements_db.url, &identity_url),
        "1h",
        Some((service_id, service_secret)),
    )
    .await;
    assert_eq!(
        settles_to(&entitlements, &token, Code::InvalidArgument).await,
        Code::InvalidArgument,
        "admitted with identity's keys"
    );

    revoke_brand_credential(channel, &identity_config).await;
    // The bound is the feature (README: "within a second"); the fallback paths take an hour
    // (the key refresh) or five seconds (a re-read after an unknown key id during start-up).
    let took = time_until(
        &entitlements,
        &token,
        Code::Unauthenticated,
        Duration::from_secs(2),
    )
    .await
    .expect("the revocation reached entitlements through the mesh feed, not a key refresh");
    eprintln!("revocation reached standalone entitlements in {took:?}");
}

#[tokio::test]
async fn a_standalone_service_whose_token_identity_stops_trusting_renews_it_and_its_feed_goes_on() {
    let Scene {
        data,
        _identity_db,
        entitlements_db,
        identity_config,
        address,
        identity_url,
    } = Scene::new("retired_key").await;
    let (key_a, key_b) = (Signer::generate(), Signer::generate());
    let identity = IdentityProcess::start(&identity_config, address, &key_a, &[]).await;
    let channel = lianyu_kit::testing::connect(&identity_url).await;
    let client = credential(channel.clone(), &identity_config).await;
    let (service_id, service_secret) =
        service_credential(channel, &identity_config, "entitlements").await;

    // Entitlements standalone with its own credential; its key refresh an hour away.
    let entitlements = standalone_entitlements(
        &data.path().join("entitlements"),
        (&entitlements_db.url, &identity_url),
        "1h",
        Some((service_id, service_secret)),
    )
    .await;
    let token_a = issue(&identity_url, &client).await;
    assert_eq!(
        settles_to(&entitlements, &token_a, Code::InvalidArgument).await,
        Code::InvalidArgument,
        "admitted with identity's key A"
    );

    // Emergency removal: identity comes back signing with B and trusting nothing else. The
    // service token entitlements holds for its calls to identity (its feed among them) was
    // signed with A and has most of its life left, but identity now refuses it.
    identity.stop().await;
    let _identity = IdentityProcess::start(&identity_config, address, &key_b, &[]).await;
    let token_b = issue(&identity_url, &client).await;
    assert_eq!(
        settles_to(&entitlements, &token_b, Code::InvalidArgument).await,
        Code::InvalidArgument,
        "entitlements learns key B"
    );

    // A revocation reaches entitlements only through identity's feed (the key refresh is an
    // hour away): the feed must have reopened with a token signed by B.
    revoke_brand_credential(
        lianyu_kit::testing::connect(&identity_url).await,
        &identity_config,
    )
    .await;
    // Without renewal the feed would stay refused until the cached token's own renewal, minutes
    // away; ten seconds leaves a loaded machine the feed's reconnection back-off.
    let took = time_until(
        &entitlements,
        &token_b,
        Code::Unauthenticated,
        Duration::from_secs(10),
    )
    .await
    .expect("the feed reopened with a renewed token and carried the revocation");
    eprintln!("revocation reached entitlements in {took:?}, its token's key no longer trusted");
}
