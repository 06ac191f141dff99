//! What comarketing learns from the mesh's feeds, each applied in the transaction that stores
//! its cursor (so nothing is counted twice or lost across restarts):
//!
//! - identity's mesh feed (through the kit's directory follower): enrolments, consents granted
//!   and withdrawn (the consent index counts rely on between synchronous checks), erasures and
//!   merges;
//! - entitlements' whole ledger: the cost of a running campaign's benefits burns its budget
//!   down (every participant's marketing expense on them), claims and redemptions feed the
//!   funnel; when the budget is spent, entitlements is told to stop granting them;
//! - live's whole feed: sessions' co-hosts, and joins and orders in a running campaign's
//!   sessions.
//!
//! A benefit counts for a campaign only when a participant issues or funds it, and a session
//! only when a participant co-hosts it: attaching another partner's benefit or session reveals
//! nothing of it.

use std::time::Duration;

use lianyu_kit::{
    KitError,
    feed::{Consumer, Handled},
    peer::{Idempotency, Peer},
    time::{millis, now_millis},
};
use lianyu_proto::{
    entitlements::internal::v1::{
        self as ledger, campaign_budget_service_client::CampaignBudgetServiceClient,
        ledger_feed_service_client::LedgerFeedServiceClient,
    },
    identity::internal::v1::{MeshEventKind, WatchMeshEventsResponse},
    live::{
        internal::v1::{WatchLiveActivityRequest, live_feed_service_client::LiveFeedServiceClient},
        v1::{self as live, watch_live_events_response::Event},
    },
};
use sea_orm::DatabaseTransaction;
use tokio_util::sync::CancellationToken;

use super::Api;
use crate::{domain::funnel::EventKind, store};

/// How often spent budgets are looked for, to stop their benefits being granted.
const HALT_PERIOD: Duration = Duration::from_secs(1);

/// Starts the followers of entitlements' and live's feeds and the budget's halting job. A
/// service without a peer's address (standalone, unconfigured) logs it and does without.
pub(super) fn start(ctx: &lianyu_kit::server::ServerContext, api: &Api) {
    match ctx.peer(crate::NAME, "entitlements") {
        Ok(peer) => {
            tokio::spawn(follow_ledger(
                api.db.clone(),
                peer.clone(),
                ctx.stopping.clone(),
            ));
            tokio::spawn(halt_spent(api.clone(), peer, ctx.stopping.clone()));
        }
        Err(e) => tracing::warn!(error = %e, "no entitlements peer: budgets do not burn down"),
    }
    match ctx.peer(crate::NAME, "live") {
        Ok(peer) => {
            tokio::spawn(follow_live(api.db.clone(), peer, ctx.stopping.clone()));
        }
        Err(e) => tracing::warn!(error = %e, "no live peer: sessions do not feed the funnel"),
    }
}

async fn follow_ledger(db: sea_orm::DatabaseConnection, peer: Peer, stopping: CancellationToken) {
    let consumer = Consumer::new(db, "comarketing:entitlements.ledger");
    let result = consumer
        .run(
            |cursor| {
                let peer = peer.clone();
                async move {
                    let request = ledger::WatchLedgerRequest {
                        after: Some(lianyu_proto::common::v1::FeedCursor { sequence: cursor }),
                    };
                    let stream = peer
                        .open_stream(request, |ch, r| async move {
                            LedgerFeedServiceClient::new(ch).watch_ledger(r).await
                        })
                        .await?;
                    Ok(futures::StreamExt::map(stream, |item| {
                        item.map(|e| (e.cursor.map_or(0, |c| c.sequence), e))
                    }))
                }
            },
            |txn, event: ledger::WatchLedgerResponse| -> Handled<'_> {
                Box::pin(async move { on_ledger(txn, event).await })
            },
            stopping,
        )
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the ledger feed's cursor cannot be stored; following stopped");
    }
}

async fn follow_live(db: sea_orm::DatabaseConnection, peer: Peer, stopping: CancellationToken) {
    let consumer = Consumer::new(db, "comarketing:live.activity");
    let result = consumer
        .run(
            |cursor| {
                let peer = peer.clone();
                async move {
                    let request = WatchLiveActivityRequest {
                        after: Some(lianyu_proto::common::v1::FeedCursor { sequence: cursor }),
                    };
                    let stream = peer
                        .open_stream(request, |ch, r| async move {
                            LiveFeedServiceClient::new(ch).watch_live_activity(r).await
                        })
                        .await?;
                    Ok(futures::StreamExt::map(stream, |item| {
                        item.map(|e| (e.cursor.map_or(0, |c| c.sequence), e))
                    }))
                }
            },
            |txn, event: live::WatchLiveEventsResponse| -> Handled<'_> {
                Box::pin(async move { on_live(txn, event).await })
            },
            stopping,
        )
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the live feed's cursor cannot be stored; following stopped");
    }
}

fn id<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or_default()
}

/// One ledger transaction: its cost burns down each running campaign its benefit belongs to.
async fn on_ledger(
    txn: &DatabaseTransaction,
    event: ledger::WatchLedgerResponse,
) -> Result<(), KitError> {
    let Some(t) = event.transaction else {
        return Ok(());
    };
    let benefit = id(&t.benefit, "benefits/");
    let at = t.post_time.as_ref().map_or_else(now_millis, millis);
    let (issuer, funder) = (id(&t.issuer, "partners/"), id(&t.funder, "partners/"));
    let member = id(&t.mesh_member, "meshMembers/");
    let through = id(&t.partner, "partners/");
    let number = if member.is_empty() {
        None
    } else {
        Some(store::member_number(txn, member, at).await?)
    };
    // What the member did with the benefit, for segments whatever the campaign.
    let fact = match t.transaction.as_str() {
        "GRANT" => Some(("claimed", EventKind::Claimed)),
        "REDEMPTION" => Some(("redeemed", EventKind::Redeemed)),
        _ => None,
    };
    if let (Some(n), Some((kind, _))) = (number, fact) {
        store::record_facts(
            txn,
            &[store::Fact {
                member: n,
                kind,
                subject: benefit,
                partner: through,
                at,
            }],
        )
        .await?;
    }
    for c in store::running_campaigns_linked(txn, "benefit", benefit).await? {
        if !c.includes(issuer) && !c.includes(funder) {
            continue;
        }
        let currency = c.budget_total().map(|(cur, _)| cur);
        // Each participant's marketing expense on the benefit, in the budget's currency.
        let mut cost = 0i64;
        for p in &t.postings {
            let party = id(&p.partner, "partners/");
            let Some(amount) = &p.amount else { continue };
            if p.account != "marketing_expense"
                || !c.includes(party)
                || currency.as_deref() != Some(amount.currency_code.as_str())
            {
                continue;
            }
            cost += amount.minor_units;
            store::add_tally(txn, &c.id, &format!("cost:{party}"), amount.minor_units).await?;
        }
        if cost != 0 {
            let spent = store::add_spent(txn, &c.id, cost).await?;
            if c.budget_total().is_some_and(|(_, total)| spent >= total) {
                store::mark_exhausted(txn, &c.id, at).await?;
            }
        }
        match t.transaction.as_str() {
            "GRANT" => store::add_tally(txn, &c.id, "claims", 1).await?,
            "REDEMPTION" => store::add_tally(txn, &c.id, "redemptions", 1).await?,
            _ => {}
        }
        if let (Some(n), Some((_, kind))) = (number, fact) {
            store::insert_events(
                txn,
                &[store::NewEvent {
                    key: format!("ledger:{}:{}", t.name, c.id),
                    campaign: &c.id,
                    member: n,
                    partner: through,
                    kind,
                    at,
                    amount: 0,
                }],
            )
            .await?;
        }
    }
    Ok(())
}

/// One live event: co-hosts are remembered; joins and orders count for each running campaign
/// the session belongs to.
async fn on_live(
    txn: &DatabaseTransaction,
    event: live::WatchLiveEventsResponse,
) -> Result<(), KitError> {
    let seq = event.cursor.map_or(0, |c| c.sequence);
    let at = event.event_time.as_ref().map_or_else(now_millis, millis);
    let (session, member, through, kind, amount, key) = match event.event {
        Some(Event::Session(s)) => {
            let hosts: Vec<&str> = s.hosts.iter().map(|h| id(h, "partners/")).collect();
            return store::record_session_hosts(txn, id(&s.name, "sessions/"), &hosts).await;
        }
        Some(Event::ViewerJoined(j)) => (
            id(&j.session, "sessions/").to_owned(),
            j.member,
            j.partner,
            EventKind::JoinedSession,
            0,
            format!("live:{seq}"),
        ),
        Some(Event::Order(o)) => {
            let session = o.name.split("/orders/").next().unwrap_or_default();
            let placed = o.state == live::OrderState::Placed as i32;
            let minor = o.amount.as_ref().map_or(0, |m| m.minor_units);
            (
                id(session, "sessions/").to_owned(),
                o.member,
                o.placed_by,
                EventKind::Ordered,
                if placed { minor } else { -minor },
                format!(
                    "live:{}:{}",
                    o.name,
                    if placed { "placed" } else { "cancelled" }
                ),
            )
        }
        _ => return Ok(()),
    };
    let member = id(&member, "meshMembers/");
    if member.is_empty() || session.is_empty() {
        return Ok(());
    }
    let through = id(&through, "partners/").to_owned();
    let n = store::member_number(txn, member, at).await?;
    let fact = if kind == EventKind::Ordered {
        "ordered"
    } else {
        "joined"
    };
    if amount >= 0 {
        store::record_facts(
            txn,
            &[store::Fact {
                member: n,
                kind: fact,
                subject: &session,
                partner: &through,
                at,
            }],
        )
        .await?;
    }
    let hosts = store::session_hosts(txn, &session).await?;
    for c in store::running_campaigns_linked(txn, "session", &session).await? {
        if !hosts.iter().any(|h| c.includes(h)) {
            continue;
        }
        let added = store::insert_events(
            txn,
            &[store::NewEvent {
                key: format!("{key}:{}", c.id),
                campaign: &c.id,
                member: n,
                partner: &through,
                kind,
                at,
                amount,
            }],
        )
        .await?;
        if kind == EventKind::Ordered && added > 0 {
            store::add_tally(txn, &c.id, "orders", amount.signum()).await?;
            store::add_tally(txn, &c.id, "gmv", amount).await?;
        }
    }
    Ok(())
}

/// Tells entitlements to stop granting the benefits of campaigns whose budget is spent, until
/// it has; a campaign is marked once entitlements answered.
async fn halt_spent(api: Api, peer: Peer, stopping: CancellationToken) {
    lianyu_kit::jobs::periodic(
        "comarketing.halt_spent",
        HALT_PERIOD,
        true,
        None,
        stopping,
        || {
            let (api, peer) = (api.clone(), peer.clone());
            async move {
                let mut halted = 0u64;
                for c in store::exhausted_unhalted(&api.read).await? {
                    if !c.benefits.is_empty() {
                        let request = ledger::StopGrantingRequest {
                            campaign: format!("campaigns/{}", c.id),
                            benefits: c.benefits.iter().map(|b| format!("benefits/{b}")).collect(),
                            partners: c.partners.iter().map(|p| format!("partners/{p}")).collect(),
                        };
                        peer.call(Idempotency::Idempotent, request, |ch, r| async move {
                            CampaignBudgetServiceClient::new(ch).stop_granting(r).await
                        })
                        .await
                        .map_err(|s| {
                            KitError::Unavailable(
                                "ENTITLEMENTS_UNAVAILABLE",
                                s.message().to_owned(),
                            )
                        })?;
                    }
                    store::add_tally(&api.db, &c.id, "halted", 1).await?;
                    halted += 1;
                }
                Ok::<_, KitError>(halted)
            }
        },
    )
    .await;
}

/// Acts on one mesh event inside the consumer's transaction.
pub(super) async fn on_mesh_event(
    txn: &sea_orm::DatabaseTransaction,
    event: &WatchMeshEventsResponse,
) -> Result<(), KitError> {
    let Some(member) = event.mesh_member.strip_prefix("meshMembers/") else {
        return Ok(());
    };
    let partner = event.partner.strip_prefix("partners/").unwrap_or_default();
    let at = event
        .event_time
        .as_ref()
        .map_or_else(lianyu_kit::time::now_millis, lianyu_kit::time::millis);
    match event.kind() {
        MeshEventKind::MemberEnrolled => {
            let n = store::member_number(txn, member, at).await?;
            store::record_facts(
                txn,
                &[store::Fact {
                    member: n,
                    kind: "enrolled",
                    subject: "",
                    partner,
                    at,
                }],
            )
            .await?;
        }
        MeshEventKind::ConsentGranted | MeshEventKind::ConsentWithdrawn => {
            let grantee = event.grantee.strip_prefix("partners/").unwrap_or_default();
            let granted = event.kind() == MeshEventKind::ConsentGranted;
            let n = store::member_number(txn, member, at).await?;
            for purpose in &event.purposes {
                store::set_consent(txn, n, partner, grantee, *purpose, granted).await?;
            }
        }
        MeshEventKind::MemberErased => {
            let n = store::member_number(txn, member, at).await?;
            store::erase_at(txn, n, partner).await?;
        }
        MeshEventKind::MembersMerged => {
            let Some(into) = event.into_mesh_member.strip_prefix("meshMembers/") else {
                return Ok(());
            };
            let from = store::member_number(txn, member, at).await?;
            let into = store::member_number(txn, into, at).await?;
            store::merge_members(txn, from, into).await?;
        }
        _ => {}
    }
    Ok(())
}
