//! Prepares a mesh for the scenarios: two partners in an active alliance, members enrolled at
//! both by a verified phone, and consent for every other member, so checks meet both answers.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use futures::{StreamExt, stream};
use lianyu_kit::{
    auth::{Signer, TokenRequest},
    config::AuthConfig,
    telemetry::TracePropagation,
};
use lianyu_proto::{
    common::v1::{ConsentPurpose, PartnerKind},
    identity::v1 as pb,
};
use tonic::{
    Code,
    codegen::InterceptedService,
    transport::{Channel, Endpoint},
};

/// A channel that sends a bearer token (and the trace context, as every mesh client does).
pub(super) type Authed = InterceptedService<InterceptedService<Channel, TracePropagation>, Bearer>;

pub(super) use crate::bearer::Bearer;

/// A prepared mesh.
#[derive(Clone)]
pub struct Target {
    endpoint: Endpoint,
    brand: Bearer,
    mall: Bearer,
    operator: Bearer,
    pub(super) mall_members: Arc<Vec<String>>,
    pub(super) run_id: u32,
    /// The mall's own coupon the grant and redeem scenarios hand out.
    pub(super) benefit: Option<String>,
}

pub(super) const BRAND: &str = "bench-brand";
pub(super) const MALL: &str = "bench-mall";
/// The mall's store where the redeem scenario's tills sell.
pub(super) const STORE: &str = "bench";

impl Target {
    /// Connects to `address`, minting tokens with the dev key in `data_dir`, and prepares
    /// `members` members (enrolled at both partners; consent for every other one).
    pub async fn prepare(
        address: &str,
        data_dir: &Path,
        auth: &AuthConfig,
        members: usize,
    ) -> anyhow::Result<Self> {
        let key =
            Signer::load(data_dir).context("bench mints its tokens with the mesh's dev key")?;
        let mint = |request: TokenRequest| -> anyhow::Result<Bearer> {
            Ok(Bearer::new(&key.mint(auth, &request)?))
        };
        let operator = mint(TokenRequest {
            operator: true,
            ..TokenRequest::partner("operator")
        })?;
        let endpoint = Endpoint::from_shared(address.to_owned())?
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30));
        let run_id: u32 = rand::random::<u32>() % 100;
        let target = Self {
            endpoint,
            brand: mint(TokenRequest::partner(BRAND))?,
            mall: mint(TokenRequest::partner(MALL))?,
            operator: operator.clone(),
            mall_members: Arc::default(),
            run_id,
            benefit: None,
        };
        let channel = target
            .endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach {address}"))?;

        let mut partners = pb::partner_service_client::PartnerServiceClient::new(authed(
            channel.clone(),
            &operator,
        ));
        for (id, kind) in [(BRAND, PartnerKind::Brand), (MALL, PartnerKind::Mall)] {
            let request = pb::CreatePartnerRequest {
                request_id: format!("bench-partner-{id}"),
                partner_id: id.into(),
                partner: Some(pb::Partner {
                    kind: kind as i32,
                    display_name: id.into(),
                    privacy_contact: "bench@example.com".into(),
                    ..Default::default()
                }),
            };
            match partners.create_partner(request).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => {}
                Err(s) => return Err(s).context("creating bench partners"),
            }
        }
        // The mall's counter the redeem scenario's tills sell at.
        let counter = pb::CreateStoreRequest {
            request_id: "bench-store".into(),
            parent: format!("partners/{MALL}"),
            store_id: STORE.into(),
            store: Some(pb::Store {
                display_name: "bench counter".into(),
                city: "Shanghai".into(),
                ..Default::default()
            }),
        };
        match pb::partner_service_client::PartnerServiceClient::new(target.as_mall(channel.clone()))
            .create_store(counter)
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(s).context("creating the bench counter"),
        }
        let until = chrono::Utc::now().timestamp() + 30 * 24 * 3600;
        let alliance = pb::Alliance {
            display_name: "bench".into(),
            partners: vec![format!("partners/{BRAND}"), format!("partners/{MALL}")],
            allowed_purposes: vec![ConsentPurpose::MarketingContact as i32],
            data_categories: vec!["contact".into()],
            processing_method: "load test".into(),
            valid_until: Some(prost_types::Timestamp {
                seconds: until,
                nanos: 0,
            }),
            ..Default::default()
        };
        let mut brand_partners =
            pb::partner_service_client::PartnerServiceClient::new(target.as_brand(channel.clone()));
        let created = brand_partners
            .create_alliance(pb::CreateAllianceRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                alliance: Some(alliance),
            })
            .await?
            .into_inner();
        let mut mall_partners =
            pb::partner_service_client::PartnerServiceClient::new(target.as_mall(channel.clone()));
        mall_partners
            .accept_alliance(pb::AcceptAllianceRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                name: created.name,
                ..Default::default()
            })
            .await?;

        let ids: Vec<anyhow::Result<String>> = stream::iter(0..members)
            .map(|i| target.enrol_pair(channel.clone(), i))
            .buffer_unordered(32)
            .collect()
            .await;
        let ids = ids.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            mall_members: Arc::new(ids),
            ..target
        })
    }

    /// The same target with an ACTIVE coupon the mall issues, funds and honours (¥10 off, no
    /// budget or per-member limit to speak of), for the grant and redeem scenarios.
    pub async fn with_coupon(self) -> anyhow::Result<Self> {
        use lianyu_proto::{
            common::v1::Money,
            entitlements::v1::{self as ent, benefit_service_client::BenefitServiceClient},
        };
        let mut benefits = BenefitServiceClient::new(self.as_mall(self.channel()));
        let until = chrono::Utc::now().timestamp() + 24 * 3600;
        let created = benefits
            .create_benefit(ent::CreateBenefitRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                benefit: Some(ent::Benefit {
                    display_name: "bench coupon".into(),
                    kind: ent::BenefitKind::FixedCoupon as i32,
                    value: Some(Money {
                        currency_code: "CNY".into(),
                        minor_units: 1_000,
                    }),
                    budget_units: i64::MAX / 2,
                    valid_until: Some(prost_types::Timestamp {
                        seconds: until,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .context("defining the bench coupon")?
            .into_inner();
        benefits
            .activate_benefit(ent::ActivateBenefitRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                name: created.name.clone(),
            })
            .await
            .context("activating the bench coupon")?;
        Ok(Self {
            benefit: Some(created.name),
            ..self
        })
    }

    /// Raises the mesh-wide contact cap to 100 a day for the run, so request-contact measures
    /// allowed, held contacts rather than refusals.
    pub async fn raise_contact_cap(&self) -> anyhow::Result<()> {
        use lianyu_proto::comarketing::v1 as cm;
        cm::contact_service_client::ContactServiceClient::new(self.as_operator(self.channel()))
            .update_contact_policy(cm::UpdateContactPolicyRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                policy: Some(cm::ContactPolicy {
                    name: "contactPolicies/default".into(),
                    max_contacts: 100,
                    window_days: 1,
                }),
            })
            .await
            .context("raising the contact cap for the run")?;
        Ok(())
    }

    /// One person at both partners; consent to the mall for every other one.
    async fn enrol_pair(&self, channel: Channel, i: usize) -> anyhow::Result<String> {
        let phone = pb::Identifier {
            kind: pb::IdentifierKind::Phone as i32,
            value: format!("1880000{i:04}"),
            namespace: String::new(),
            verified: true,
            verification_method: pb::VerificationMethod::SmsCode as i32,
        };
        let enrol = pb::EnrollMemberRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            identifiers: vec![phone],
            profile: Default::default(),
        };
        let mut brand =
            pb::member_service_client::MemberServiceClient::new(self.as_brand(channel.clone()));
        let mut mall =
            pb::member_service_client::MemberServiceClient::new(self.as_mall(channel.clone()));
        let at_brand = brand
            .enroll_member(enrol.clone())
            .await?
            .into_inner()
            .member
            .unwrap_or_default()
            .name;
        let at_mall = mall
            .enroll_member(enrol)
            .await?
            .into_inner()
            .member
            .unwrap_or_default()
            .name;
        if i.is_multiple_of(2) {
            let mut consents =
                pb::consent_service_client::ConsentServiceClient::new(self.as_brand(channel));
            consents
                .grant_consent(pb::GrantConsentRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    member: at_brand,
                    grantee: format!("partners/{MALL}"),
                    purposes: vec![ConsentPurpose::MarketingContact as i32],
                    channel: pb::ConsentChannel::MiniProgram as i32,
                    policy_version: "bench".into(),
                    valid_until: None,
                })
                .await?;
        }
        Ok(at_mall)
    }

    /// A new HTTP/2 connection (connections are opened lazily on first use).
    /// The same target's tokens and members, its calls sent to `address` (the bare server).
    pub fn at(&self, address: &str) -> anyhow::Result<Self> {
        Ok(Self {
            endpoint: Endpoint::from_shared(address.to_owned())?
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(30)),
            ..self.clone()
        })
    }

    pub fn channel(&self) -> Channel {
        self.endpoint.connect_lazy()
    }

    pub(super) fn as_brand(&self, channel: Channel) -> Authed {
        authed(channel, &self.brand)
    }

    pub(super) fn as_mall(&self, channel: Channel) -> Authed {
        authed(channel, &self.mall)
    }

    pub(super) fn as_operator(&self, channel: Channel) -> Authed {
        authed(channel, &self.operator)
    }
}

fn authed(channel: Channel, token: &Bearer) -> Authed {
    InterceptedService::new(
        InterceptedService::new(channel, TracePropagation),
        token.clone(),
    )
}
