//! An identity server with three partners (brand-a, mall-b, brand-c) and an active alliance
//! between brand-a and mall-b that allows SHARE_PROFILE and MARKETING_CONTACT.

use std::time::Duration;

use lianyu_kit::{Config, auth::TokenRequest, testing::TestDatabase};
use lianyu_proto::{
    common::v1::{ConsentPurpose, PartnerKind},
    identity::v1::{
        self as pb, audit_service_client::AuditServiceClient,
        auth_service_client::AuthServiceClient, consent_service_client::ConsentServiceClient,
        member_service_client::MemberServiceClient, partner_service_client::PartnerServiceClient,
    },
};
use tonic::{Status, codegen::InterceptedService, transport::Channel};

pub(crate) type Auth = InterceptedService<Channel, Bearer>;

pub(crate) struct Identity {
    pub(crate) config: Config,
    pub(crate) db_url: String,
    pub(crate) channel: Channel,
    address: String,
    _data: Option<tempfile::TempDir>,
    _db: Option<TestDatabase>,
}

pub(crate) use lianyu_kit::client::Bearer;

/// Clients of every identity service for one partner.
#[derive(Clone)]
pub(crate) struct As {
    pub(crate) partners: PartnerServiceClient<Auth>,
    pub(crate) members: MemberServiceClient<Auth>,
    pub(crate) consents: ConsentServiceClient<Auth>,
    pub(crate) audit: AuditServiceClient<Auth>,
    pub(crate) auth: AuthServiceClient<Auth>,
}

impl As {
    /// The caller's consent feed from its beginning.
    pub(crate) async fn feed(&mut self) -> tonic::Streaming<pb::WatchConsentEventsResponse> {
        self.consents
            .watch_consent_events(pb::WatchConsentEventsRequest { after: None })
            .await
            .unwrap()
            .into_inner()
    }

    /// Enrols and returns the caller's scoped member name.
    pub(crate) async fn enrolled(&mut self, request: pb::EnrollMemberRequest) -> String {
        self.members
            .enroll_member(request)
            .await
            .unwrap()
            .into_inner()
            .member
            .unwrap()
            .name
    }
}

/// Server logs (internal errors' causes among them) show with a failing test's output.
pub(crate) fn show_server_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn,lianyu=info")
        .try_init();
}

impl Identity {
    /// Starts the server with `configure` applied to its config (limits, say).
    pub(crate) async fn start_with(test: &str, configure: impl FnOnce(&mut Config)) -> Self {
        show_server_logs();
        let data = tempfile::tempdir().unwrap();
        let db = TestDatabase::new(test).await;
        let mut config = Config::local(data.path());
        config.set_database_url("identity", db.url.clone());
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(lianyu_identity::run(
            config.clone(),
            listener,
            std::future::pending(),
        ));
        let channel = lianyu_kit::testing::connect(&address).await;
        Self {
            config,
            channel,
            address,
            db_url: db.url.clone(),
            _data: Some(data),
            _db: Some(db),
        }
    }

    /// A second server on the same database and keys, as another replica behind the same
    /// Service would be.
    pub(crate) async fn replica(&self) -> Identity {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(lianyu_identity::run(
            self.config.clone(),
            listener,
            std::future::pending(),
        ));
        let channel = lianyu_kit::testing::connect(&address).await;
        Identity {
            config: self.config.clone(),
            channel,
            address,
            db_url: self.db_url.clone(),
            // The first server owns the files; a replica lives within its test.
            _data: None,
            _db: None,
        }
    }

    /// One person enrolled at brand-a and at mall-b by the same verified phone, which links
    /// them: the brand's and the mall's scoped names.
    pub(crate) async fn shared_member(&self, number: &str) -> (String, String) {
        let id = || enroll("e", vec![phone(number, true)], &[]);
        (
            self.as_partner("brand-a").enrolled(id()).await,
            self.as_partner("mall-b").enrolled(id()).await,
        )
    }

    /// Starts the server and sets up the three partners and the alliance.
    pub(crate) async fn with_partners(test: &str) -> Self {
        Self::with_partners_and(test, |_| {}).await
    }

    /// [`Self::with_partners`] with `configure` applied to the server's config.
    pub(crate) async fn with_partners_and(test: &str, configure: impl FnOnce(&mut Config)) -> Self {
        let identity = Self::start_with(test, configure).await;
        let mut operator = identity.operator();
        for (id, kind, name) in [
            ("brand-a", PartnerKind::Brand, "Brand A Shoes"),
            ("mall-b", PartnerKind::Mall, "Mall B"),
            ("brand-c", PartnerKind::Brand, "Brand C"),
        ] {
            operator
                .partners
                .create_partner(pb::CreatePartnerRequest {
                    request_id: format!("create-{id}"),
                    partner_id: id.into(),
                    partner: Some(pb::Partner {
                        kind: kind as i32,
                        display_name: name.into(),
                        privacy_contact: format!("privacy@{id}.example"),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
        }
        let alliance = identity
            .as_partner("brand-a")
            .partners
            .create_alliance(pb::CreateAllianceRequest {
                request_id: "alliance-1".into(),
                alliance: Some(alliance(&["brand-a", "mall-b"])),
            })
            .await
            .unwrap()
            .into_inner();
        identity
            .as_partner("mall-b")
            .partners
            .accept_alliance(pb::AcceptAllianceRequest {
                request_id: "accept-1".into(),
                name: alliance.name,
                ..Default::default()
            })
            .await
            .unwrap();
        identity
    }

    fn clients(&self, request: TokenRequest) -> As {
        let token = lianyu_kit::testing::mint(&self.config.data_dir, &self.config.auth, &request);
        self.with_token(&token)
    }

    /// Clients that send `token` (one from `IssueToken`, say).
    pub(crate) fn with_token(&self, token: &str) -> As {
        let ch = || InterceptedService::new(self.channel.clone(), Bearer::new(token));
        As {
            partners: PartnerServiceClient::new(ch()),
            members: MemberServiceClient::new(ch()),
            consents: ConsentServiceClient::new(ch()),
            audit: AuditServiceClient::new(ch()),
            auth: AuthServiceClient::new(ch()),
        }
    }

    /// The token exchange, called without a token as a partner's backend does.
    pub(crate) fn public_auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel.clone())
    }

    /// Clients whose token carries only `scopes`.
    pub(crate) fn with_scopes(&self, partner: &str, scopes: &[&str]) -> As {
        self.clients(TokenRequest {
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..lianyu_kit::testing::partner_token(partner)
        })
    }

    /// Clients whose token is narrowed to one of `partner`'s stores.
    pub(crate) fn as_store(&self, partner: &str, store: &str) -> As {
        self.clients(TokenRequest {
            store: Some(format!("partners/{partner}/stores/{store}")),
            ..lianyu_kit::testing::partner_token(partner)
        })
    }

    /// A second alliance, between `a` and `b`, accepting only `methods` (empty: any) as proof
    /// that their members are one person; returns its name.
    pub(crate) async fn ally(
        &self,
        a: &str,
        b: &str,
        methods: &[pb::VerificationMethod],
    ) -> String {
        let created = self
            .as_partner(a)
            .partners
            .create_alliance(pb::CreateAllianceRequest {
                request_id: format!("ally-{a}-{b}"),
                alliance: Some(pb::Alliance {
                    accepted_verification_methods: methods.iter().map(|m| *m as i32).collect(),
                    ..alliance(&[a, b])
                }),
            })
            .await
            .unwrap()
            .into_inner();
        self.as_partner(b)
            .partners
            .accept_alliance(pb::AcceptAllianceRequest {
                request_id: format!("accept-{a}-{b}"),
                name: created.name.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        created.name
    }

    /// Where the server listens (`http://127.0.0.1:port`).
    pub(crate) fn address(&self) -> String {
        self.address.clone()
    }

    /// A direct connection to the service's database, to check data where it lives.
    pub(crate) async fn database(&self) -> sea_orm::DatabaseConnection {
        lianyu_kit::storage::connect(&self.db_url, "identity", None)
            .await
            .unwrap()
    }

    pub(crate) fn as_partner(&self, partner: &str) -> As {
        self.clients(lianyu_kit::testing::partner_token(partner))
    }

    /// Identity's internal contract, called with `token` (a service's, or an intruder's).
    pub(crate) fn directory(
        &self,
        token: &str,
    ) -> lianyu_proto::identity::internal::v1::directory_service_client::DirectoryServiceClient<Auth>
    {
        lianyu_proto::identity::internal::v1::directory_service_client::DirectoryServiceClient::new(
            InterceptedService::new(self.channel.clone(), Bearer::new(token)),
        )
    }

    /// A mesh service's token, as `lianyu up` mints it for its in-process services.
    pub(crate) fn service_token(&self, service: &str) -> String {
        lianyu_kit::testing::mint(
            &self.config.data_dir,
            &self.config.auth,
            &TokenRequest::service(service, Duration::from_secs(600)),
        )
    }

    /// A token of `partner` with every scope (the operator's for "operator").
    pub(crate) fn partner_token(&self, partner: &str) -> String {
        let request = if partner == "operator" {
            TokenRequest {
                operator: true,
                ..lianyu_kit::testing::partner_token("operator")
            }
        } else {
            lianyu_kit::testing::partner_token(partner)
        };
        lianyu_kit::testing::mint(&self.config.data_dir, &self.config.auth, &request)
    }

    pub(crate) fn operator(&self) -> As {
        self.clients(TokenRequest {
            operator: true,
            ..lianyu_kit::testing::partner_token("operator")
        })
    }
}

pub(crate) fn alliance(partners: &[&str]) -> pb::Alliance {
    let until = std::time::SystemTime::now() + Duration::from_secs(30 * 24 * 3600);
    let seconds = until
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    pb::Alliance {
        display_name: "Spring joint festival".into(),
        partners: partners.iter().map(|p| format!("partners/{p}")).collect(),
        allowed_purposes: vec![
            ConsentPurpose::ShareProfile as i32,
            ConsentPurpose::MarketingContact as i32,
        ],
        data_categories: vec!["profile.basic".into(), "membership.tier".into()],
        processing_method: "shown to the mall's shopping guides for joint service".into(),
        valid_until: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        ..Default::default()
    }
}

/// A phone, verified by SMS code when `verified`.
pub(crate) fn phone(value: &str, verified: bool) -> pb::Identifier {
    pb::Identifier {
        kind: pb::IdentifierKind::Phone as i32,
        value: value.into(),
        namespace: String::new(),
        verified,
        verification_method: if verified {
            pb::VerificationMethod::SmsCode as i32
        } else {
            0
        },
    }
}

/// A phone verified by `method`.
pub(crate) fn phone_by(value: &str, method: pb::VerificationMethod) -> pb::Identifier {
    pb::Identifier {
        verification_method: method as i32,
        ..phone(value, true)
    }
}

/// One number from the database (`SELECT COUNT(*) …`).
pub(crate) async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

pub(crate) fn unionid(value: &str, account: &str) -> pb::Identifier {
    pb::Identifier {
        kind: pb::IdentifierKind::WechatUnionid as i32,
        value: value.into(),
        namespace: account.into(),
        verified: true,
        verification_method: 0,
    }
}

pub(crate) fn enroll(
    request_id: &str,
    identifiers: Vec<pb::Identifier>,
    profile: &[(&str, &str)],
) -> pb::EnrollMemberRequest {
    pb::EnrollMemberRequest {
        request_id: request_id.into(),
        identifiers,
        profile: profile
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

pub(crate) fn grant(
    member: &str,
    grantee: &str,
    purposes: &[ConsentPurpose],
) -> pb::GrantConsentRequest {
    pb::GrantConsentRequest {
        request_id: format!("grant-{member}-{grantee}"),
        member: member.into(),
        grantee: format!("partners/{grantee}"),
        purposes: purposes.iter().map(|p| *p as i32).collect(),
        channel: pb::ConsentChannel::MiniProgram as i32,
        policy_version: "2026-10".into(),
        valid_until: None,
    }
}

/// `partner`'s UpdateStore that closes (`active` false) or reopens its store `id`.
pub(crate) fn store_active(
    partner: &str,
    id: &str,
    active: bool,
    request_id: &str,
) -> pb::UpdateStoreRequest {
    pb::UpdateStoreRequest {
        request_id: request_id.into(),
        store: Some(pb::Store {
            name: format!("partners/{partner}/stores/{id}"),
            active,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["active".into()],
        }),
    }
}

/// The operator's UpdatePartner that suspends or reinstates `partner`.
pub(crate) fn partner_status(
    partner: &str,
    status: pb::PartnerStatus,
    request_id: &str,
) -> pb::UpdatePartnerRequest {
    pb::UpdatePartnerRequest {
        request_id: request_id.into(),
        partner: Some(pb::Partner {
            name: format!("partners/{partner}"),
            status: status as i32,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["status".into()],
        }),
    }
}

/// The `ErrorInfo` reason and the first field violation of a status.
pub(crate) fn details(status: &Status) -> (String, Option<String>) {
    (
        lianyu_kit::testing::reason(status),
        lianyu_kit::testing::first_violation(status),
    )
}
