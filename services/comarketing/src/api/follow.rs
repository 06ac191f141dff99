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

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

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
use crate::{
    domain::{Campaign, funnel::EventKind},
    store,
};

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
        .run_batches(
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
            |txn, events: Vec<ledger::WatchLedgerResponse>| -> Handled<'_> {
                Box::pin(async move { on_ledger(txn, events).await })
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
        .run_batches(
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
            |txn, events: Vec<live::WatchLiveEventsResponse>| -> Handled<'_> {
                Box::pin(async move { on_live(txn, events).await })
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
/// What one batch of feed events looks up once — members' numbers, the running campaigns a
/// benefit or session belongs to, a session's co-hosts — and the facts it records at its end,
/// all in the transaction that stores the batch's cursor. In a burst (a flash sale's orders,
/// a drop's claims) a batch holds dozens of events about one session or benefit: looked up
/// once, not once per event.
struct Batch<'t> {
    txn: &'t DatabaseTransaction,
    numbers: HashMap<String, i32>,
    campaigns: HashMap<(&'static str, String), Vec<Campaign>>,
    hosts: HashMap<String, Vec<String>>,
    /// (kind, subject, partner, member) → the first and last time in this batch.
    facts: BTreeMap<(&'static str, String, String, i32), (i64, i64)>,
    /// Merges and erasures identity's feed told before this batch (none for a batch of
    /// identity's own feed, which tells them in order).
    departures: store::Departures,
}

impl<'t> Batch<'t> {
    /// Numbers every member of `members` (mesh ids with the time of their event), adding
    /// those not yet known with the batch's earliest time as their activity.
    async fn new(txn: &'t DatabaseTransaction, members: &[(&str, i64)]) -> Result<Self, KitError> {
        let mut ids: Vec<&str> = members.iter().map(|(m, _)| *m).collect();
        ids.sort_unstable();
        ids.dedup();
        let numbers = match members.iter().map(|(_, at)| *at).min() {
            Some(at) => store::member_numbers(txn, &ids, at).await?,
            None => HashMap::new(),
        };
        Ok(Self {
            txn,
            numbers,
            campaigns: HashMap::new(),
            hosts: HashMap::new(),
            facts: BTreeMap::new(),
            departures: store::Departures::default(),
        })
    }

    /// [`Batch::new`] for a batch of live's or entitlements' feed, which may tell of a member
    /// after identity's feed erased or merged it: an erased member's events through the
    /// partner that erased it leave nothing of the member, a merged one's count for the
    /// survivor.
    async fn behind_identity(
        txn: &'t DatabaseTransaction,
        members: &[(&str, i64)],
    ) -> Result<Self, KitError> {
        let mut batch = Self::new(txn, members).await?;
        let numbers: Vec<i32> = batch.numbers.values().copied().collect();
        batch.departures = store::Departures::of(txn, &numbers).await?;
        Ok(batch)
    }

    /// The member's number: the survivor's, when it was merged.
    fn number(&self, member: &str) -> Option<i32> {
        let n = self.numbers.get(member).copied()?;
        Some(self.departures.survivor(n))
    }

    /// Whether what `member` did through `partner` at `at` was erased since.
    fn erased(&self, member: i32, partner: &str, at: i64) -> bool {
        self.departures.erased(member, partner, at)
    }

    /// The RUNNING campaigns `target` (a benefit or session, by `kind`) is attached to.
    async fn campaigns(
        &mut self,
        kind: &'static str,
        target: &str,
    ) -> Result<Vec<Campaign>, KitError> {
        let key = (kind, target.to_owned());
        if let Some(known) = self.campaigns.get(&key) {
            return Ok(known.clone());
        }
        let found = store::running_campaigns_linked(self.txn, kind, target).await?;
        self.campaigns.insert(key, found.clone());
        Ok(found)
    }

    /// A session's co-hosts as far as live's feed has told, this batch's included.
    async fn hosts(&mut self, session: &str) -> Result<Vec<String>, KitError> {
        if let Some(known) = self.hosts.get(session) {
            return Ok(known.clone());
        }
        let found = store::session_hosts(self.txn, session).await?;
        self.hosts.insert(session.to_owned(), found.clone());
        Ok(found)
    }

    async fn record_hosts(&mut self, session: &str, hosts: &[&str]) -> Result<(), KitError> {
        store::record_session_hosts(self.txn, session, hosts).await?;
        self.hosts.remove(session);
        Ok(())
    }

    fn fact(&mut self, member: i32, kind: &'static str, subject: &str, partner: &str, at: i64) {
        if self.erased(member, partner, at) {
            return;
        }
        let span = self
            .facts
            .entry((kind, subject.to_owned(), partner.to_owned(), member))
            .or_insert((at, at));
        span.0 = span.0.min(at);
        span.1 = span.1.max(at);
    }

    /// Records the batch's facts: each first with its earliest time (a new fact starts then),
    /// then, where it happened again later in the batch, with its latest. One row per fact and
    /// statement, as PostgreSQL's upsert requires.
    async fn finish(self) -> Result<(), KitError> {
        let first: Vec<_> = self
            .facts
            .iter()
            .map(|(k, (f, _))| fact_row(k, *f))
            .collect();
        if !first.is_empty() {
            store::record_facts(self.txn, &first).await?;
        }
        let later: Vec<_> = self
            .facts
            .iter()
            .filter(|(_, (f, l))| l > f)
            .map(|(k, (_, l))| fact_row(k, *l))
            .collect();
        if !later.is_empty() {
            store::record_facts(self.txn, &later).await?;
        }
        Ok(())
    }
}

/// A fact of a batch ([`Batch::fact`]) as stored, at `at`.
fn fact_row<'a>(key: &'a (&'static str, String, String, i32), at: i64) -> store::Fact<'a> {
    let (kind, subject, partner, member) = key;
    store::Fact {
        member: *member,
        kind,
        subject,
        partner,
        at,
    }
}

/// A batch of entitlements' ledger: what members did with benefits (facts for segments), and
/// for each running campaign a benefit belongs to, its cost, claims and redemptions.
async fn on_ledger(
    txn: &DatabaseTransaction,
    events: Vec<ledger::WatchLedgerResponse>,
) -> Result<(), KitError> {
    let members: Vec<(&str, i64)> = events
        .iter()
        .filter_map(|e| e.transaction.as_ref())
        .map(|t| {
            let at = t.post_time.as_ref().map_or_else(now_millis, millis);
            (id(&t.mesh_member, "meshMembers/"), at)
        })
        .filter(|(m, _)| !m.is_empty())
        .collect();
    let mut batch = Batch::behind_identity(txn, &members).await?;
    for t in events.iter().filter_map(|e| e.transaction.as_ref()) {
        on_ledger_transaction(&mut batch, t).await?;
    }
    batch.finish().await
}

async fn on_ledger_transaction(
    batch: &mut Batch<'_>,
    t: &ledger::LedgerTransaction,
) -> Result<(), KitError> {
    let txn = batch.txn;
    let benefit = id(&t.benefit, "benefits/");
    let at = t.post_time.as_ref().map_or_else(now_millis, millis);
    let (issuer, funder) = (id(&t.issuer, "partners/"), id(&t.funder, "partners/"));
    let number = batch.number(id(&t.mesh_member, "meshMembers/"));
    let through = id(&t.partner, "partners/");
    // What the member did with the benefit, for segments whatever the campaign.
    let fact = match t.transaction.as_str() {
        "GRANT" => Some(("claimed", EventKind::Claimed)),
        "REDEMPTION" => Some(("redeemed", EventKind::Redeemed)),
        _ => None,
    };
    if let (Some(n), Some((kind, _))) = (number, fact) {
        batch.fact(n, kind, benefit, through, at);
    }
    for c in batch.campaigns("benefit", benefit).await? {
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
        if let (Some(n), Some((_, kind))) = (number, fact)
            && !batch.erased(n, through, at)
        {
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

/// A join or an order, as the funnel counts it.
struct Activity<'e> {
    session: &'e str,
    member: &'e str,
    through: &'e str,
    kind: EventKind,
    amount: i64,
    key: String,
    at: i64,
}

/// What a live event is to the funnel: `None` for events it does not count.
fn activity(event: &live::WatchLiveEventsResponse) -> Option<Activity<'_>> {
    let seq = event.cursor.map_or(0, |c| c.sequence);
    let at = event.event_time.as_ref().map_or_else(now_millis, millis);
    let (session, member, through, kind, amount, key) = match event.event.as_ref()? {
        Event::ViewerJoined(j) => (
            id(&j.session, "sessions/"),
            &j.member,
            &j.partner,
            EventKind::JoinedSession,
            0,
            format!("live:{seq}"),
        ),
        Event::Order(o) => {
            let session = o.name.split("/orders/").next().unwrap_or_default();
            let placed = o.state == live::OrderState::Placed as i32;
            let minor = o.amount.as_ref().map_or(0, |m| m.minor_units);
            (
                id(session, "sessions/"),
                &o.member,
                &o.placed_by,
                EventKind::Ordered,
                if placed { minor } else { -minor },
                format!(
                    "live:{}:{}",
                    o.name,
                    if placed { "placed" } else { "cancelled" }
                ),
            )
        }
        _ => return None,
    };
    let member = id(member, "meshMembers/");
    if member.is_empty() || session.is_empty() {
        return None;
    }
    Some(Activity {
        session,
        member,
        through: id(through, "partners/"),
        kind,
        amount,
        key,
        at,
    })
}

/// A batch of live's feed: co-hosts are remembered; joins and orders are facts for segments,
/// and count for each running campaign their session belongs to.
async fn on_live(
    txn: &DatabaseTransaction,
    events: Vec<live::WatchLiveEventsResponse>,
) -> Result<(), KitError> {
    let members: Vec<(&str, i64)> = events
        .iter()
        .filter_map(activity)
        .map(|a| (a.member, a.at))
        .collect();
    let mut batch = Batch::behind_identity(txn, &members).await?;
    for event in &events {
        if let Some(Event::Session(s)) = &event.event {
            let hosts: Vec<&str> = s.hosts.iter().map(|h| id(h, "partners/")).collect();
            batch.record_hosts(id(&s.name, "sessions/"), &hosts).await?;
            continue;
        }
        let Some(a) = activity(event) else { continue };
        let Some(n) = batch.number(a.member) else {
            continue;
        };
        let fact = if a.kind == EventKind::Ordered {
            "ordered"
        } else {
            "joined"
        };
        if a.amount >= 0 {
            batch.fact(n, fact, a.session, a.through, a.at);
        }
        let campaigns = batch.campaigns("session", a.session).await?;
        if campaigns.is_empty() {
            continue;
        }
        let hosts = batch.hosts(a.session).await?;
        let erased = batch.erased(n, a.through, a.at);
        for c in campaigns {
            if !hosts.iter().any(|h| c.includes(h)) {
                continue;
            }
            // An erased member's order still counts in the campaign's totals, which name no
            // one; no event of the member is kept.
            let added = if erased {
                1
            } else {
                store::insert_events(
                    txn,
                    &[store::NewEvent {
                        key: format!("{}:{}", a.key, c.id),
                        campaign: &c.id,
                        member: n,
                        partner: a.through,
                        kind: a.kind,
                        at: a.at,
                        amount: a.amount,
                    }],
                )
                .await?
            };
            if a.kind == EventKind::Ordered && added > 0 {
                store::add_tally(txn, &c.id, "orders", a.amount.signum()).await?;
                store::add_tally(txn, &c.id, "gmv", a.amount).await?;
            }
        }
    }
    batch.finish().await
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

/// Acts on a batch of mesh events, in order, inside the consumer's transaction. A run of
/// enrolments (what a burst of sign-ups sends) is numbered and recorded together — a few
/// statements for the run, not two per enrolment; any other event is acted on where it falls,
/// so an enrolment and the erasure or merge after it are applied in that order.
pub(super) async fn on_mesh_events(
    txn: &sea_orm::DatabaseTransaction,
    events: &[WatchMeshEventsResponse],
) -> Result<(), KitError> {
    let mut rest = events;
    while let Some(first) = rest.first() {
        let run = rest
            .iter()
            .take_while(|e| e.kind() == MeshEventKind::MemberEnrolled)
            .count();
        if run == 0 {
            on_mesh_event(txn, first).await?;
            rest = &rest[1..];
        } else {
            enrolled(txn, &rest[..run]).await?;
            rest = &rest[run..];
        }
    }
    Ok(())
}

/// The member and partner a mesh event is about (ids without their prefixes), and its time.
fn about(event: &WatchMeshEventsResponse) -> Option<(&str, &str, i64)> {
    let member = event.mesh_member.strip_prefix("meshMembers/")?;
    let partner = event.partner.strip_prefix("partners/").unwrap_or_default();
    let at = event.event_time.as_ref().map_or_else(now_millis, millis);
    Some((member, partner, at))
}

/// A run of MemberEnrolled events: each member numbered (new ones added), and an "enrolled"
/// fact at its partner recorded with the member's activity.
async fn enrolled(
    txn: &sea_orm::DatabaseTransaction,
    events: &[WatchMeshEventsResponse],
) -> Result<(), KitError> {
    let enrolments: Vec<_> = events.iter().filter_map(about).collect();
    let members: Vec<(&str, i64)> = enrolments.iter().map(|(m, _, at)| (*m, *at)).collect();
    let mut batch = Batch::new(txn, &members).await?;
    for (member, partner, at) in &enrolments {
        if let Some(n) = batch.number(member) {
            batch.fact(n, "enrolled", "", partner, *at);
        }
    }
    batch.finish().await
}

/// Acts on one mesh event other than an enrolment ([`on_mesh_events`] hands those to
/// [`enrolled`]) inside the consumer's transaction.
async fn on_mesh_event(
    txn: &sea_orm::DatabaseTransaction,
    event: &WatchMeshEventsResponse,
) -> Result<(), KitError> {
    let Some((member, partner, at)) = about(event) else {
        return Ok(());
    };
    match event.kind() {
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
            store::record_erasure(txn, n, partner, at).await?;
        }
        MeshEventKind::MembersMerged => {
            let Some(into) = event.into_mesh_member.strip_prefix("meshMembers/") else {
                return Ok(());
            };
            let from = store::member_number(txn, member, at).await?;
            let into = store::member_number(txn, into, at).await?;
            store::merge_members(txn, from, into).await?;
            store::record_merge(txn, from, into).await?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sea_orm::TransactionTrait;

    use super::*;
    use crate::domain::rule::Condition;
    use lianyu_kit::ids::PartnerId;

    const AT: i64 = 1_800_000_000_000;

    fn event(kind: MeshEventKind, member: &str, partner: &str, at: i64) -> WatchMeshEventsResponse {
        WatchMeshEventsResponse {
            kind: kind as i32,
            mesh_member: format!("meshMembers/{member}"),
            partner: format!("partners/{partner}"),
            event_time: lianyu_kit::time::timestamp(at),
            ..Default::default()
        }
    }

    /// The mesh ids enrolled at `partner` at or after `since`, as the segment rule reads them.
    async fn enrolled_at(
        db: &sea_orm::DatabaseConnection,
        partner: &str,
        since: i64,
    ) -> Vec<String> {
        let enrolled = Condition::Enrolled {
            partner: lianyu_kit::ids::PartnerId::new(partner),
            since: Some(since),
        };
        members_with(db, partner, &enrolled).await
    }

    /// The mesh ids `partner`'s own records hold to meet `condition`, as a segment reads them.
    async fn members_with(
        db: &sea_orm::DatabaseConnection,
        partner: &str,
        condition: &Condition,
    ) -> Vec<String> {
        // As the partner itself sees them: its own records.
        let sight = store::Sight::of(partner);
        let found = store::condition_members(
            db,
            condition,
            AT + 60_000,
            (&sight, &store::all_members(db).await.unwrap()),
        )
        .await
        .unwrap();
        let numbers: Vec<u32> = found.iter().collect();
        let mut ids: Vec<String> = store::mesh_members_of(db, &numbers)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        ids.sort();
        ids
    }

    /// One batch of identity's feed — enrolments, an erasure among them, an enrolment again
    /// after it — is acted on in the order it happened: the runs of enrolments on either side
    /// of the erasure are recorded together, but the erasure removes only what came before it.
    #[tokio::test]
    async fn a_batch_of_mesh_events_is_applied_in_the_order_it_happened() {
        let (_database, db) = store::test_database("comarketing_mesh_batch").await;
        let batch = vec![
            event(MeshEventKind::MemberEnrolled, "m1", "brand", AT),
            event(MeshEventKind::MemberEnrolled, "m2", "brand", AT + 1),
            event(MeshEventKind::MemberEnrolled, "m1", "mall", AT + 2),
            event(MeshEventKind::MemberErased, "m1", "brand", AT + 3),
            event(MeshEventKind::MemberEnrolled, "m3", "mall", AT + 4),
            event(MeshEventKind::MemberErased, "m2", "brand", AT + 5),
            event(MeshEventKind::MemberEnrolled, "m2", "brand", AT + 6),
            event(MeshEventKind::MemberEnrolled, "m2", "brand", AT + 7),
        ];
        let txn = db.begin().await.unwrap();
        on_mesh_events(&txn, &batch).await.unwrap();
        txn.commit().await.unwrap();
        // m1's enrolment at the brand was erased after it; m2 enrolled there again after
        // its erasure (twice in one run: one fact, from the first of them).
        assert_eq!(enrolled_at(&db, "brand", 0).await, ["m2"]);
        assert_eq!(enrolled_at(&db, "brand", AT + 6).await, ["m2"]);
        assert!(enrolled_at(&db, "brand", AT + 7).await.is_empty());
        assert_eq!(enrolled_at(&db, "mall", 0).await, ["m1", "m3"]);
        assert_eq!(enrolled_at(&db, "mall", AT + 3).await, ["m3"]);
        // Applied again (a batch delivered twice after a failed commit), nothing changes.
        let txn = db.begin().await.unwrap();
        on_mesh_events(&txn, &batch[6..]).await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(enrolled_at(&db, "brand", AT + 6).await, ["m2"]);
        assert!(enrolled_at(&db, "brand", AT + 7).await.is_empty());
    }

    /// Live's event `event`, the `n`th of its feed, at `at`.
    fn told(n: i64, at: i64, event: Event) -> live::WatchLiveEventsResponse {
        live::WatchLiveEventsResponse {
            cursor: Some(lianyu_proto::common::v1::FeedCursor { sequence: n }),
            event: Some(event),
            event_time: lianyu_kit::time::timestamp(at),
        }
    }

    fn order(member: &str, through: &str, at: i64, n: i64) -> live::WatchLiveEventsResponse {
        let order = live::Order {
            name: format!("sessions/s1/orders/o{n}"),
            member: format!("meshMembers/{member}"),
            placed_by: format!("partners/{through}"),
            state: live::OrderState::Placed as i32,
            amount: Some(lianyu_proto::common::v1::Money {
                currency_code: "CNY".into(),
                minor_units: 1_000,
            }),
            ..Default::default()
        };
        told(n, at, Event::Order(order))
    }

    fn joined(member: &str, through: &str, at: i64, n: i64) -> live::WatchLiveEventsResponse {
        let joined = live::ViewerJoined {
            session: "sessions/s1".into(),
            member: format!("meshMembers/{member}"),
            partner: format!("partners/{through}"),
        };
        told(n, at, Event::ViewerJoined(joined))
    }

    /// Live's and entitlements' feeds run behind identity's, each at its own pace: an order,
    /// a join or a claim may be told after identity's feed erased its member at the partner
    /// it came through, or merged the member into another. What was erased stays erased — no
    /// fact for segments, no funnel event — while the campaign's totals, which name no one,
    /// still count the sale; what the member did there after the erasure (enrolled again)
    /// counts; and a merged-away member's late events count for the survivor.
    #[tokio::test]
    async fn events_told_late_never_bring_back_an_erased_member_or_a_merged_one() {
        let (_database, db) = store::test_database("comarketing_told_late").await;
        let campaign = Campaign {
            id: "c1".into(),
            display_name: "Double 12".into(),
            partners: vec![PartnerId::new("brand"), PartnerId::new("mall")],
            budget: Vec::new(),
            start_millis: AT,
            end_millis: AT + 86_400_000,
            state: crate::domain::CampaignState::Running,
            accepted_by: vec![PartnerId::new("brand"), PartnerId::new("mall")],
            alliance: String::new(),
            channels: Vec::new(),
            benefits: vec!["b1".into()],
            sessions: vec!["s1".into()],
            spent: 0,
            exhausted_at: None,
            created_at: AT,
            updated_at: AT,
        };
        store::insert_campaign(&db, &campaign).await.unwrap();
        let mut merged = event(MeshEventKind::MembersMerged, "m3", "brand", AT + 10);
        merged.into_mesh_member = "meshMembers/m2".into();
        let mesh = vec![
            event(MeshEventKind::MemberEnrolled, "m1", "brand", AT),
            event(MeshEventKind::MemberEnrolled, "m1", "mall", AT),
            event(MeshEventKind::MemberEnrolled, "m2", "brand", AT),
            event(MeshEventKind::MemberEnrolled, "m3", "brand", AT),
            event(MeshEventKind::MemberErased, "m1", "mall", AT + 10),
            merged,
        ];
        let txn = db.begin().await.unwrap();
        on_mesh_events(&txn, &mesh).await.unwrap();
        txn.commit().await.unwrap();

        // Told after identity's feed, though they happened before the erasure and the merge.
        let hosts = live::WatchLiveEventsResponse {
            event: Some(Event::Session(live::Session {
                name: "sessions/s1".into(),
                hosts: vec!["partners/brand".into(), "partners/mall".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        let live_events = vec![
            hosts,
            joined("m1", "mall", AT + 4, 1),
            order("m1", "mall", AT + 5, 2),
            order("m1", "brand", AT + 5, 3),
            order("m3", "brand", AT + 6, 4),
            // After the erasure: she came back through the mall's app, enrolled again.
            joined("m1", "mall", AT + 20, 5),
        ];
        let txn = db.begin().await.unwrap();
        on_live(&txn, live_events).await.unwrap();
        txn.commit().await.unwrap();
        let grant = |member: &str, through: &str, at: i64| ledger::WatchLedgerResponse {
            transaction: Some(ledger::LedgerTransaction {
                name: format!("ledger/{member}-{at}"),
                transaction: "GRANT".into(),
                benefit: "benefits/b1".into(),
                issuer: "partners/mall".into(),
                funder: "partners/mall".into(),
                mesh_member: format!("meshMembers/{member}"),
                partner: format!("partners/{through}"),
                post_time: lianyu_kit::time::timestamp(at),
                ..Default::default()
            }),
            ..Default::default()
        };
        let txn = db.begin().await.unwrap();
        on_ledger(
            &txn,
            vec![grant("m1", "mall", AT + 6), grant("m3", "brand", AT + 7)],
        )
        .await
        .unwrap();
        txn.commit().await.unwrap();

        let ordered = Condition::OrderedInSession("s1".into());
        let joined_s1 = Condition::JoinedSession("s1".into());
        let claimed = Condition::ClaimedBenefit("b1".into());
        // The mall's records: nothing of m1 from before its erasure; the join after it.
        assert!(members_with(&db, "mall", &ordered).await.is_empty());
        assert!(members_with(&db, "mall", &claimed).await.is_empty());
        assert_eq!(members_with(&db, "mall", &joined_s1).await, ["m1"]);
        // The brand's records: m1's order there (erased only at the mall), and m3's order and
        // claim as m2's, the survivor's.
        assert_eq!(members_with(&db, "brand", &ordered).await, ["m1", "m2"]);
        assert_eq!(members_with(&db, "brand", &claimed).await, ["m2"]);

        // The funnel: no event of m1 through the mall before the erasure.
        let numbers = store::member_numbers(&db, &["m1", "m2", "m3"], AT)
            .await
            .unwrap();
        let events = store::campaign_events(&db, "c1", 0, i64::MAX)
            .await
            .unwrap();
        let mut seen: Vec<(u32, String, i64)> = events
            .iter()
            .map(|(n, e, _)| (*n, e.partner.clone(), e.at))
            .collect();
        seen.sort_unstable();
        let n = |m: &str| u32::try_from(numbers[m]).unwrap();
        let mut expected = vec![
            (n("m1"), "brand".to_owned(), AT + 5),
            (n("m1"), "mall".to_owned(), AT + 20),
            (n("m2"), "brand".to_owned(), AT + 6),
            (n("m2"), "brand".to_owned(), AT + 7),
        ];
        expected.sort_unstable();
        assert_eq!(seen, expected);
        // The campaign's totals still count every order, the erased buyer's too.
        let tallies: HashMap<String, i64> = store::tallies(&db, "c1")
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(tallies.get("orders").copied(), Some(3));
        assert_eq!(tallies.get("gmv").copied(), Some(3_000));
        assert_eq!(tallies.get("claims").copied(), Some(2));
    }
}
