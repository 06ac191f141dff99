//! StatsService: a session's figures (now, and as they change) and the live feed of what
//! viewers did, which comarketing's funnel consumes.

use std::{collections::BTreeMap, pin::Pin, time::Duration};

use futures::{Stream, StreamExt};
use lianyu_kit::{
    Call, KitError,
    call::{partner_wide, status, unary},
    time::{now_millis, timestamp},
};
use lianyu_proto::{common::v1 as common, live::v1 as pb};
use tonic::{Request, Response, Status};

use super::{Api, Role};
use crate::{
    domain::{LiveError, Session, SessionState},
    store,
};

/// The log's kind for live feed events (one per host, under the host's partner id).
pub(super) const FUNNEL_KIND: &str = "funnel";
/// The outbox topic of the whole live feed (once per event, by mesh id): a `:` no partner id
/// holds, so no partner's WatchLiveEvents ever serves one.
pub(super) const WHOLE_FEED: &str = ":live";
/// How often WatchSessionStats reads the figures.
const STATS_TICK: Duration = Duration::from_secs(1);

fn line(key: String, orders: i64, currency: &str, gross: i64) -> pb::SalesLine {
    pb::SalesLine {
        key,
        orders,
        gross_sales: Some(common::Money {
            currency_code: currency.to_owned(),
            minor_units: gross,
        }),
    }
}

impl Api {
    /// The session's figures now, for a co-host.
    async fn stats(&self, session: &Session) -> Result<pb::SessionStats, KitError> {
        let now = now_millis();
        let orders = store::placed_orders(&self.read, &session.id).await?;
        let audience = self.hub.audience(&self.read, &session.id, now).await?;
        let currency = orders
            .first()
            .map_or("CNY", |o| o.amount.currency())
            .to_owned();
        let mut by_partner: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut by_store: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut by_guide: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut gross = 0_i64;
        let mut buyers = std::collections::BTreeSet::new();
        for o in &orders {
            let n = o.amount.minor_units();
            gross = gross.saturating_add(n);
            let add = |map: &mut BTreeMap<String, (i64, i64)>, key: String| {
                let e = map.entry(key).or_default();
                e.0 += 1;
                e.1 = e.1.saturating_add(n);
            };
            add(&mut by_partner, format!("partners/{}", o.seller));
            if !o.store.is_empty() {
                add(&mut by_store, o.store.clone());
            }
            if !o.guide.is_empty() {
                add(&mut by_guide, o.guide.clone());
            }
            if let Some(m) = &o.member {
                buyers.insert(m.clone());
            }
        }
        let lines = |map: BTreeMap<String, (i64, i64)>| -> Vec<pb::SalesLine> {
            map.into_iter()
                .map(|(k, (n, g))| line(k, n, &currency, g))
                .collect()
        };
        let conversion_bps = if audience.identified > 0 {
            i32::try_from(
                i64::try_from(buyers.len())
                    .unwrap_or(i64::MAX)
                    .min(audience.identified)
                    * 10_000
                    / audience.identified,
            )
            .unwrap_or(10_000)
        } else {
            0
        };
        Ok(pb::SessionStats {
            session: format!("sessions/{}", session.id),
            viewers_now: audience.now,
            viewers_total: audience.total,
            orders: i64::try_from(orders.len()).unwrap_or(i64::MAX),
            gross_sales: Some(common::Money {
                currency_code: currency.clone(),
                minor_units: gross,
            }),
            coupons_claimed: store::claimed(&self.read, &session.id).await?,
            as_of: timestamp(now),
            viewers_peak: audience.peak,
            by_partner: lines(by_partner),
            by_store: lines(by_store),
            by_guide: lines(by_guide),
            conversion_bps,
            by_host_share: session
                .split(gross)
                .into_iter()
                .map(|(p, part)| line(format!("partners/{p}"), 0, &currency, part))
                .collect(),
        })
    }

    /// The session named in a stats request, for a co-host only (others: not found, as the
    /// figures are the co-hosts' business).
    async fn stats_session(&self, call: &Call, name: &str) -> Result<Session, LiveError> {
        let (session, role) = self.read_session(call, name, "session").await?;
        if role == Role::Host {
            Ok(session)
        } else {
            Err(LiveError::SessionNotFound)
        }
    }

    /// A feed event as `reader` may see it: members named by its own scoped id where it may
    /// know them, by the session pseudonym otherwise — or, once the reader erased them
    /// ([`once_erased`]), by nothing that links them to anything else.
    async fn for_reader(
        &self,
        reader: &str,
        mut body: pb::WatchLiveEventsResponse,
    ) -> Result<pb::WatchLiveEventsResponse, KitError> {
        let Some((session_name, member, placed_by)) = body.event.as_ref().and_then(named_in) else {
            return Ok(body);
        };
        let Some(mesh) = member.strip_prefix("meshMembers/") else {
            return Ok(body);
        };
        let id = session_name.strip_prefix("sessions/").unwrap_or_default();
        let Some(session) = store::load_session(&self.read, id).await? else {
            return Ok(body);
        };
        let placed_by = lianyu_kit::ids::PartnerId::new(
            placed_by.strip_prefix("partners/").unwrap_or_default(),
        );
        let Some(event) = body.event.as_mut() else {
            return Ok(body);
        };
        let erased = once_erased(&session, event);
        let named = self
            .buyers(
                reader,
                &session,
                &[(Some(mesh.to_owned()), placed_by, erased)],
            )
            .await?
            .pop()
            .unwrap_or_default();
        rename(event, named);
        Ok(body)
    }
}

/// How a feed event names its member once erased at the partner it came through: an order by
/// the pseudonym of its own ([`Session::erased_pseudonym`]) that `ListOrders` shows, a join or
/// a drop claim by no one.
pub(super) fn once_erased(
    session: &Session,
    event: &pb::watch_live_events_response::Event,
) -> String {
    match event {
        pb::watch_live_events_response::Event::Order(o) => {
            session.erased_pseudonym(o.name.rsplit('/').next().unwrap_or_default())
        }
        _ => String::new(),
    }
}

/// The member a feed event names and what it happened in: (session name, member, the partner
/// it came through) — an order's buyer, a viewer who joined, a drop's claimer; `None` for
/// events that name no one.
pub(super) fn named_in(
    event: &pb::watch_live_events_response::Event,
) -> Option<(String, String, String)> {
    use pb::watch_live_events_response::Event;
    let before = |name: &str, child: &str| name.split(child).next().unwrap_or_default().to_owned();
    match event {
        Event::Order(o) => Some((
            before(&o.name, "/orders/"),
            o.member.clone(),
            o.placed_by.clone(),
        )),
        Event::ViewerJoined(j) => Some((j.session.clone(), j.member.clone(), j.partner.clone())),
        Event::DropClaimed(c) => Some((
            before(&c.coupon_drop, "/couponDrops/"),
            c.member.clone(),
            c.partner.clone(),
        )),
        _ => None,
    }
}

/// Names the event's member `member` instead (see [`named_in`]).
pub(super) fn rename(event: &mut pb::watch_live_events_response::Event, member: String) {
    use pb::watch_live_events_response::Event;
    match event {
        Event::Order(o) => o.member = member,
        Event::ViewerJoined(j) => j.member = member,
        Event::DropClaimed(c) => c.member = member,
        _ => {}
    }
}

type StatsStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchSessionStatsResponse, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchLiveEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::stats_service_server::StatsService for Api {
    async fn get_session_stats(
        &self,
        request: Request<pb::GetSessionStatsRequest>,
    ) -> Result<Response<pb::SessionStats>, Status> {
        unary(request, async |call, r| {
            let session = self.stats_session(&call, &r.session).await?;
            Ok::<_, LiveError>(self.stats(&session).await?)
        })
        .await
    }

    async fn watch_session_stats(
        &self,
        request: Request<pb::WatchSessionStatsRequest>,
    ) -> Result<Response<StatsStream>, Status> {
        let call = Call::of(&request).map_err(|e| status(&LiveError::from(e)))?;
        let session = self
            .stats_session(&call, &request.get_ref().session)
            .await
            .map_err(|e| status(&e))?;
        let api = self.clone();
        let state = (api, session, None::<pb::SessionStats>, false);
        let stream = futures::stream::unfold(state, |(api, session, last, done)| async move {
            if done {
                return None;
            }
            let mut first = last.is_none();
            loop {
                if !first {
                    tokio::select! {
                        () = tokio::time::sleep(STATS_TICK) => {}
                        () = api.stopping.cancelled() => return Some((
                            Err(Status::unavailable("the server is shutting down; watch again")),
                            (api, session, last, true),
                        )),
                    }
                }
                first = false;
                let current = match store::load_session(&api.read, &session.id).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return None,
                    Err(e) => {
                        return Some((
                            Err(status(&LiveError::from(e))),
                            (api, session, last, true),
                        ));
                    }
                };
                let stats = match api.stats(&current).await {
                    Ok(s) => s,
                    Err(e) => {
                        return Some((
                            Err(status(&LiveError::from(e))),
                            (api, session, last, true),
                        ));
                    }
                };
                let over = matches!(current.state, SessionState::Ended | SessionState::Cancelled);
                let same = last.as_ref().is_some_and(|l| {
                    pb::SessionStats {
                        as_of: None,
                        ..l.clone()
                    } == pb::SessionStats {
                        as_of: None,
                        ..stats.clone()
                    }
                });
                if !same || over {
                    return Some((
                        Ok(pb::WatchSessionStatsResponse {
                            stats: Some(stats.clone()),
                        }),
                        (api, current, Some(stats), over),
                    ));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn watch_live_events(
        &self,
        request: Request<pb::WatchLiveEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let call = Call::of(&request).map_err(|e| status(&LiveError::from(e)))?;
        partner_wide(&call.who).map_err(|e| status(&LiveError::from(e)))?;
        let after = request.get_ref().after.as_ref().map_or(0, |c| c.sequence);
        if after < 0 {
            return Err(status(&LiveError::from(KitError::invalid(
                "after.sequence",
                "must not be negative",
            ))));
        }
        let me = call.partner_id().to_owned();
        let mine = me.clone();
        let events = self.feed.watch(after, Some(me.clone()), move |event| {
            if event.kind != FUNNEL_KIND || event.partner_id.as_deref() != Some(mine.as_str()) {
                return None;
            }
            let mut body: pb::WatchLiveEventsResponse = event.decode()?;
            body.cursor = Some(common::FeedCursor {
                sequence: event.seq,
            });
            Some(body)
        });
        let api = self.clone();
        let stream = events.then(move |item| {
            let api = api.clone();
            let me = me.clone();
            async move {
                match item {
                    Ok(body) => api
                        .for_reader(&me, body)
                        .await
                        .map_err(|e| status(&LiveError::from(e))),
                    Err(e) => Err(e),
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl lianyu_proto::live::internal::v1::live_feed_service_server::LiveFeedService for Api {
    /// The whole live feed for the mesh's services (the auth layer admits only their tokens).
    async fn watch_live_activity(
        &self,
        request: Request<lianyu_proto::live::internal::v1::WatchLiveActivityRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let after = request.get_ref().after.as_ref().map_or(0, |c| c.sequence);
        if after < 0 {
            return Err(status(&LiveError::from(KitError::invalid(
                "after.sequence",
                "must not be negative",
            ))));
        }
        let topic = WHOLE_FEED.to_owned();
        let stream = self.feed.watch(after, Some(topic.clone()), move |event| {
            if event.kind != FUNNEL_KIND || event.partner_id.as_deref() != Some(topic.as_str()) {
                return None;
            }
            let mut body: pb::WatchLiveEventsResponse = event.decode()?;
            body.cursor = Some(common::FeedCursor {
                sequence: event.seq,
            });
            Some(body)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
