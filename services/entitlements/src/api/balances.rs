//! Points and stored value: balances read, topped up, earned (pending until a purchase's
//! return window closes), reversed on a return, and spent at a till. Each change is one
//! conditional update of the member's account and a balanced ledger transaction in the same
//! database transaction.

use lianyu_kit::{
    KitError,
    call::Call,
    ids::{MeshMemberId, PartnerId},
    money::Money,
    names,
    storage::StorageError,
    time::{now_millis, timestamp},
    validate::{Violations, text},
};
use lianyu_proto::entitlements::v1 as pb;

use super::{Api, Movement, money, redemptions::store_of, wallet::member};
use crate::{
    domain::{self, BalanceKind, Benefit, EntitlementsError},
    store::{self, AccountRow, LotRow, LotState, SpendRow},
};

/// The default and the longest return window of a purchase that earned points.
const DEFAULT_RETURN_DAYS: i32 = 7;
const MAX_RETURN_DAYS: i32 = 365;
const DAY_MILLIS: i64 = 86_400_000;

/// A balance as the caller sees it at `now`: points whose window closed count as available
/// even before a write moves them.
fn balance_proto(
    benefit: &Benefit,
    scoped: &str,
    account: Option<&AccountRow>,
    lots: &[LotRow],
    now: i64,
) -> pb::Balance {
    let available = account.map_or(0, |a| a.available);
    let (due, pending): (Vec<&LotRow>, Vec<&LotRow>) =
        lots.iter().partition(|l| l.release_at <= now);
    let mut out = pb::Balance {
        benefit: format!("benefits/{}", benefit.id),
        member: format!("members/{scoped}"),
        closed: account.is_some_and(|a| a.closed),
        ..Default::default()
    };
    match benefit.kind {
        domain::BenefitKind::StoredValue => {
            out.stored_value = benefit.currency().and_then(|c| money(c, available));
        }
        _ => {
            out.points_available = available + due.iter().map(|l| l.points).sum::<i64>();
            out.points_pending = pending.iter().map(|l| l.points).sum();
            out.next_release_time = pending
                .iter()
                .map(|l| l.release_at)
                .min()
                .and_then(timestamp);
        }
    }
    out
}

fn earning_proto(scoped: &str, lot: &LotRow, now: i64) -> pb::PointsEarning {
    pb::PointsEarning {
        name: format!("pointsEarnings/{}", lot.id),
        benefit: format!("benefits/{}", lot.benefit_id),
        member: format!("members/{scoped}"),
        points: lot.points,
        state: earning_state(lot, now) as i32,
        release_time: timestamp(lot.release_at),
        order_reference: lot.order_reference.clone(),
    }
}

fn earning_state(lot: &LotRow, now: i64) -> pb::PointsEarningState {
    match lot.state {
        LotState::Pending if lot.release_at > now => pb::PointsEarningState::Pending,
        LotState::Pending | LotState::Released => pb::PointsEarningState::Available,
        LotState::Reversed => pb::PointsEarningState::Reversed,
    }
}

fn closed() -> EntitlementsError {
    KitError::Precondition(
        "ACCOUNT_CLOSED",
        "the member's account was closed at the partner it was opened through".into(),
    )
    .into()
}

/// The account was opened through another partner between the check and the write: run
/// again, and the consent check sees it.
fn opened_elsewhere() -> EntitlementsError {
    KitError::Storage(StorageError::Conflict(
        "the account was opened through another partner concurrently".into(),
    ))
    .into()
}

/// A balance request's common part, checked before any write.
struct Target {
    me: PartnerId,
    scoped: String,
    mesh: MeshMemberId,
    benefit: Benefit,
    kind: BalanceKind,
    /// The account as read before the write; `None` when none is open yet.
    account: Option<AccountRow>,
}

impl Target {
    /// A ledger movement of this target's benefit by its member, through the caller.
    fn movement(&self, kind: &'static str) -> Movement<'_> {
        Movement {
            kind,
            benefit: &self.benefit,
            redemption: None,
            member: Some(self.mesh.as_str()),
            through: Some(&self.me),
        }
    }
}

impl Api {
    /// The caller's member, the benefit (of kind `want`, or any balance), and the member's
    /// consent to the caller when the account was opened through another partner. `till`:
    /// the caller must honour the benefit.
    async fn target(
        &self,
        call: &Call,
        member_name: &str,
        benefit_name: &str,
        want: Option<BalanceKind>,
        till: bool,
    ) -> Result<Target, EntitlementsError> {
        let me = PartnerId::new(call.partner_id());
        let mut v = Violations::default();
        let scoped = v.check(
            "member",
            member(member_name, "member").map_err(|e| e.to_string()),
        );
        if names::parse::<1>(benefit_name, "benefits/{benefit}").is_err() {
            v.add("benefit", "benefits/{benefit}");
        }
        v.finish()?;
        let Some(scoped) = scoped else {
            return Err(KitError::invalid("member", "required").into());
        };
        let benefit = self
            .party_benefit(&self.read, me.as_str(), benefit_name, "benefit")
            .await?;
        let kind = match want {
            Some(want) => benefit.balance_of(want)?,
            None => benefit.balance()?,
        };
        if till && !benefit.honoured_by.contains(&me) {
            return Err(KitError::Denied(
                "NOT_HONOURED_HERE",
                "the caller does not honour this benefit",
            )
            .into());
        }
        let mesh = self.mesh_id(me.as_str(), scoped).await?;
        let account = store::account(&self.read, &benefit.id, mesh.as_str()).await?;
        if let Some(a) = &account {
            self.consented(&me, &mesh, &a.holder).await?;
        }
        Ok(Target {
            me,
            scoped: scoped.to_owned(),
            mesh,
            benefit,
            kind,
            account,
        })
    }

    /// PERMISSION_DENIED / CONSENT_REQUIRED unless the member, whose account `holder`
    /// opened, consented to the caller `me` for benefit redemption.
    async fn consented(
        &self,
        me: &PartnerId,
        mesh: &MeshMemberId,
        holder: &str,
    ) -> Result<(), EntitlementsError> {
        if self
            .may_redeem(me.as_str(), mesh, holder, me.as_str())
            .await?
        {
            return Ok(());
        }
        Err(KitError::Denied(
            "CONSENT_REQUIRED",
            "the member has not consented to benefit redemption here",
        )
        .into())
    }

    /// Opens (or finds) the member's account for a write: ACCOUNT_CLOSED when closed, and a
    /// retry when another partner opened it since the consent check.
    async fn writable_account(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        t: &Target,
        now: i64,
    ) -> Result<AccountRow, EntitlementsError> {
        let account =
            store::open_account(txn, &t.benefit.id, t.mesh.as_str(), t.me.as_str(), now).await?;
        if account.closed {
            return Err(closed());
        }
        let checked = t.account.as_ref().map(|a| a.holder.as_str());
        if account.holder != t.me.as_str() && checked != Some(account.holder.as_str()) {
            return Err(opened_elsewhere());
        }
        Ok(account)
    }

    /// The balance after a write, read in its transaction.
    async fn balance_now(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        t: &Target,
        now: i64,
    ) -> Result<pb::Balance, EntitlementsError> {
        let account = store::account(txn, &t.benefit.id, t.mesh.as_str()).await?;
        let lots = store::pending_lots(txn, &t.benefit.id, t.mesh.as_str()).await?;
        Ok(balance_proto(
            &t.benefit,
            &t.scoped,
            account.as_ref(),
            &lots,
            now,
        ))
    }

    pub(super) async fn get_balance_of(
        &self,
        call: &Call,
        r: &pb::GetBalanceRequest,
    ) -> Result<pb::Balance, EntitlementsError> {
        let t = self
            .target(call, &r.member, &r.benefit, None, false)
            .await?;
        let lots = match t.kind {
            BalanceKind::Points => {
                store::pending_lots(&self.read, &t.benefit.id, t.mesh.as_str()).await?
            }
            BalanceKind::StoredValue => Vec::new(),
        };
        Ok(balance_proto(
            &t.benefit,
            &t.scoped,
            t.account.as_ref(),
            &lots,
            now_millis(),
        ))
    }

    pub(super) async fn top_up(
        &self,
        call: &Call,
        r: &pb::TopUpRequest,
    ) -> Result<pb::Balance, EntitlementsError> {
        let mut v = Violations::default();
        let paid = match &r.amount {
            None => {
                v.add("amount", "required");
                None
            }
            Some(m) => v.check("amount", Money::positive(&m.currency_code, m.minor_units)),
        };
        v.check("payment_reference", text(&r.payment_reference, true, 128));
        v.finish()?;
        let Some(paid) = paid else {
            return Err(KitError::invalid("amount", "required").into());
        };
        let t = self
            .target(
                call,
                &r.member,
                &r.benefit,
                Some(BalanceKind::StoredValue),
                true,
            )
            .await?;
        t.benefit.same_currency(&paid)?;
        self.mutations
            .run_writing_about(
                call,
                &r.request_id,
                r,
                t.mesh.as_str(),
                async |txn, writes| {
                    let now = now_millis();
                    fresh(txn, &t.benefit.id).await?.open(now)?;
                    self.writable_account(txn, &t, now).await?;
                    let bonus = t.benefit.top_up_bonus(&paid);
                    let added = paid
                        .minor_units()
                        .checked_add(bonus)
                        .ok_or_else(|| KitError::invalid("amount", "too large"))?;
                    if !store::add(txn, &t.benefit.id, t.mesh.as_str(), added).await? {
                        return Err(closed());
                    }
                    let postings = t
                        .benefit
                        .top_up_postings(&t.me, t.mesh.as_str(), &paid, bonus);
                    self.post(txn, writes, t.movement("TOP_UP"), &postings, now)
                        .await?;
                    self.balance_now(txn, &t, now).await
                },
            )
            .await
    }

    pub(super) async fn earn_points(
        &self,
        call: &Call,
        r: &pb::EarnPointsRequest,
    ) -> Result<pb::PointsEarning, EntitlementsError> {
        let mut v = Violations::default();
        let points = v.check(
            "points",
            domain::points("points", r.points).map_err(|_| "1 to 1000000000".to_owned()),
        );
        v.check("order_reference", text(&r.order_reference, true, 128));
        let days = r.return_window_days.unwrap_or(DEFAULT_RETURN_DAYS);
        if !(0..=MAX_RETURN_DAYS).contains(&days) {
            v.add("return_window_days", "0 to 365");
        }
        v.finish()?;
        let Some(points) = points else {
            return Err(KitError::invalid("points", "required").into());
        };
        let t = self
            .target(call, &r.member, &r.benefit, Some(BalanceKind::Points), true)
            .await?;
        self.mutations
            .run_writing_about(
                call,
                &r.request_id,
                r,
                t.mesh.as_str(),
                async |txn, writes| {
                    let now = now_millis();
                    fresh(txn, &t.benefit.id).await?.open(now)?;
                    self.writable_account(txn, &t, now).await?;
                    let lot = LotRow {
                        id: uuid::Uuid::now_v7().simple().to_string(),
                        benefit_id: t.benefit.id.clone(),
                        member: t.mesh.to_string(),
                        partner_id: t.me.to_string(),
                        points,
                        release_at: now + i64::from(days) * DAY_MILLIS,
                        state: if days == 0 {
                            LotState::Released
                        } else {
                            LotState::Pending
                        },
                        order_reference: r.order_reference.clone(),
                        created_at: now,
                    };
                    store::insert_lot(txn, &lot).await?;
                    if days == 0 && !store::add(txn, &t.benefit.id, t.mesh.as_str(), points).await?
                    {
                        return Err(closed());
                    }
                    let postings = t.benefit.points_earned_postings(t.mesh.as_str(), points);
                    self.post(txn, writes, t.movement("POINTS_EARNED"), &postings, now)
                        .await?;
                    Ok(earning_proto(&t.scoped, &lot, now))
                },
            )
            .await
    }

    pub(super) async fn reverse_points(
        &self,
        call: &Call,
        r: &pb::ReversePointsRequest,
    ) -> Result<pb::PointsEarning, EntitlementsError> {
        let [id] = names::parse(&r.name, "pointsEarnings/{earning}")
            .map_err(|e| KitError::invalid("name", e))?;
        let me = PartnerId::new(call.partner_id());
        let lot = store::lot(&self.read, id)
            .await?
            .filter(|l| l.partner_id == me.as_str())
            .ok_or(EntitlementsError::EarningNotFound)?;
        let scoped = self
            .directory()?
            .scoped_ids(me.as_str(), &[MeshMemberId::new(lot.member.clone())])
            .await?
            .pop()
            .flatten()
            .ok_or(EntitlementsError::EarningNotFound)?;
        self.mutations
            .run_writing_about(
                call,
                &r.request_id,
                r,
                lot.member.as_str(),
                async |txn, writes| {
                    let now = now_millis();
                    if !store::move_lot(txn, &lot.id, LotState::Reversed, None, Some(now)).await? {
                        let current = store::lot(txn, &lot.id)
                            .await?
                            .ok_or(EntitlementsError::EarningNotFound)?;
                        let state = match earning_state(&current, now) {
                            pb::PointsEarningState::Reversed => "REVERSED",
                            _ => "AVAILABLE",
                        };
                        return Err(KitError::WrongState(
                            "EARNING_STATE",
                            state,
                            "only points still inside their return window are reversed".into(),
                        )
                        .into());
                    }
                    let benefit = fresh(txn, &lot.benefit_id).await?;
                    let postings =
                        domain::negated(&benefit.points_earned_postings(&lot.member, lot.points));
                    self.post(
                        txn,
                        writes,
                        Movement {
                            kind: "POINTS_REVERSED",
                            benefit: &benefit,
                            redemption: None,
                            member: Some(&lot.member),
                            through: None,
                        },
                        &postings,
                        now,
                    )
                    .await?;
                    let mut row = lot.clone();
                    row.state = LotState::Reversed;
                    Ok(earning_proto(scoped.as_str(), &row, now))
                },
            )
            .await
    }

    pub(super) async fn spend_balance(
        &self,
        call: &Call,
        r: &pb::SpendBalanceRequest,
    ) -> Result<pb::BalanceSpend, EntitlementsError> {
        let mut v = Violations::default();
        let store_name = store_of(call, &r.store, &mut v)?;
        let amount = match &r.amount {
            None => None,
            Some(m) => v.check("amount", Money::positive(&m.currency_code, m.minor_units)),
        };
        v.finish()?;
        if let Some(store) = &store_name {
            self.directory()?.open_store(store).await?;
        }
        let t = self.target(call, &r.member, &r.benefit, None, true).await?;
        let (store_name, (spent, taken)) = match (store_name, t.kind, amount) {
            (_, BalanceKind::Points, Some(_)) => {
                return Err(KitError::invalid("amount", "only for stored value").into());
            }
            (_, BalanceKind::StoredValue, _) if r.points != 0 => {
                return Err(KitError::invalid("points", "only for points").into());
            }
            (_, BalanceKind::StoredValue, None) => {
                return Err(KitError::invalid("amount", "required for stored value").into());
            }
            (None, ..) => return Err(KitError::invalid("store", "required").into()),
            (Some(s), BalanceKind::Points, None) => {
                let points = domain::points("points", r.points)?;
                (s, (points, t.benefit.points_worth(points)))
            }
            (Some(s), BalanceKind::StoredValue, Some(amount)) => {
                t.benefit.same_currency(&amount)?;
                (s, (amount.minor_units(), Some(amount)))
            }
        };
        t.benefit.honoured_at_store(&t.me, &store_name)?;
        if t.account.is_none() {
            return Err(insufficient());
        }
        self.hot
            .keyed(t.mesh.as_str())
            .run_writing_about(
                call,
                &r.request_id,
                r,
                t.mesh.as_str(),
                async |txn, writes| {
                    let now = now_millis();
                    if t.kind == BalanceKind::Points {
                        store::release_due(txn, &t.benefit.id, t.mesh.as_str(), now).await?;
                    }
                    if !store::add(txn, &t.benefit.id, t.mesh.as_str(), -spent).await? {
                        return match store::account(txn, &t.benefit.id, t.mesh.as_str()).await? {
                            Some(a) if a.closed => Err(closed()),
                            _ => Err(insufficient()),
                        };
                    }
                    let points = if t.kind == BalanceKind::Points {
                        spent
                    } else {
                        0
                    };
                    let postings = t.benefit.spend_postings(
                        t.kind,
                        &t.me,
                        t.mesh.as_str(),
                        points,
                        taken.as_ref(),
                    );
                    let entry = self
                        .post(txn, writes, t.movement("BALANCE_SPEND"), &postings, now)
                        .await?
                        .unwrap_or_default();
                    let row = SpendRow {
                        transaction_id: entry,
                        benefit_id: t.benefit.id.clone(),
                        member: t.mesh.to_string(),
                        partner_id: t.me.to_string(),
                        store_id: store_name.clone(),
                        points,
                        currency: taken.as_ref().map(|m| m.currency().to_owned()),
                        amount: taken.as_ref().map_or(0, Money::minor_units),
                        refunded: false,
                        created_at: now,
                    };
                    store::insert_spend(txn, &row).await?;
                    Ok(spend_proto(&row, self.balance_now(txn, &t, now).await?))
                },
            )
            .await
    }

    pub(super) async fn refund_balance_spend(
        &self,
        call: &Call,
        r: &pb::RefundBalanceSpendRequest,
    ) -> Result<pb::BalanceSpend, EntitlementsError> {
        let [id] = names::parse(&r.ledger_entry, "ledgerEntries/{transaction}")
            .map_err(|e| KitError::invalid("ledger_entry", e))?;
        let me = PartnerId::new(call.partner_id());
        let spend = store::spend(&self.read, id, me.as_str())
            .await?
            .ok_or(EntitlementsError::SpendNotFound)?;
        let benefit = fresh(&self.read, &spend.benefit_id).await?;
        let kind = benefit.balance()?;
        let mesh = MeshMemberId::new(spend.member.clone());
        let scoped = self
            .directory()?
            .scoped_ids(me.as_str(), std::slice::from_ref(&mesh))
            .await?
            .pop()
            .flatten()
            .ok_or(EntitlementsError::SpendNotFound)?;
        let t = Target {
            me,
            scoped: scoped.to_string(),
            mesh,
            benefit,
            kind,
            account: None,
        };
        self.mutations
            .run_writing_about(
                call,
                &r.request_id,
                r,
                t.mesh.as_str(),
                async |txn, writes| {
                    let now = now_millis();
                    if !store::refund_spend(txn, &spend.transaction_id).await? {
                        return Err(KitError::Precondition(
                            "ALREADY_REFUNDED",
                            "this spend was already given back".into(),
                        )
                        .into());
                    }
                    let back = if t.kind == BalanceKind::Points {
                        spend.points
                    } else {
                        spend.amount
                    };
                    if !store::add(txn, &t.benefit.id, t.mesh.as_str(), back).await? {
                        return Err(closed());
                    }
                    let taken = match &spend.currency {
                        Some(c) => Some(Money::new(c, spend.amount).map_err(KitError::Internal)?),
                        None => None,
                    };
                    let postings = domain::negated(&t.benefit.spend_postings(
                        t.kind,
                        &t.me,
                        t.mesh.as_str(),
                        spend.points,
                        taken.as_ref(),
                    ));
                    self.post(txn, writes, t.movement("BALANCE_REFUND"), &postings, now)
                        .await?;
                    let mut row = spend.clone();
                    row.refunded = true;
                    Ok(spend_proto(&row, self.balance_now(txn, &t, now).await?))
                },
            )
            .await
    }
}

fn spend_proto(row: &SpendRow, balance: pb::Balance) -> pb::BalanceSpend {
    pb::BalanceSpend {
        ledger_entry: format!("ledgerEntries/{}", row.transaction_id),
        store: row.store_id.clone(),
        points: row.points,
        amount: row.currency.as_deref().and_then(|c| money(c, row.amount)),
        balance: Some(balance),
        refunded: row.refunded,
    }
}

fn insufficient() -> EntitlementsError {
    KitError::Precondition(
        "INSUFFICIENT_BALANCE",
        "the member's balance is lower than the amount".into(),
    )
    .into()
}

/// The benefit as it stands in this transaction (its state may have moved since the checks).
async fn fresh(
    txn: &impl sea_orm::ConnectionTrait,
    id: &str,
) -> Result<Benefit, EntitlementsError> {
    store::benefit_by_id(txn, id)
        .await?
        .ok_or(EntitlementsError::BenefitNotFound)
}
