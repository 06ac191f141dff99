//! Redemption at a till: reserve then confirm or cancel, or redeem in one call; holds that
//! nobody ended expire.

use std::time::Duration;

use lianyu_kit::{
    KitError,
    call::{Call, unary},
    ids::PartnerId,
    money::Money,
    names,
    time::{now_millis, timestamp},
    writes::Writes,
};
use lianyu_proto::{common::v1 as common, entitlements::v1 as pb};
use sea_orm::TransactionTrait;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{Api, Movement, money};
use crate::{
    domain::{Benefit, EntitlementsError},
    store::{self, ItemRow, ItemState, RedemptionRow, RedemptionState},
};

/// The default and the longest hold of a reservation.
const DEFAULT_HOLD_SECONDS: i32 = 300;
const MAX_HOLD_SECONDS: i32 = 3600;
/// How often expired holds are looked for, and how many are released per transaction.
const EXPIRY_PERIOD: Duration = Duration::from_secs(1);
const EXPIRY_BATCH: u64 = 200;

/// A till's request, parsed.
struct Till<'a> {
    scoped: &'a str,
    item_id: &'a str,
    store: String,
    order: Money,
    /// The order's product category; empty when not given.
    category: &'a str,
    /// The till's reference of the order; empty when not given.
    order_reference: &'a str,
}

fn till<'a>(
    call: &Call,
    wallet_item: &'a str,
    store: &str,
    order: Option<&common::Money>,
    (category, order_reference): (&'a str, &'a str),
) -> Result<Till<'a>, KitError> {
    let mut v = lianyu_kit::validate::Violations::default();
    let ids = v.check(
        "wallet_item",
        names::parse::<2>(wallet_item, "members/{member}/walletItems/{item}"),
    );
    let store = store_of(call, store, &mut v)?;
    v.check(
        "order_reference",
        lianyu_kit::validate::text(order_reference, false, 128),
    );
    let order = match order {
        None => {
            v.add("order_amount", "required");
            None
        }
        Some(m) => v.check(
            "order_amount",
            Money::positive(&m.currency_code, m.minor_units),
        ),
    };
    v.finish()?;
    match (ids, store, order) {
        (Some([scoped, item_id]), Some(store), Some(order)) => Ok(Till {
            scoped,
            item_id,
            store,
            order,
            category,
            order_reference,
        }),
        _ => Err(KitError::invalid("wallet_item", "required")),
    }
}

/// A till's store: "partners/{partner}/stores/{store}" of the caller; a store token's own
/// store when empty, and no other (PERMISSION_DENIED / STORE_MISMATCH).
pub(super) fn store_of(
    call: &Call,
    store: &str,
    v: &mut lianyu_kit::validate::Violations,
) -> Result<Option<String>, KitError> {
    Ok(match (&call.who.store, store) {
        (Some(own), "") => Some(own.clone()),
        (own, given) => match names::parse::<2>(given, "partners/{partner}/stores/{store}") {
            Ok([partner, _]) if partner != call.partner_id() => {
                v.add("store", "one of the caller's own stores");
                None
            }
            Ok(_) if own.as_deref().is_some_and(|o| o != given) => {
                return Err(KitError::Denied(
                    "STORE_MISMATCH",
                    "a store token redeems at its own store only",
                ));
            }
            Ok(_) => Some(given.to_owned()),
            Err(e) => {
                v.add("store", e);
                None
            }
        },
    })
}

fn redemption_proto(scoped: &str, r: &RedemptionRow) -> pb::Redemption {
    pb::Redemption {
        name: format!("redemptions/{}", r.id),
        wallet_item: format!("members/{scoped}/walletItems/{}", r.item_id),
        store: r.store_id.clone(),
        order_amount: money(&r.currency, r.order_minor_units),
        discount: money(&r.currency, r.discount_minor_units),
        state: match r.state {
            RedemptionState::Reserved => pb::RedemptionState::Reserved,
            RedemptionState::Confirmed => pb::RedemptionState::Confirmed,
            RedemptionState::Cancelled => pb::RedemptionState::Cancelled,
            RedemptionState::Refunded => pb::RedemptionState::Refunded,
        } as i32,
        expire_time: timestamp(r.hold_until),
        refunded_amount: money(&r.currency, r.refunded_minor_units),
    }
}

/// Why a unit could not be taken for a till: it is used, held, or past its expiry (or, held
/// and let go meanwhile, a conflict the kit retries).
fn unavailable(item: &ItemRow, now: i64) -> EntitlementsError {
    let (reason, message) = match item.state {
        ItemState::Redeemed | ItemState::Refunded => {
            ("ALREADY_REDEEMED", "this unit has already been redeemed")
        }
        ItemState::Reserved => ("ITEM_RESERVED", "this unit is held by another reservation"),
        ItemState::Closed => (
            "ITEM_CLOSED",
            "the member's wallet was closed at its partner",
        ),
        ItemState::Expired => ("ITEM_EXPIRED", "this unit has expired"),
        ItemState::Available if item.expires_at <= now => ("ITEM_EXPIRED", "this unit has expired"),
        // Held and let go again between the read and the take: the kit runs the call again
        // on the unit as it is now, rather than asking the till to.
        ItemState::Available => {
            return KitError::Storage(lianyu_kit::storage::StorageError::Conflict(
                "the unit changed meanwhile".into(),
            ))
            .into();
        }
    };
    KitError::Precondition(reason, message.into()).into()
}

impl Api {
    /// The caller's redemption `name` (a store token: only its store's), its unit, and the
    /// caller's own id of the member.
    async fn own_redemption(
        &self,
        call: &Call,
        name: &str,
    ) -> Result<
        (
            RedemptionRow,
            PartnerId,
            ItemRow,
            lianyu_kit::ids::ScopedMemberId,
        ),
        EntitlementsError,
    > {
        let [id] = names::parse(name, "redemptions/{redemption}")
            .map_err(|e| KitError::invalid("name", e))?;
        let me = PartnerId::new(call.partner_id());
        let found = store::redemption(&self.read, id)
            .await?
            .filter(|r| r.partner_id == me.as_str())
            .filter(|r| call.who.store.as_deref().is_none_or(|s| s == r.store_id))
            .ok_or(EntitlementsError::RedemptionNotFound)?;
        let item = store::item(&self.read, &found.item_id)
            .await?
            .ok_or(EntitlementsError::RedemptionNotFound)?;
        let scoped = self
            .directory()?
            .scoped_ids(
                me.as_str(),
                &[lianyu_kit::ids::MeshMemberId::new(item.member.clone())],
            )
            .await?
            .pop()
            .flatten()
            .ok_or(EntitlementsError::RedemptionNotFound)?;
        Ok((found, me, item, scoped))
    }

    /// Refunds `amount` (the rest when `None`) of the caller's confirmed redemption `name`,
    /// reversing the same share of its discount.
    async fn refund(
        &self,
        call: &Call,
        request_id: &str,
        request: &impl prost::Message,
        name: &str,
        amount: Option<&common::Money>,
    ) -> Result<pb::Redemption, EntitlementsError> {
        let (found, me, item, scoped) = self.own_redemption(call, name).await?;
        let id = found.id;
        let asked = match amount {
            None => None,
            Some(m) => Some(
                Money::positive(&m.currency_code, m.minor_units)
                    .map_err(|e| KitError::invalid("amount", e))?,
            ),
        };
        // The benefit's lane: a refund may give money budget back to its row.
        self.hot
            .keyed(&item.benefit_id)
            .run_writing_about(
                call,
                request_id,
                request,
                item.member.as_str(),
                async |txn, writes| {
                    let now = now_millis();
                    let current = store::redemption(txn, &id)
                        .await?
                        .ok_or(EntitlementsError::RedemptionNotFound)?;
                    if current.state != RedemptionState::Confirmed {
                        return Err(KitError::WrongState(
                            "REDEMPTION_STATE",
                            state_name(&current),
                            "only a CONFIRMED redemption is refunded".into(),
                        )
                        .into());
                    }
                    let left = current.order_minor_units - current.refunded_minor_units;
                    let now_refunded = match &asked {
                        None => left,
                        Some(m) if m.currency() != current.currency => {
                            return Err(KitError::Precondition(
                                "CURRENCY_MISMATCH",
                                format!("the order was paid in {}", current.currency),
                            )
                            .into());
                        }
                        Some(m) if m.minor_units() > left => {
                            return Err(KitError::Precondition(
                                "REFUND_EXCEEDS_ORDER",
                                format!(
                                    "at most {left} minor units of the order are left to refund"
                                ),
                            )
                            .into());
                        }
                        Some(m) => m.minor_units(),
                    };
                    let after = current.refunded_minor_units + now_refunded;
                    let full = after == current.order_minor_units;
                    if !store::record_refund(txn, &id, current.refunded_minor_units, after, full)
                        .await?
                    {
                        return Err(KitError::Storage(
                            lianyu_kit::storage::StorageError::Conflict(
                                "refunded concurrently".into(),
                            ),
                        )
                        .into());
                    }
                    if full {
                        store::move_item(
                            txn,
                            &item.id,
                            ItemState::Redeemed,
                            ItemState::Refunded,
                            None,
                        )
                        .await?;
                    }
                    // The discount refunded up to a refunded order amount, and the funder's part
                    // of it: both cumulative, so the parts of any sequence of refunds add up to
                    // exactly what the redemption posted.
                    let upto = |refunded: i64| {
                        crate::domain::refund_share(
                            current.discount_minor_units,
                            current.order_minor_units,
                            0,
                            refunded,
                        )
                    };
                    let (was, is) = (upto(current.refunded_minor_units), upto(after));
                    let benefit = store::benefit_by_id(txn, &item.benefit_id)
                        .await?
                        .ok_or(EntitlementsError::RedemptionNotFound)?;
                    let funder_share = benefit.funder_part(&me, is) - benefit.funder_part(&me, was);
                    if current.budget_spent > 0 {
                        store::return_budget(txn, &benefit.id, funder_share).await?;
                    }
                    let share =
                        Money::new(&current.currency, is - was).map_err(KitError::Internal)?;
                    let postings = benefit.refund_postings(&me, &share, funder_share);
                    self.post(
                        txn,
                        writes,
                        Movement {
                            kind: "REFUND",
                            benefit: &benefit,
                            redemption: Some(&id),
                            member: Some(&item.member),
                            through: Some(&me),
                        },
                        &postings,
                        now,
                    )
                    .await?;
                    let mut row = current;
                    row.refunded_minor_units = after;
                    if full {
                        row.state = RedemptionState::Refunded;
                    }
                    Ok(redemption_proto(scoped.as_str(), &row))
                },
            )
            .await
    }

    /// Reserve (`hold` seconds) or redeem at once (`None`): every check, then the unit moved
    /// out of AVAILABLE by one conditional update, so among any number of concurrent tills
    /// exactly one wins it.
    async fn take_at_till(
        &self,
        call: &Call,
        request_id: &str,
        request: &impl prost::Message,
        t: Till<'_>,
        hold: Option<i32>,
    ) -> Result<pb::Redemption, EntitlementsError> {
        let me = PartnerId::new(call.partner_id());
        // Only at a store identity knows and its partner keeps open.
        self.directory()?.open_store(&t.store).await?;
        let mesh = self.mesh_id(me.as_str(), t.scoped).await?;
        let item = store::item(&self.read, t.item_id)
            .await?
            .filter(|i| i.member == mesh.as_str())
            .ok_or(EntitlementsError::WalletItemNotFound)?;
        let benefit = self
            .benefit_now(&item.benefit_id)
            .await?
            .ok_or(EntitlementsError::WalletItemNotFound)?;
        benefit.honoured_at(&me, &t.store, t.category)?;
        let group = benefit.stacking_group.as_str();
        if !group.is_empty() && t.order_reference.is_empty() {
            return Err(KitError::invalid(
                "order_reference",
                "required: the benefit does not stack with others of its group",
            )
            .into());
        }
        if !self
            .may_redeem(me.as_str(), &mesh, &item.holder, me.as_str())
            .await?
        {
            return Err(KitError::Denied(
                "CONSENT_REQUIRED",
                "the member has not consented to benefit redemption here",
            )
            .into());
        }
        let discount = benefit.discount(&t.order)?;
        // A money budget's row is the benefit's lane's; otherwise only the member's rows are
        // written.
        let lane = if benefit.budget_value.is_some() {
            benefit.id.as_str()
        } else {
            mesh.as_str()
        };
        self.hot
            .keyed(lane)
            .run_writing_about(
                call,
                request_id,
                request,
                mesh.as_str(),
                async |txn, writes| {
                    let now = now_millis();
                    let to = if hold.is_some() {
                        ItemState::Reserved
                    } else {
                        ItemState::Redeemed
                    };
                    if !group.is_empty()
                        && store::stacked(txn, me.as_str(), t.order_reference, group)
                            .await?
                            .is_some()
                    {
                        return Err(KitError::Precondition(
                            "STACKING_CONFLICT",
                            format!("the order already has a benefit of stacking group {group}"),
                        )
                        .into());
                    }
                    if !store::move_item(txn, &item.id, ItemState::Available, to, Some(now)).await?
                    {
                        let current = store::item(txn, &item.id)
                            .await?
                            .ok_or(EntitlementsError::WalletItemNotFound)?;
                        return Err(unavailable(&current, now));
                    }
                    let row = RedemptionRow {
                        id: uuid::Uuid::now_v7().simple().to_string(),
                        item_id: item.id.clone(),
                        partner_id: me.to_string(),
                        store_id: t.store.clone(),
                        currency: t.order.currency().to_owned(),
                        order_minor_units: t.order.minor_units(),
                        discount_minor_units: discount.minor_units(),
                        budget_spent: 0,
                        refunded_minor_units: 0,
                        state: if hold.is_some() {
                            RedemptionState::Reserved
                        } else {
                            RedemptionState::Confirmed
                        },
                        hold_until: hold.map_or(now, |s| now + i64::from(s) * 1000),
                        created_at: now,
                    };
                    let mut row = row;
                    if benefit.budget_value.is_some() {
                        // The funder's part of the discount comes out of the money budget.
                        let part = benefit.funder_part(&me, discount.minor_units());
                        if !store::spend_budget(txn, &benefit.id, part).await? {
                            return Err(KitError::Precondition(
                                "BUDGET_EXHAUSTED",
                                "this discount would pass the benefit's money budget".into(),
                            )
                            .into());
                        }
                        row.budget_spent = part;
                    }
                    store::insert_redemption(txn, &row).await?;
                    if !group.is_empty() {
                        store::stack(txn, me.as_str(), t.order_reference, group, &row.id).await?;
                    }
                    if hold.is_none() {
                        self.post_redemption(txn, writes, &benefit, &row, &item.member, now)
                            .await?;
                    }
                    Ok(redemption_proto(t.scoped, &row))
                },
            )
            .await
    }

    /// Confirms or cancels the caller's reservation `name`: exactly one of confirm, cancel
    /// and expiry ends a hold, by one conditional update.
    async fn end_reservation(
        &self,
        call: &Call,
        request_id: &str,
        request: &impl prost::Message,
        name: &str,
        to: RedemptionState,
    ) -> Result<pb::Redemption, EntitlementsError> {
        let (found, _, item, scoped) = self.own_redemption(call, name).await?;
        let id = found.id.as_str();
        // A cancel gives what the hold took from a money budget back to the benefit's row:
        // the benefit's lane. A confirm writes only the member's rows.
        let lane = if to == RedemptionState::Cancelled {
            item.benefit_id.as_str()
        } else {
            item.member.as_str()
        };
        self.hot
            .keyed(lane)
            .run_writing_about(
                call,
                request_id,
                request,
                item.member.as_str(),
                async |txn, writes| {
                    let now = now_millis();
                    let current = store::redemption(txn, id)
                        .await?
                        .ok_or(EntitlementsError::RedemptionNotFound)?;
                    if current.state != RedemptionState::Reserved {
                        return Err(wrong_state(&current).into());
                    }
                    if to == RedemptionState::Confirmed && current.hold_until <= now {
                        return Err(KitError::Precondition(
                            "HOLD_EXPIRED",
                            "the reservation's hold has expired; reserve again".into(),
                        )
                        .into());
                    }
                    let before = (to == RedemptionState::Confirmed).then_some(now);
                    if !store::end_hold(txn, id, to, before).await? {
                        let now_state = store::redemption(txn, id)
                            .await?
                            .ok_or(EntitlementsError::RedemptionNotFound)?;
                        return Err(wrong_state(&now_state).into());
                    }
                    let item_to = if to == RedemptionState::Confirmed {
                        ItemState::Redeemed
                    } else {
                        ItemState::Available
                    };
                    store::move_item(txn, &current.item_id, ItemState::Reserved, item_to, None)
                        .await?;
                    if to == RedemptionState::Confirmed {
                        let benefit = store::benefit_by_id(txn, &item.benefit_id)
                            .await?
                            .ok_or(EntitlementsError::RedemptionNotFound)?;
                        self.post_redemption(txn, writes, &benefit, &current, &item.member, now)
                            .await?;
                    }
                    let mut row = current;
                    row.state = to;
                    Ok(redemption_proto(scoped.as_str(), &row))
                },
            )
            .await
    }
}

fn state_name(r: &RedemptionRow) -> &'static str {
    match r.state {
        RedemptionState::Reserved => "RESERVED",
        RedemptionState::Confirmed => "CONFIRMED",
        RedemptionState::Cancelled => "CANCELLED",
        RedemptionState::Refunded => "REFUNDED",
    }
}

fn wrong_state(r: &RedemptionRow) -> KitError {
    KitError::WrongState(
        "REDEMPTION_STATE",
        state_name(r),
        "only a RESERVED redemption is confirmed or cancelled".into(),
    )
}

impl Api {
    /// Posts redemption `r` of `member`'s unit of `benefit`, at the partner that honoured it
    /// (the redemption's).
    async fn post_redemption(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        writes: &mut Writes,
        benefit: &Benefit,
        r: &RedemptionRow,
        member: &str,
        now: i64,
    ) -> Result<(), KitError> {
        let honourer = &PartnerId::new(r.partner_id.as_str());
        let discount =
            Money::new(&r.currency, r.discount_minor_units).map_err(KitError::Internal)?;
        let postings = benefit.redemption_postings(honourer, &discount);
        self.post(
            txn,
            writes,
            Movement {
                kind: "REDEMPTION",
                benefit,
                redemption: Some(&r.id),
                member: Some(member),
                through: Some(honourer),
            },
            &postings,
            now,
        )
        .await
        .map(drop)
    }
}

/// Releases holds whose time ran out, until `stopping`: each in its own conditional update,
/// so a confirm or cancel that ended it first wins.
pub(super) async fn expire_holds(api: Api, stopping: CancellationToken) {
    lianyu_kit::jobs::periodic(
        "entitlements.hold_expiry",
        EXPIRY_PERIOD,
        true,
        None,
        stopping,
        || {
            let api = api.clone();
            async move {
                let due = store::expired_holds(&api.read, now_millis(), EXPIRY_BATCH).await?;
                let mut released = 0;
                for hold in due {
                    let txn = api
                        .db
                        .begin()
                        .await
                        .map_err(lianyu_kit::storage::StorageError::from)?;
                    if store::end_hold(&txn, &hold.id, RedemptionState::Cancelled, None).await? {
                        store::move_item(
                            &txn,
                            &hold.item_id,
                            ItemState::Reserved,
                            ItemState::Available,
                            None,
                        )
                        .await?;
                        released += 1;
                    }
                    txn.commit()
                        .await
                        .map_err(lianyu_kit::storage::StorageError::from)?;
                }
                released += expire_units(&api).await?;
                Ok::<u64, KitError>(released)
            }
        },
    )
    .await;
}

/// Units past their expiry unused become EXPIRED, each by one conditional update (a till that
/// took it first wins), and the liability booked at their grant is released (EXPIRY).
async fn expire_units(api: &Api) -> Result<u64, KitError> {
    let now = now_millis();
    let due = store::expired_units(&api.read, now, EXPIRY_BATCH).await?;
    let mut expired = 0;
    let mut benefits: std::collections::HashMap<String, Benefit> = Default::default();
    for item in due {
        let benefit = match benefits.get(&item.benefit_id) {
            Some(b) => b.clone(),
            None => {
                let Some(b) = store::benefit_by_id(&api.read, &item.benefit_id).await? else {
                    continue;
                };
                benefits.insert(b.id.clone(), b.clone());
                b
            }
        };
        let txn = api
            .db
            .begin()
            .await
            .map_err(lianyu_kit::storage::StorageError::from)?;
        if store::expire_unit(&txn, &item.id, now).await? {
            let mut writes = Writes::new();
            api.post(
                &txn,
                &mut writes,
                Movement {
                    kind: "EXPIRY",
                    benefit: &benefit,
                    redemption: None,
                    member: Some(&item.member),
                    through: None,
                },
                &benefit.expiry_postings(),
                now,
            )
            .await?;
            writes.send(&txn).await?;
            expired += 1;
        }
        txn.commit()
            .await
            .map_err(lianyu_kit::storage::StorageError::from)?;
    }
    Ok(expired)
}

#[tonic::async_trait]
impl pb::redemption_service_server::RedemptionService for Api {
    async fn reserve_redemption(
        &self,
        request: Request<pb::ReserveRedemptionRequest>,
    ) -> Result<Response<pb::Redemption>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, async {
                    let hold = match r.hold_seconds {
                        0 => DEFAULT_HOLD_SECONDS,
                        s if (1..=MAX_HOLD_SECONDS).contains(&s) => s,
                        _ => {
                            return Err(
                                KitError::invalid("hold_seconds", "1 to 3600 (0: 300)").into()
                            );
                        }
                    };
                    let t = till(
                        &call,
                        &r.wallet_item,
                        &r.store,
                        r.order_amount.as_ref(),
                        (&r.category, &r.order_reference),
                    )?;
                    self.take_at_till(&call, &r.request_id, &r, t, Some(hold))
                        .await
                })
                .await
        })
        .await
    }

    async fn redeem(
        &self,
        request: Request<pb::RedeemRequest>,
    ) -> Result<Response<pb::Redemption>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, async {
                    let t = till(
                        &call,
                        &r.wallet_item,
                        &r.store,
                        r.order_amount.as_ref(),
                        (&r.category, &r.order_reference),
                    )?;
                    self.take_at_till(&call, &r.request_id, &r, t, None).await
                })
                .await
        })
        .await
    }

    async fn confirm_redemption(
        &self,
        request: Request<pb::ConfirmRedemptionRequest>,
    ) -> Result<Response<pb::Redemption>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, async {
                    self.end_reservation(
                        &call,
                        &r.request_id,
                        &r,
                        &r.name,
                        RedemptionState::Confirmed,
                    )
                    .await
                })
                .await
        })
        .await
    }

    async fn get_redemption(
        &self,
        request: Request<pb::GetRedemptionRequest>,
    ) -> Result<Response<pb::Redemption>, Status> {
        unary(request, async |call, r| {
            let (found, _, _, scoped) = self.own_redemption(&call, &r.name).await?;
            Ok::<_, EntitlementsError>(redemption_proto(scoped.as_str(), &found))
        })
        .await
    }

    async fn refund_redemption(
        &self,
        request: Request<pb::RefundRedemptionRequest>,
    ) -> Result<Response<pb::Redemption>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, async {
                    self.refund(&call, &r.request_id, &r, &r.name, r.amount.as_ref())
                        .await
                })
                .await
        })
        .await
    }

    async fn spend_balance(
        &self,
        request: Request<pb::SpendBalanceRequest>,
    ) -> Result<Response<pb::BalanceSpend>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, self.spend_balance(&call, &r))
                .await
        })
        .await
    }

    async fn refund_balance_spend(
        &self,
        request: Request<pb::RefundBalanceSpendRequest>,
    ) -> Result<Response<pb::BalanceSpend>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, async {
                    self.refund_balance_spend(&call, &r).await
                })
                .await
        })
        .await
    }

    async fn cancel_reservation(
        &self,
        request: Request<pb::CancelReservationRequest>,
    ) -> Result<Response<pb::Redemption>, Status> {
        unary(request, async |call, r| {
            self.hot
                .replayable(&call, &r.request_id, &r, async {
                    self.end_reservation(
                        &call,
                        &r.request_id,
                        &r,
                        &r.name,
                        RedemptionState::Cancelled,
                    )
                    .await
                })
                .await
        })
        .await
    }
}
