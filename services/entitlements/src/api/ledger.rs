//! The ledger as each partner sees it: its own postings, and statements summed from them.

use std::collections::BTreeMap;

use lianyu_kit::{
    KitError,
    call::unary,
    ids::PartnerId,
    names,
    page::Page,
    time::{millis, now_millis, timestamp},
};
use lianyu_proto::{common::v1 as common, entitlements::v1 as pb};
use tonic::{Request, Response, Status};

use super::{Api, money};
use crate::{domain::EntitlementsError, store};

/// Start (inclusive) and end (exclusive) of a period from optional timestamps.
fn period(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Result<(Option<i64>, Option<i64>), KitError> {
    let (from, until) = (start.map(millis), end.map(millis));
    if let (Some(from), Some(until)) = (from, until)
        && until <= from
    {
        return Err(KitError::invalid("end_time", "after start_time"));
    }
    Ok((from, until))
}

#[tonic::async_trait]
impl pb::ledger_service_server::LedgerService for Api {
    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        unary(request, async |call, r| {
            lianyu_kit::call::partner_wide(&call.who)?;
            let (from, until) = period(r.start_time.as_ref(), r.end_time.as_ref())?;
            let query = format!("{from:?}/{until:?}");
            let page = Page::parse(r.page_size, &r.page_token, &[call.partner_id(), &query])?;
            // The page token is the last transaction's date and id.
            let after = match &page.after {
                Some(k) => Some(
                    k.split_once(':')
                        .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)))
                        .ok_or_else(|| KitError::invalid("page_token", "not from this query"))?,
                ),
                None => None,
            };
            // A transaction has a handful of postings per partner: read enough for the page
            // and never cut one in two.
            let limit = page.size * 8 + 8;
            let rows = store::postings_of(
                &self.read,
                call.partner_id(),
                from,
                until,
                after,
                Some(limit),
            )
            .await?;
            let complete = (rows.len() as u64) < limit;
            let mut entries: Vec<(String, pb::LedgerEntry)> = Vec::new();
            for row in rows {
                match entries.last_mut() {
                    Some((_, entry))
                        if entry.name == format!("ledgerEntries/{}", row.transaction_id) =>
                    {
                        entry.postings.push(posting(&row));
                    }
                    _ => entries.push((
                        format!("{}:{}", row.posted_at, row.transaction_id),
                        pb::LedgerEntry {
                            name: format!("ledgerEntries/{}", row.transaction_id),
                            transaction: row.kind.clone(),
                            postings: vec![posting(&row)],
                            redemption: row
                                .redemption_id
                                .as_ref()
                                .map(|r| format!("redemptions/{r}"))
                                .unwrap_or_default(),
                            post_time: timestamp(row.posted_at),
                        },
                    )),
                }
            }
            if !complete {
                // The last transaction may continue past what was read.
                entries.pop();
            }
            let size = usize::try_from(page.size).unwrap_or(usize::MAX);
            let more = entries.len() > size || !complete;
            entries.truncate(size);
            let last = entries.last().map(|(key, _)| key.clone());
            Ok::<_, EntitlementsError>(pb::ListEntriesResponse {
                next_page_token: page.next_token(last.as_deref(), more),
                entries: entries.into_iter().map(|(_, e)| e).collect(),
            })
        })
        .await
    }

    async fn watch_ledger_events(
        &self,
        request: Request<pb::WatchLedgerEventsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let call = lianyu_kit::call::Call::of(&request)
            .map_err(|e| lianyu_kit::call::status(&EntitlementsError::from(e)))?;
        lianyu_kit::call::partner_wide(&call.who)
            .map_err(|e| lianyu_kit::call::status(&EntitlementsError::from(e)))?;
        let after = request.get_ref().after.as_ref().map_or(0, |c| c.sequence);
        if after < 0 {
            return Err(lianyu_kit::call::status(&EntitlementsError::from(
                KitError::invalid("after.sequence", "must not be negative"),
            )));
        }
        let me = call.partner_id().to_owned();
        let stream = self.feed.watch(after, Some(me.clone()), move |event| {
            if event.partner_id.as_deref() != Some(me.as_str()) {
                return None;
            }
            let mut body: pb::WatchLedgerEventsResponse = event.decode()?;
            body.cursor = Some(common::FeedCursor {
                sequence: event.seq,
            });
            Some(body)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_settlement_statement(
        &self,
        request: Request<pb::GetSettlementStatementRequest>,
    ) -> Result<Response<pb::SettlementStatement>, Status> {
        unary(request, async |call, r| {
            lianyu_kit::call::partner_wide(&call.who)?;
            let (me, other) = pair(&call, &r.counterparty)?;
            let (from, until) = period(r.start_time.as_ref(), r.end_time.as_ref())?;
            let until = until.unwrap_or_else(now_millis);
            let mut out = statement(&self.read, &me, &other, from, until).await?;
            out.closed =
                until <= store::closed_until(&self.read, me.as_str(), other.as_str()).await?;
            Ok::<_, EntitlementsError>(out)
        })
        .await
    }

    async fn close_settlement_period(
        &self,
        request: Request<pb::CloseSettlementPeriodRequest>,
    ) -> Result<Response<pb::SettlementStatement>, Status> {
        unary(request, async |call, r| {
            lianyu_kit::call::partner_wide(&call.who)?;
            let mut v = lianyu_kit::validate::Violations::default();
            let parties = v.check(
                "counterparty",
                pair(&call, &r.counterparty).map_err(|e| e.to_string()),
            );
            let end = match r.end_time.as_ref().map(millis) {
                None => {
                    v.add("end_time", "required");
                    None
                }
                Some(end) if end > now_millis() => {
                    v.add("end_time", "not in the future");
                    None
                }
                Some(end) => Some(end),
            };
            v.finish()?;
            let (Some((me, other)), Some(end)) = (parties, end) else {
                return Err(KitError::invalid("end_time", "required").into());
            };
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let now = now_millis();
                    let Some(from) =
                        store::close_period(txn, me.as_str(), other.as_str(), end, now).await?
                    else {
                        let last = store::closed_until(txn, me.as_str(), other.as_str()).await?;
                        return Err(KitError::Precondition(
                            "PERIOD_ALREADY_CLOSED",
                            format!(
                                "the ledger with partners/{other} is closed up to {}",
                                timestamp(last).map(|t| t.to_string()).unwrap_or_default()
                            ),
                        )
                        .into());
                    };
                    let from = (from > 0).then_some(from);
                    let mut out = statement(txn, &me, &other, from, end).await?;
                    out.closed = true;
                    Ok(out)
                })
                .await
        })
        .await
    }
}

/// The caller and the partner named by `counterparty`, another partner.
fn pair(
    call: &lianyu_kit::call::Call,
    counterparty: &str,
) -> Result<(PartnerId, PartnerId), KitError> {
    let [other] = names::parse(counterparty, "partners/{partner}")
        .map_err(|e| KitError::invalid("counterparty", e))?;
    if other == call.partner_id() {
        return Err(KitError::invalid(
            "counterparty",
            "another partner than the caller",
        ));
    }
    Ok((PartnerId::new(call.partner_id()), PartnerId::new(other)))
}

/// Who owes whom between `me` and `other` over [from, until), per benefit and net per
/// currency, summed from `me`'s postings alone.
async fn statement(
    conn: &impl sea_orm::ConnectionTrait,
    me: &PartnerId,
    other: &PartnerId,
    from: Option<i64>,
    until: i64,
) -> Result<pb::SettlementStatement, KitError> {
    let rows = store::postings_of(conn, me.as_str(), from, Some(until), None, None).await?;
    // Per (benefit, currency): what the caller owes the counterparty.
    let mut by_benefit: BTreeMap<(String, String), Vec<(String, i64)>> = BTreeMap::new();
    for row in rows {
        by_benefit
            .entry((row.benefit_id, row.currency))
            .or_default()
            .push((row.account, row.amount));
    }
    let line = |owed: i64, currency: &str, benefit: String| {
        let (debtor, creditor) = if owed > 0 { (me, other) } else { (other, me) };
        pb::SettlementLine {
            debtor: format!("partners/{debtor}"),
            creditor: format!("partners/{creditor}"),
            amount: money(currency, owed.abs()),
            benefit,
        }
    };
    let mut lines = Vec::new();
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    for ((benefit, currency), postings) in by_benefit {
        let owed = crate::domain::owed_to(other, &postings);
        if owed != 0 {
            *net.entry(currency.clone()).or_default() += owed;
            lines.push(line(owed, &currency, format!("benefits/{benefit}")));
        }
    }
    Ok(pb::SettlementStatement {
        name: format!("settlementStatements/{other}"),
        start_time: from.and_then(timestamp),
        end_time: timestamp(until),
        lines,
        closed: false,
        net: net
            .into_iter()
            .filter(|(_, owed)| *owed != 0)
            .map(|(currency, owed)| line(owed, &currency, String::new()))
            .collect(),
    })
}

type WatchStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::WatchLedgerEventsResponse, Status>> + Send>,
>;

fn posting(row: &store::PostingRow) -> pb::Posting {
    pb::Posting {
        account: row.account.clone(),
        amount: money(&row.currency, row.amount),
        benefit: format!("benefits/{}", row.benefit_id),
    }
}

type WholeStream = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<
                    lianyu_proto::entitlements::internal::v1::WatchLedgerResponse,
                    Status,
                >,
            > + Send,
    >,
>;

#[tonic::async_trait]
impl lianyu_proto::entitlements::internal::v1::ledger_feed_service_server::LedgerFeedService
    for Api
{
    /// The whole ledger for the mesh's services (the auth layer admits only their tokens).
    async fn watch_ledger(
        &self,
        request: Request<lianyu_proto::entitlements::internal::v1::WatchLedgerRequest>,
    ) -> Result<Response<WholeStream>, Status> {
        let after = request.get_ref().after.as_ref().map_or(0, |c| c.sequence);
        if after < 0 {
            return Err(lianyu_kit::call::status(&EntitlementsError::from(
                KitError::invalid("after.sequence", "must not be negative"),
            )));
        }
        let topic = super::WHOLE_LEDGER.to_owned();
        let stream = self.feed.watch(after, Some(topic.clone()), move |event| {
            if event.partner_id.as_deref() != Some(topic.as_str()) {
                return None;
            }
            let mut body: lianyu_proto::entitlements::internal::v1::WatchLedgerResponse =
                event.decode()?;
            body.cursor = Some(common::FeedCursor {
                sequence: event.seq,
            });
            Some(body)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl lianyu_proto::entitlements::internal::v1::campaign_budget_service_server::CampaignBudgetService
    for Api
{
    async fn stop_granting(
        &self,
        request: Request<lianyu_proto::entitlements::internal::v1::StopGrantingRequest>,
    ) -> Result<Response<lianyu_proto::entitlements::internal::v1::StopGrantingResponse>, Status>
    {
        use crate::domain::BenefitState;
        lianyu_kit::call::unary(request, async |_call, r| {
            let mut v = lianyu_kit::validate::Violations::default();
            v.check(
                "campaign",
                lianyu_kit::names::parse::<1>(&r.campaign, "campaigns/{campaign}").map(|_| ()),
            );
            if r.benefits.is_empty() || r.benefits.len() > 32 {
                v.add("benefits", "1 to 32 benefits");
            }
            let ids: Vec<String> = r
                .benefits
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    v.check(
                        format!("benefits[{i}]"),
                        lianyu_kit::names::parse(b, "benefits/{benefit}").map(|[id]| id.to_owned()),
                    )
                })
                .collect();
            let partners: Vec<PartnerId> = r
                .partners
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    v.check(format!("partners[{i}]"), lianyu_kit::validate::partner(p))
                })
                .collect();
            v.finish()?;
            let txn = sea_orm::TransactionTrait::begin(&self.db)
                .await
                .map_err(|e| KitError::Storage(lianyu_kit::storage::StorageError::from(e)))?;
            let mut paused = Vec::new();
            for id in &ids {
                let Some(b) = store::benefit_by_id(&txn, id).await? else {
                    continue;
                };
                let party = partners.contains(&b.issuer) || partners.contains(&b.funder);
                if party
                    && b.state == BenefitState::Active
                    && store::set_state(&txn, &b.id, BenefitState::Active, BenefitState::Paused)
                        .await?
                {
                    paused.push(b.id.clone());
                }
            }
            txn.commit()
                .await
                .map_err(|e| KitError::Storage(lianyu_kit::storage::StorageError::from(e)))?;
            for id in &paused {
                self.gates.forget(id);
            }
            Ok::<_, EntitlementsError>(
                lianyu_proto::entitlements::internal::v1::StopGrantingResponse {
                    paused: paused.iter().map(|id| format!("benefits/{id}")).collect(),
                },
            )
        })
        .await
    }
}
