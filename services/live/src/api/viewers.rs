//! ViewerService and the hub behind it.
//!
//! Every change viewers should see is appended to the service's event log (the kit's outbox)
//! in the transaction that makes it, so every replica sees every change: one reader per
//! replica follows the log (LISTEN/NOTIFY on PostgreSQL, polling on SQLite) and hands each
//! change to that replica's room for the session — a broadcast ring of bounded size shared by
//! all its viewers. A viewer's stream holds a place in the ring, not a copy of it; a viewer
//! that stops reading falls off the ring's end and, when it reads again, gets a fresh snapshot
//! instead of the backlog. A ticker adds what is not worth a log entry per change: stock
//! levels (read from the database, at most twice a second) and viewer counts (each replica
//! reports its own; the count shown is the sum).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt};
use lianyu_kit::{Call, KitError, call::status, feed::Feed, time::now_millis, writes::Writes};
use lianyu_proto::live::v1 as pb;
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{Api, Role, drops, session_proto, showcase};
use crate::{
    domain::{LiveError, SessionState},
    store,
};

/// Changes a room keeps for viewers that are a little behind; one further behind gets a
/// snapshot.
const ROOM_BUFFER: usize = 64;
/// How often stock levels are read for rooms with viewers.
const STOCK_TICK: Duration = Duration::from_millis(500);
/// How often each replica reports its viewers and reads the total.
const PRESENCE_TICK: Duration = Duration::from_secs(2);

/// The log's kind for a session's viewer changes.
pub(super) fn viewer_kind(session: &str) -> String {
    format!("viewer:{session}")
}

/// A change with its place in the log (0 for what the ticker read from the database now).
type Update = (i64, Arc<pb::JoinSessionResponse>);

/// One session's viewers on this replica.
struct Room {
    tx: broadcast::Sender<Update>,
    viewers: AtomicI64,
    /// Anonymous joins not yet reported to the presence table.
    anonymous_joins: AtomicI64,
    /// Held while this replica's joins move from `anonymous_joins` to its presence row, and
    /// by a reading of the figures: a reading never sees them in both places, or in neither.
    reporting: tokio::sync::Mutex<()>,
    /// The count across replicas last read (shown in snapshots).
    counted: AtomicI64,
    /// The stock levels (and drops' units left) last told, per flash sale or drop.
    stock: Mutex<HashMap<String, i64>>,
}

/// The rooms of this replica.
#[derive(Clone)]
pub(crate) struct Hub {
    rooms: Arc<Mutex<HashMap<String, Arc<Room>>>>,
    replica: Arc<str>,
}

/// A viewer's place in a room; leaving (the stream dropped) frees it.
struct Seat(Arc<Room>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// The hub of this replica, following `feed` until `stopping`.
    /// The hub of this replica, following `feed` until `stopping`; presence is written through
    /// `db` (the writer) and read through `read`.
    pub(crate) fn start(
        feed: Feed,
        db: DatabaseConnection,
        read: DatabaseConnection,
        stopping: CancellationToken,
    ) -> Self {
        let hub = Self {
            rooms: Arc::default(),
            replica: uuid::Uuid::new_v4().simple().to_string().into(),
        };
        tokio::spawn(hub.clone().follow(feed, stopping.clone()));
        tokio::spawn(hub.clone().tick(db, read, stopping));
        hub
    }

    fn room(&self, session: &str) -> Arc<Room> {
        let mut rooms = self
            .rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rooms
            .entry(session.to_owned())
            .or_insert_with(|| {
                Arc::new(Room {
                    tx: broadcast::Sender::new(ROOM_BUFFER),
                    viewers: AtomicI64::new(0),
                    anonymous_joins: AtomicI64::new(0),
                    reporting: tokio::sync::Mutex::new(()),
                    counted: AtomicI64::new(0),
                    stock: Mutex::default(),
                })
            })
            .clone()
    }

    /// Reads `session`'s audience at `now` with this replica's live counts in place of the
    /// row it last reported.
    pub(crate) async fn audience(
        &self,
        read: &DatabaseConnection,
        session: &str,
        now: i64,
    ) -> Result<store::Audience, lianyu_kit::KitError> {
        let Some(room) = self.existing(session) else {
            return store::audience(read, session, now, None).await;
        };
        let _reporting = room.reporting.lock().await;
        let here = store::Here {
            replica: &self.replica,
            viewers: room.viewers.load(Ordering::Relaxed),
            unreported_anonymous_joins: room.anonymous_joins.load(Ordering::Relaxed),
        };
        store::audience(read, session, now, Some(here)).await
    }

    fn existing(&self, session: &str) -> Option<Arc<Room>> {
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(session)
            .cloned()
    }

    /// Reads the log from now on and hands each viewer change to its room.
    async fn follow(self, feed: Feed, stopping: CancellationToken) {
        let head = loop {
            match feed.head().await {
                Ok(head) => break head,
                Err(e) => {
                    tracing::warn!(error = %e, "live hub: reading the log's head failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = stopping.cancelled() => return,
                    }
                }
            }
        };
        let mut changes = feed.watch(head, None, |event| {
            let session = event.kind.strip_prefix("viewer:")?.to_owned();
            let update: pb::JoinSessionResponse = event.decode()?;
            Some((session, event.seq, update))
        });
        loop {
            tokio::select! {
                next = changes.next() => match next {
                    Some(Ok((session, seq, update))) => {
                        if let Some(room) = self.existing(&session) {
                            // No receiver is fine: nobody watches here now.
                            let _ = room.tx.send((seq, Arc::new(update)));
                        }
                    }
                    Some(Err(status)) => {
                        tracing::warn!(code = ?status.code(), "live hub: the log's reader ended; following again");
                        changes = feed.watch(feed.head().await.unwrap_or(head), None, |event| {
                            let session = event.kind.strip_prefix("viewer:")?.to_owned();
                            let update: pb::JoinSessionResponse = event.decode()?;
                            Some((session, event.seq, update))
                        });
                    }
                    None => return,
                },
                () = stopping.cancelled() => return,
            }
        }
    }

    /// Stock levels and viewer counts, for rooms with viewers; empty rooms are closed after
    /// reporting zero.
    async fn tick(
        self,
        db: DatabaseConnection,
        read: DatabaseConnection,
        stopping: CancellationToken,
    ) {
        let mut stock = tokio::time::interval(STOCK_TICK);
        let mut presence = tokio::time::interval(PRESENCE_TICK);
        stock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stock.tick() => self.tell_stock(&read).await,
                _ = presence.tick() => self.tell_presence(&db, &read).await,
                () = stopping.cancelled() => return,
            }
        }
    }

    fn rooms(&self) -> Vec<(String, Arc<Room>)> {
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    async fn tell_stock(&self, read: &DatabaseConnection) {
        for (session, room) in self.rooms() {
            if room.viewers.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let now = now_millis();
            let (Ok(sales), Ok(open_drops)) = (
                store::open_sales(read, &session, now).await,
                store::open_drops(read, &session, now).await,
            ) else {
                continue;
            };
            for d in open_drops {
                let changed = {
                    let mut last = room
                        .stock
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    last.insert(d.id.clone(), d.remaining) != Some(d.remaining)
                };
                if changed {
                    let _ = room.tx.send((
                        0,
                        Arc::new(pb::JoinSessionResponse {
                            update: Some(pb::join_session_response::Update::CouponDrop(
                                drops::drop_proto(&d),
                            )),
                        }),
                    ));
                }
            }
            for sale in sales {
                let changed = {
                    let mut last = room
                        .stock
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    last.insert(sale.id.clone(), sale.remaining_stock) != Some(sale.remaining_stock)
                };
                if changed {
                    let _ = room.tx.send((
                        0,
                        Arc::new(pb::JoinSessionResponse {
                            update: Some(pb::join_session_response::Update::StockLevel(
                                pb::StockLevel {
                                    flash_sale: sale.name(),
                                    remaining_stock: sale.remaining_stock,
                                },
                            )),
                        }),
                    ));
                }
            }
        }
    }

    async fn tell_presence(&self, db: &DatabaseConnection, read: &DatabaseConnection) {
        let now = now_millis();
        for (session, room) in self.rooms() {
            let here = room.viewers.load(Ordering::Relaxed);
            let reporting = room.reporting.lock().await;
            let anonymous = room.anonymous_joins.load(Ordering::Relaxed);
            if let Err(e) =
                store::report_presence(db, &self.replica, &session, here, anonymous, now).await
            {
                tracing::warn!(error = %e, "live hub: reporting presence failed");
                continue;
            }
            // Reported: no longer this replica's to add.
            room.anonymous_joins.fetch_sub(anonymous, Ordering::Relaxed);
            drop(reporting);
            if here == 0 && room.tx.receiver_count() == 0 {
                let mut rooms = self
                    .rooms
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if room.viewers.load(Ordering::Relaxed) == 0
                    && room.anonymous_joins.load(Ordering::Relaxed) == 0
                {
                    rooms.remove(&session);
                }
                continue;
            }
            let Ok(audience) = store::audience(read, &session, now, None).await else {
                continue;
            };
            if let Err(e) = store::raise_peak(db, &session, audience.now).await {
                tracing::warn!(error = %e, "live hub: raising the peak failed");
            }
            if room.counted.swap(audience.now, Ordering::Relaxed) != audience.now {
                let _ = room.tx.send((
                    0,
                    Arc::new(pb::JoinSessionResponse {
                        update: Some(pb::join_session_response::Update::Viewers(audience.now)),
                    }),
                ));
            }
        }
    }
}

type JoinStream = Pin<Box<dyn Stream<Item = Result<pb::JoinSessionResponse, Status>> + Send>>;

impl Api {
    /// Records an identified member's first join of a session and tells the hosts' feed.
    async fn joined(
        &self,
        session: &crate::domain::Session,
        member: &str,
        partner: &str,
    ) -> Result<(), KitError> {
        let now = now_millis();
        let txn = self
            .db
            .begin()
            .await
            .map_err(|e| KitError::Storage(e.into()))?;
        let mut writes = Writes::new();
        if store::record_viewer(&txn, &session.id, member, partner, now).await? {
            self.tell_hosts(
                &mut writes,
                session,
                pb::watch_live_events_response::Event::ViewerJoined(pb::ViewerJoined {
                    session: format!("sessions/{}", session.id),
                    member: format!("meshMembers/{member}"),
                    partner: format!("partners/{partner}"),
                }),
                now,
            );
        }
        writes.send(&txn).await.map_err(KitError::Storage)?;
        txn.commit()
            .await
            .map_err(|e| KitError::Storage(e.into()))?;
        self.feed.published();
        Ok(())
    }
}

/// Whether a change ends the viewer's stream (the session ended or was cancelled).
fn ends(update: &pb::JoinSessionResponse) -> bool {
    matches!(
        &update.update,
        Some(pb::join_session_response::Update::Session(s))
            if s.state == pb::SessionState::Ended as i32
                || s.state == pb::SessionState::Cancelled as i32
    )
}

/// What snapshots are read from: one per replica, shared by its viewers' streams (a stream
/// holds a pointer to it, not a copy of the service's handle).
pub(crate) struct Snapshots {
    read: DatabaseConnection,
    feed: Feed,
}

impl Snapshots {
    pub(crate) fn new(read: DatabaseConnection, feed: Feed) -> Arc<Self> {
        Arc::new(Self { read, feed })
    }

    /// What a viewer's screen needs now, and the log position it reflects: every change up to
    /// it is in the snapshot (the position is read first), so the viewer skips those when the
    /// room hands them on late (a replica's reader that polls).
    async fn take(
        &self,
        session: &str,
        room: &Room,
    ) -> Result<(i64, pb::JoinSessionResponse), KitError> {
        let position = self.feed.head().await?;
        let s = store::load_session(&self.read, session)
            .await?
            .ok_or(KitError::NotFound("SESSION_NOT_FOUND"))?;
        let pinned = store::pinned_product(&self.read, session).await?;
        let sales = store::open_sales(&self.read, session, now_millis()).await?;
        let drops = store::open_drops(&self.read, session, now_millis()).await?;
        let viewers = room
            .counted
            .load(Ordering::Relaxed)
            .max(room.viewers.load(Ordering::Relaxed));
        Ok((
            position,
            pb::JoinSessionResponse {
                update: Some(pb::join_session_response::Update::Snapshot(pb::Snapshot {
                    session: Some(session_proto(&s, Role::Public)),
                    pinned_product: pinned.map(|p| showcase::product_proto(&p, true)),
                    flash_sales: sales.iter().map(showcase::sale_proto).collect(),
                    viewers,
                    coupon_drops: drops.iter().map(drops::drop_proto).collect(),
                })),
            },
        ))
    }
}

/// One viewer's stream: what to send first, its place in the room, and whether it is over.
struct Watching {
    /// Boxed: a response is large, and a stream holds this for as long as it is open.
    pending: Option<Box<pb::JoinSessionResponse>>,
    rx: broadcast::Receiver<Update>,
    seat: Seat,
    session: String,
    /// The log position the last snapshot reflects: changes up to it are not sent again.
    after: i64,
    done: bool,
    snapshots: Arc<Snapshots>,
    stopping: CancellationToken,
}

impl Watching {
    async fn next(mut self) -> Option<(Result<pb::JoinSessionResponse, Status>, Self)> {
        if let Some(update) = self.pending.take() {
            self.done = ends(&update);
            return Some((Ok(*update), self));
        }
        if self.done {
            return None;
        }
        let stopping = self.stopping.clone();
        loop {
            tokio::select! {
                received = self.rx.recv() => match received {
                    // Already in the snapshot.
                    Ok((seq, _)) if seq != 0 && seq <= self.after => {}
                    Ok((seq, update)) => {
                        self.after = self.after.max(seq);
                        let update = (*update).clone();
                        self.done = ends(&update);
                        return Some((Ok(update), self));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind: a fresh snapshot instead of the backlog.
                        self.rx = self.rx.resubscribe();
                        // Boxed: the stream holds its future, and a snapshot's read is large and rare.
                        return match Box::pin(self.snapshots.take(&self.session, &self.seat.0)).await {
                            Ok((position, s)) => {
                                self.after = position;
                                Some((Ok(s), self))
                            }
                            Err(e) => {
                                self.done = true;
                                Some((Err(status(&LiveError::from(e))), self))
                            }
                        };
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = stopping.cancelled() => {
                    self.done = true;
                    return Some((
                        Err(Status::unavailable("the server is shutting down; join again")),
                        self,
                    ));
                }
            }
        }
    }
}

#[tonic::async_trait]
impl pb::viewer_service_server::ViewerService for Api {
    async fn join_session(
        &self,
        request: Request<pb::JoinSessionRequest>,
    ) -> Result<Response<JoinStream>, Status> {
        let call = Call::of(&request).map_err(|e| status(&LiveError::from(e)))?;
        let r = request.into_inner();
        let opened = async {
            let (session, _) = self
                .session(&self.read, &call, &r.session, "session")
                .await?;
            if !matches!(session.state, SessionState::Scheduled | SessionState::Live) {
                return Err(session.state.refuse("a SCHEDULED or LIVE session").into());
            }
            let member = if r.member.is_empty() {
                None
            } else {
                Some(self.mesh_id(&call, &r.member, "member").await?)
            };
            Ok::<_, LiveError>((session, member))
        };
        let (session, member) = opened.await.map_err(|e| status(&e))?;
        let room = self.hub.room(&session.id);
        // Subscribe before the snapshot: a change in between arrives after it, never lost.
        let rx = room.tx.subscribe();
        room.viewers.fetch_add(1, Ordering::Relaxed);
        let seat = Seat(room.clone());
        match &member {
            Some(m) => self
                .joined(&session, m, call.partner_id())
                .await
                .map_err(|e| status(&LiveError::from(e)))?,
            None => {
                room.anonymous_joins.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (position, first) = self
            .snapshots
            .take(&session.id, &room)
            .await
            .map_err(|e| status(&LiveError::from(e)))?;
        let watching = Watching {
            pending: Some(Box::new(first)),
            rx,
            seat,
            session: session.id.clone(),
            after: position,
            done: false,
            snapshots: self.snapshots.clone(),
            stopping: self.stopping.clone(),
        };
        let stream = futures::stream::unfold(watching, Watching::next);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While this replica reports its anonymous joins again and again, readings of the
    /// figures made at the same time each count every join exactly once — never the ones on
    /// their way to the presence row twice (still held here and already stored), nor zero
    /// times.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reading_counts_each_join_once_while_the_replica_reports_them() {
        let (_database, db) = crate::store::test_database("live_reporting_joins").await;
        let hub = Hub {
            rooms: Arc::default(),
            replica: "here".into(),
        };
        let room = hub.room("s");
        // One watching keeps the room open between reports.
        room.viewers.fetch_add(1, Ordering::Relaxed);
        const JOINS: i64 = 400;
        let reporter = {
            let (hub, db, room) = (hub.clone(), db.clone(), room.clone());
            tokio::spawn(async move {
                for _ in 0..JOINS {
                    room.anonymous_joins.fetch_add(1, Ordering::Relaxed);
                    hub.tell_presence(&db, &db).await;
                }
            })
        };
        let mut readings = 0;
        let mut last = 0;
        while !reporter.is_finished() {
            let seen = hub.audience(&db, "s", now_millis()).await.unwrap();
            assert!(
                seen.total >= last && seen.total <= JOINS,
                "a reading of {} after {last}",
                seen.total
            );
            last = seen.total;
            readings += 1;
        }
        reporter.await.unwrap();
        let seen = hub.audience(&db, "s", now_millis()).await.unwrap();
        assert_eq!((seen.total, seen.now), (JOINS, 1));
        assert!(readings > 10, "only {readings} readings raced the reports");
    }
}
