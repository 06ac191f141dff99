//! The demo `lianyu up` runs on a new local mesh: a shoe brand and a department store share a
//! member the way partners do, through the real contracts — credentials exchanged for tokens,
//! an alliance both accept, enrolment linked by a verified phone, and a profile the mall sees
//! only while the member's consent stands, every read audited; then a coupon the brand funds,
//! the mall issues and honours at its cosmetics counter, redeemed there and settled from the
//! ledger. It narrates each step and leaves the data behind for the reader's own calls.

use std::{path::Path, time::Duration};

use anyhow::Context;
use lianyu_kit::{
    auth::{Signer, TokenRequest},
    config::AuthConfig,
};
use lianyu_proto::{
    common::v1::{ConsentPurpose, PartnerKind},
    identity::v1::{
        self as pb, audit_service_client::AuditServiceClient,
        auth_service_client::AuthServiceClient, consent_service_client::ConsentServiceClient,
        member_service_client::MemberServiceClient, partner_service_client::PartnerServiceClient,
    },
};
use tonic::{codegen::InterceptedService, transport::Channel};

use crate::bearer::Bearer;

const BRAND: &str = "aurora-shoes";
const MALL: &str = "jade-plaza";

type Authed = InterceptedService<Channel, Bearer>;

struct Partner {
    partners: PartnerServiceClient<Authed>,
    members: MemberServiceClient<Authed>,
    consents: ConsentServiceClient<Authed>,
    audit: AuditServiceClient<Authed>,
}

impl Partner {
    fn new(channel: &Channel, token: &str) -> Self {
        let ch = || InterceptedService::new(channel.clone(), Bearer::new(token));
        Self {
            partners: PartnerServiceClient::new(ch()),
            members: MemberServiceClient::new(ch()),
            consents: ConsentServiceClient::new(ch()),
            audit: AuditServiceClient::new(ch()),
        }
    }
}

/// What the demo left for the reader: each partner's client id and secret.
pub struct Credentials {
    pub partner: &'static str,
    pub client_id: String,
    pub client_secret: String,
}

/// Runs the demo against the mesh at `address` (minting the operator's and the partners'
/// first tokens with the dev key in `data_dir`), printing each step with `say`. Does nothing
/// and returns `None` when the mesh already has partners.
pub async fn run(
    address: &str,
    data_dir: &Path,
    auth: &AuthConfig,
    say: impl Fn(&str),
) -> anyhow::Result<Option<Vec<Credentials>>> {
    let key = Signer::load(data_dir).context("the demo mints its first tokens with the dev key")?;
    let mint = |request: TokenRequest| key.mint(auth, &request);
    let channel = Channel::from_shared(address.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("the demo cannot reach {address}"))?;
    let operator = Partner::new(
        &channel,
        &mint(TokenRequest {
            operator: true,
            ..TokenRequest::partner("operator")
        })?,
    );
    let existing = operator
        .partners
        .clone()
        .list_partners(pb::ListPartnersRequest::default())
        .await?
        .into_inner();
    if !existing.partners.is_empty() {
        return Ok(None);
    }

    say("the operator registers a brand and a department store");
    for (id, kind, name) in [
        (BRAND, PartnerKind::Brand, "Aurora Shoes"),
        (MALL, PartnerKind::Mall, "Jade Plaza"),
    ] {
        operator
            .partners
            .clone()
            .create_partner(pb::CreatePartnerRequest {
                request_id: format!("demo-partner-{id}"),
                partner_id: id.into(),
                partner: Some(pb::Partner {
                    kind: kind as i32,
                    display_name: name.into(),
                    privacy_contact: format!("privacy@{id}.example"),
                    ..Default::default()
                }),
            })
            .await?;
    }

    say(
        "each creates a credential and exchanges it for a 15-minute token (AuthService/IssueToken)",
    );
    let mut credentials = Vec::new();
    let mut tokens = Vec::new();
    for partner in [BRAND, MALL] {
        let bootstrap = InterceptedService::new(
            channel.clone(),
            Bearer::new(&mint(TokenRequest::partner(partner))?),
        );
        let created = AuthServiceClient::new(bootstrap)
            .create_credential(pb::CreateCredentialRequest {
                request_id: format!("demo-credential-{partner}"),
                parent: format!("partners/{partner}"),
                scopes: lianyu_kit::auth::ALL_SCOPES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
            })
            .await?
            .into_inner();
        let client_id = created.credential.unwrap_or_default().client_id;
        let issued = AuthServiceClient::new(channel.clone())
            .issue_token(pb::IssueTokenRequest {
                client_id: client_id.clone(),
                client_secret: created.client_secret.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        tokens.push(issued.access_token);
        credentials.push(Credentials {
            partner,
            client_id,
            client_secret: created.client_secret,
        });
    }
    let mut brand = Partner::new(&channel, &tokens[0]);
    let mut mall = Partner::new(&channel, &tokens[1]);

    let counter = mall
        .partners
        .create_store(pb::CreateStoreRequest {
            request_id: "demo-store-cosmetics".into(),
            parent: format!("partners/{MALL}"),
            store_id: "cosmetics".into(),
            store: Some(pb::Store {
                display_name: "Jade Plaza cosmetics counter".into(),
                city: "Shanghai".into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    say(&format!(
        "Jade registers its cosmetics counter, {}: its tills ask IssueToken for a token of that store alone",
        counter.name
    ));

    say(
        "Aurora proposes a joint domain allowing SHARE_PROFILE, BENEFIT_REDEMPTION, MARKETING_CONTACT and JOINT_ANALYTICS; Jade accepts it",
    );
    let until = chrono::Utc::now() + chrono::Duration::days(90);
    let alliance = brand
        .partners
        .create_alliance(pb::CreateAllianceRequest {
            request_id: "demo-alliance".into(),
            alliance: Some(pb::Alliance {
                display_name: "Aurora × Jade spring festival".into(),
                partners: vec![format!("partners/{BRAND}"), format!("partners/{MALL}")],
                allowed_purposes: vec![
                    ConsentPurpose::ShareProfile as i32,
                    ConsentPurpose::BenefitRedemption as i32,
                    ConsentPurpose::MarketingContact as i32,
                    ConsentPurpose::JointAnalytics as i32,
                ],
                data_categories: vec!["profile.basic".into(), "membership.tier".into()],
                processing_method: "shown to Jade Plaza's shopping guides for joint service".into(),
                valid_until: Some(prost_types::Timestamp {
                    seconds: until.timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let accepted = mall
        .partners
        .accept_alliance(pb::AcceptAllianceRequest {
            request_id: "demo-accept".into(),
            name: alliance.name.clone(),
            // The terms Jade was shown: had Aurora changed them since, nothing would be accepted.
            terms_version: alliance.terms_version,
        })
        .await?
        .into_inner();
    say(&format!(
        "  {} is {}",
        accepted.name,
        pb::AllianceStatus::try_from(accepted.status)
            .map(|s| s.as_str_name())
            .unwrap_or("?")
    ));

    say("both enrol the same shopper by a phone each verified by SMS code");
    let phone = |verified| pb::Identifier {
        kind: pb::IdentifierKind::Phone as i32,
        value: "138 0013 8000".into(),
        namespace: String::new(),
        verified,
        verification_method: pb::VerificationMethod::SmsCode as i32,
    };
    let at_brand = brand
        .members
        .enroll_member(pb::EnrollMemberRequest {
            request_id: "demo-enrol".into(),
            identifiers: vec![phone(true)],
            profile: [
                ("tier".to_owned(), "gold".to_owned()),
                ("shoe_size".to_owned(), "38".to_owned()),
            ]
            .into(),
        })
        .await?
        .into_inner();
    let at_mall = mall
        .members
        .enroll_member(pb::EnrollMemberRequest {
            request_id: "demo-enrol".into(),
            identifiers: vec![phone(true)],
            profile: Default::default(),
        })
        .await?
        .into_inner();
    let brand_id = at_brand.member.unwrap_or_default().name;
    let mall_id = at_mall.member.unwrap_or_default().name;
    say(&format!(
        "  one person, two pseudonymous ids: Aurora's {brand_id}, Jade's {mall_id} (linked: {})",
        at_mall.linked_existing
    ));

    let shared = |m: &pb::Member| m.shared_profiles.len();
    let read = pb::GetMemberRequest {
        name: mall_id.clone(),
        purpose: 0,
    };
    let before = mall.members.get_member(read.clone()).await?.into_inner();
    say(&format!(
        "Jade reads the member: {} shared profiles (no consent yet)",
        shared(&before)
    ));

    let receipt = brand
        .consents
        .grant_consent(pb::GrantConsentRequest {
            request_id: "demo-grant".into(),
            member: brand_id.clone(),
            grantee: format!("partners/{MALL}"),
            purposes: vec![ConsentPurpose::ShareProfile as i32],
            channel: pb::ConsentChannel::MiniProgram as i32,
            policy_version: "2026-11".into(),
            valid_until: None,
        })
        .await?
        .into_inner();
    say(&format!(
        "the shopper grants SHARE_PROFILE to Jade in Aurora's mini-program: receipt {}",
        receipt.name
    ));
    let during = mall.members.get_member(read.clone()).await?.into_inner();
    let tier = during
        .shared_profiles
        .first()
        .and_then(|p| p.profile.get("tier"))
        .cloned()
        .unwrap_or_default();
    say(&format!(
        "Jade reads again: {} shared profile (tier {tier:?})",
        shared(&during)
    ));

    brand
        .consents
        .withdraw_consent(pb::WithdrawConsentRequest {
            request_id: "demo-withdraw".into(),
            member: brand_id.clone(),
            grantee: format!("partners/{MALL}"),
            purposes: vec![ConsentPurpose::ShareProfile as i32],
        })
        .await?;
    let after = mall.members.get_member(read).await?.into_inner();
    say(&format!(
        "the shopper withdraws with one call; Jade reads again: {} shared profiles",
        shared(&after)
    ));
    let records = mall
        .audit
        .list_access_records(pb::ListAccessRecordsRequest::default())
        .await?
        .into_inner()
        .records;
    let allowed = records.iter().filter(|r| r.allowed).count();
    say(&format!(
        "Jade's access log: {} reads, {allowed} allowed, each hash-chained (the read before any consent touched no one's data: not logged)",
        records.len()
    ));
    let campaign = coupon(&channel, &tokens, &mall_id, &mut mall, &alliance.name, &say).await?;
    livestream(&channel, &tokens, &brand_id, &say).await?;
    let cast = crate::demo_campaign::Cast {
        brand: BRAND,
        mall: MALL,
        at_brand: &brand_id,
        at_mall: &mall_id,
    };
    let mut with_operator = tokens.clone();
    with_operator.push(mint(TokenRequest {
        operator: true,
        ..TokenRequest::partner("operator")
    })?);
    crate::demo_campaign::run(
        &channel,
        &with_operator,
        &campaign,
        &alliance.name,
        &cast,
        &mut brand.consents,
        &say,
    )
    .await?;
    Ok(Some(credentials))
}

/// The joint coupon: Jade issues "¥50 off ¥300" that Aurora pays for, honoured at Jade's
/// cosmetics counter; the shopper consents, receives it, redeems it there, and the ledger
/// says what Aurora owes Jade.
async fn coupon(
    channel: &Channel,
    tokens: &[String],
    mall_member: &str,
    mall: &mut Partner,
    alliance: &str,
    say: &impl Fn(&str),
) -> anyhow::Result<String> {
    use lianyu_proto::{
        common::v1::Money,
        entitlements::v1::{
            self as ent, benefit_service_client::BenefitServiceClient,
            ledger_service_client::LedgerServiceClient,
            redemption_service_client::RedemptionServiceClient,
            wallet_service_client::WalletServiceClient,
        },
    };
    let ch = |token: &str| InterceptedService::new(channel.clone(), Bearer::new(token));
    let (brand_token, mall_token) = (&tokens[0], &tokens[1]);
    let cny = |minor_units| {
        Some(Money {
            currency_code: "CNY".into(),
            minor_units,
        })
    };
    let until = chrono::Utc::now() + chrono::Duration::days(30);
    let benefit = BenefitServiceClient::new(ch(mall_token))
        .create_benefit(ent::CreateBenefitRequest {
            request_id: "demo-coupon".into(),
            benefit: Some(ent::Benefit {
                display_name: "Spring festival: 50 off 300".into(),
                kind: ent::BenefitKind::ThresholdCoupon as i32,
                funder: format!("partners/{BRAND}"),
                honoured_by: vec![format!("partners/{MALL}")],
                value: cny(5_000),
                threshold: cny(30_000),
                budget_units: 1_000,
                per_member_limit: 1,
                // Aurora pays for beauty purchases at Jade, not for its own shoes.
                categories: vec!["cosmetics".into()],
                valid_until: Some(prost_types::Timestamp {
                    seconds: until.timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    say(&format!(
        "Jade issues {} ({}: ¥50 off ¥300, 1,000 units), funded by Aurora",
        benefit.name, benefit.display_name
    ));
    // Aurora reads the terms it is asked to pay for and accepts exactly those (the etag).
    let mut brand_benefits = BenefitServiceClient::new(ch(brand_token));
    let read = brand_benefits
        .get_benefit(ent::GetBenefitRequest {
            name: benefit.name.clone(),
        })
        .await?
        .into_inner();
    brand_benefits
        .accept_benefit_funding(ent::AcceptBenefitFundingRequest {
            request_id: "demo-fund".into(),
            name: benefit.name.clone(),
            etag: read.etag,
        })
        .await?;
    BenefitServiceClient::new(ch(mall_token))
        .activate_benefit(ent::ActivateBenefitRequest {
            request_id: "demo-activate".into(),
            name: benefit.name.clone(),
        })
        .await?;
    say("Aurora reads the terms and accepts to fund exactly those (their etag); Jade activates it");
    let campaign =
        crate::demo_campaign::plan(channel, tokens, (BRAND, MALL), &benefit.name, alliance, say)
            .await?;
    mall.consents
        .grant_consent(pb::GrantConsentRequest {
            request_id: "demo-grant-redemption".into(),
            member: mall_member.to_owned(),
            grantee: format!("partners/{BRAND}"),
            // Funding her benefits, and counting what she does with them in the joint figures:
            // her claims and purchases at Jade are Jade's records, which only this lets
            // Aurora's funnel read.
            purposes: vec![
                ConsentPurpose::BenefitRedemption as i32,
                ConsentPurpose::JointAnalytics as i32,
            ],
            channel: pb::ConsentChannel::MiniProgram as i32,
            policy_version: "2026-11".into(),
            valid_until: None,
        })
        .await?;
    let item = WalletServiceClient::new(ch(mall_token))
        .grant_benefit(ent::GrantBenefitRequest {
            request_id: "demo-give".into(),
            member: mall_member.to_owned(),
            benefit: benefit.name.clone(),
        })
        .await?
        .into_inner();
    say(&format!(
        "the shopper agrees in Jade's app that Aurora fund her benefits and count her in the joint figures (BENEFIT_REDEMPTION, JOINT_ANALYTICS); Jade grants the coupon: {}",
        item.name
    ));
    let counter = format!("partners/{MALL}/stores/cosmetics");
    let redeemed = RedemptionServiceClient::new(ch(mall_token))
        .redeem(ent::RedeemRequest {
            request_id: "demo-redeem".into(),
            wallet_item: item.name.clone(),
            store: counter.clone(),
            order_amount: cny(45_000),
            category: "cosmetics".into(),
            order_reference: "jade-pos-0001".into(),
        })
        .await?
        .into_inner();
    let off = redeemed.discount.map_or(0, |m| m.minor_units);
    say(&format!(
        "the shopper pays ¥450 at {counter} and redeems it: ¥{}.{:02} off ({})",
        off / 100,
        off % 100,
        redeemed.name
    ));
    let statement = LedgerServiceClient::new(ch(brand_token))
        .get_settlement_statement(ent::GetSettlementStatementRequest {
            counterparty: format!("partners/{MALL}"),
            ..Default::default()
        })
        .await?
        .into_inner();
    for line in &statement.net {
        let owed = line.amount.as_ref().map_or(0, |m| m.minor_units);
        say(&format!(
            "Aurora's settlement statement with Jade, summed from its postings: {} owes {} ¥{}.{:02}",
            line.debtor,
            line.creditor,
            owed / 100,
            owed % 100
        ));
    }
    // Jade closes the period: what Aurora owes for it never changes again.
    let closed = LedgerServiceClient::new(ch(mall_token))
        .close_settlement_period(ent::CloseSettlementPeriodRequest {
            request_id: "demo-close-period".into(),
            counterparty: format!("partners/{BRAND}"),
            end_time: lianyu_kit::time::timestamp(lianyu_kit::time::now_millis()),
        })
        .await?
        .into_inner();
    say(&format!(
        "Jade closes the period with Aurora (closed: {}, {} line(s)); later corrections fall into the next one",
        closed.closed,
        closed.lines.len()
    ));
    Ok(campaign)
}

/// The co-hosted livestream: Aurora and Jade run a show from Jade's cosmetics counter with
/// Jade's guide Lin on air; a viewer joins, a flash sale opens, the shopper buys through Lin's
/// share code in Aurora's app, and the figures credit the sale to Aurora, the counter and Lin.
async fn livestream(
    channel: &Channel,
    tokens: &[String],
    brand_member: &str,
    say: &impl Fn(&str),
) -> anyhow::Result<()> {
    use lianyu_kit::time::{now_millis, timestamp};
    use lianyu_proto::{
        common::v1::Money,
        entitlements::v1::{self as ent, benefit_service_client::BenefitServiceClient},
        live::v1::{
            self as live, join_session_response::Update, order_service_client::OrderServiceClient,
            session_service_client::SessionServiceClient,
            showcase_service_client::ShowcaseServiceClient,
            stats_service_client::StatsServiceClient, viewer_service_client::ViewerServiceClient,
        },
    };
    let ch = |token: &str| InterceptedService::new(channel.clone(), Bearer::new(token));
    let (brand_token, mall_token) = (&tokens[0], &tokens[1]);
    let cny = |minor_units| {
        Some(Money {
            currency_code: "CNY".into(),
            minor_units,
        })
    };
    let counter = format!("partners/{MALL}/stores/cosmetics");
    let session = SessionServiceClient::new(ch(brand_token))
        .create_session(live::CreateSessionRequest {
            request_id: "demo-show".into(),
            session: Some(live::Session {
                title: "Aurora × Jade: spring lipsticks live".into(),
                hosts: vec![format!("partners/{MALL}")],
                store: counter.clone(),
                stream_url: "https://cdn.example/live/aurora-jade.m3u8".into(),
                scheduled_start_time: timestamp(now_millis() + 60_000),
                presenters: vec!["Ana".into()],
                guides: vec![live::Guide {
                    guide_id: "lin".into(),
                    display_name: "Lin".into(),
                    partner: format!("partners/{MALL}"),
                    ..Default::default()
                }],
                revenue_shares: vec![
                    live::RevenueShare {
                        partner: format!("partners/{BRAND}"),
                        share_bps: 7_000,
                    },
                    live::RevenueShare {
                        partner: format!("partners/{MALL}"),
                        share_bps: 3_000,
                    },
                ],
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let code = session
        .guides
        .first()
        .map(|g| g.share_code.clone())
        .unwrap_or_default();
    // Aurora named Jade a co-host: Jade accepts before anything goes on air in its name.
    SessionServiceClient::new(ch(mall_token))
        .accept_session(live::AcceptSessionRequest {
            request_id: "demo-show-accept".into(),
            name: session.name.clone(),
            // Exactly the terms Jade read: a change since would be refused, not accepted.
            etag: session.etag.clone(),
        })
        .await?;
    SessionServiceClient::new(ch(mall_token))
        .start_session(live::StartSessionRequest {
            request_id: "demo-show-start".into(),
            name: session.name.clone(),
            // What the mall accepted; a change since would stop the start, not slip through.
            etag: session.etag.clone(),
        })
        .await?;
    say(&format!(
        "Jade accepts Aurora's invitation; they go live from {counter} ({}), revenue shared 70/30; guide Lin's share code {code}",
        session.name
    ));
    let mut watching = ViewerServiceClient::new(ch(brand_token))
        .join_session(live::JoinSessionRequest {
            session: session.name.clone(),
            member: String::new(),
        })
        .await?
        .into_inner();
    if let Some(live::JoinSessionResponse {
        update: Some(Update::Snapshot(snapshot)),
    }) = watching.message().await?
    {
        say(&format!(
            "a viewer joins through Aurora's app: snapshot of {:?}, {} watching",
            snapshot.session.map(|s| s.title).unwrap_or_default(),
            snapshot.viewers
        ));
    }
    let mut showcase = ShowcaseServiceClient::new(ch(brand_token));
    let lipstick = showcase
        .add_product(live::AddProductRequest {
            request_id: "demo-product".into(),
            parent: session.name.clone(),
            product: Some(live::Product {
                sku: "LIP-520".into(),
                title: "Aurora lipstick 520".into(),
                price: cny(29_900),
                category: "cosmetics".into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    showcase
        .pin_product(live::PinProductRequest {
            request_id: "demo-pin".into(),
            name: lipstick.name.clone(),
            pinned: true,
        })
        .await?;
    let sale = showcase
        .create_flash_sale(live::CreateFlashSaleRequest {
            request_id: "demo-sale".into(),
            parent: session.name.clone(),
            flash_sale: Some(live::FlashSale {
                product: lipstick.name.clone(),
                sale_price: cny(19_900),
                total_stock: 100,
                per_member_limit: 1,
                end_time: timestamp(now_millis() + 30 * 60_000),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    say("Aurora pins its lipstick and opens a flash sale: 100 at ¥199, one per member");
    // A coupon drop on air: Aurora's own "¥20 off" for the show's viewers, 200 units.
    let coupon = BenefitServiceClient::new(ch(brand_token))
        .create_benefit(ent::CreateBenefitRequest {
            request_id: "demo-live-coupon".into(),
            benefit: Some(ent::Benefit {
                display_name: "Live viewers: 20 off".into(),
                kind: ent::BenefitKind::FixedCoupon as i32,
                value: cny(2_000),
                budget_units: 200,
                per_member_limit: 1,
                valid_until: timestamp(now_millis() + 30 * 24 * 3_600_000),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    BenefitServiceClient::new(ch(brand_token))
        .activate_benefit(ent::ActivateBenefitRequest {
            request_id: "demo-live-coupon-activate".into(),
            name: coupon.name.clone(),
        })
        .await?;
    let drop = showcase
        .create_coupon_drop(live::CreateCouponDropRequest {
            request_id: "demo-drop".into(),
            parent: session.name.clone(),
            coupon_drop: Some(live::CouponDrop {
                benefit: coupon.name.clone(),
                quantity: 200,
                close_time: timestamp(now_millis() + 10 * 60_000),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let claimed = showcase
        .claim_coupon_drop(live::ClaimCouponDropRequest {
            request_id: "demo-claim".into(),
            name: drop.name.clone(),
            member: brand_member.to_owned(),
        })
        .await?
        .into_inner();
    say(&format!(
        "Aurora drops 200 \"¥20 off\" coupons on air; the shopper claims one in Aurora's app: {} ({} left)",
        claimed.wallet_item, claimed.remaining
    ));
    let order = OrderServiceClient::new(ch(brand_token))
        .place_order(live::PlaceOrderRequest {
            request_id: "demo-order".into(),
            parent: session.name.clone(),
            order: Some(live::Order {
                member: brand_member.to_owned(),
                flash_sale: sale.name.clone(),
                quantity: 1,
                share_code: code,
                payment_reference: "aurora-pay-0001".into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    say(&format!(
        "the shopper buys one in Aurora's app through Lin's code: credited to {}, {}, {}",
        order.partner, order.store, order.guide
    ));
    let figures = StatsServiceClient::new(ch(mall_token))
        .get_session_stats(live::GetSessionStatsRequest {
            session: session.name.clone(),
        })
        .await?
        .into_inner();
    let gross = figures.gross_sales.map_or(0, |m| m.minor_units);
    say(&format!(
        "Jade's dashboard: {} order(s), ¥{}.{:02} gross, {} by guide line(s), {} unique viewer(s), {} coupon(s) claimed",
        figures.orders,
        gross / 100,
        gross % 100,
        figures.by_guide.len(),
        figures.viewers_total,
        figures.coupons_claimed
    ));
    Ok(())
}
