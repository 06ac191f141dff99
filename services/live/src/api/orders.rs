//! OrderService: orders taken atomically against stock and per-member limits, attributed to
//! session, selling partner, store and guide; buyers named only to whom they may be.

use lianyu_kit::{
    Call, KitError,
    call::unary,
    directory::Question,
    ids::{MeshMemberId, PartnerId},
    names,
    page::Page,
    time::{now_millis, timestamp},
};
use lianyu_proto::{common::v1 as common, live::v1 as pb};
use tonic::{Request, Response, Status};

use super::{Api, Role, money};
use crate::{
    domain::{
        FlashSale, LiveError, Order, OrderState, Product, Session, SessionState, check_order,
    },
    store::{self, OrderScope},
};

/// How long a replica trusts that a sale it saw sell out stays sold out before letting one
/// order through to the database again (a cancel on another replica restocks it).
pub(super) const SOLD_OUT_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Flash sales seen sold out (or coupon drops seen claimed out) lately: each forgotten
/// [`SOLD_OUT_RECHECK`] after it was seen, and at most [`SOLD_OUT_REMEMBERED`] at once, so a
/// replica that runs sale after sale for months holds only the ones that sold out in the last
/// moments.
///
/// A sighting is remembered only if nothing was put back here since before the read that saw
/// it: a refusal read while another call's unit was out, and remembered after that call put
/// it back, would otherwise turn buyers away from a unit that is there. Callers take
/// [`SoldOut::since`] before they read, and hand it to [`SoldOut::mark`].
#[derive(Clone)]
pub(crate) struct SoldOut {
    seen: moka::sync::Cache<String, ()>,
    /// How many times units were put back, counted in stripes by the sale's hash (two sales
    /// sharing a stripe only cost a sighting not remembered).
    reopened: std::sync::Arc<[std::sync::atomic::AtomicU64; REOPEN_STRIPES]>,
}

/// Sold-out sales a replica remembers at most (the least recently seen go first).
const SOLD_OUT_REMEMBERED: u64 = 10_000;

/// Stripes of [`SoldOut`]'s put-back counter.
const REOPEN_STRIPES: usize = 64;

/// Where [`SoldOut`]'s put-back counter stood for a sale before a read of its stock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Since(u64);

impl Default for SoldOut {
    fn default() -> Self {
        Self {
            seen: moka::sync::Cache::builder()
                .max_capacity(SOLD_OUT_REMEMBERED)
                .time_to_live(SOLD_OUT_RECHECK)
                .build(),
            reopened: std::sync::Arc::new(std::array::from_fn(|_| {
                std::sync::atomic::AtomicU64::new(0)
            })),
        }
    }
}

impl SoldOut {
    /// Whether `sale` was seen sold out lately.
    pub(super) fn is(&self, sale: &str) -> bool {
        self.seen.contains_key(sale)
    }

    fn stripe(&self, sale: &str) -> &std::sync::atomic::AtomicU64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(sale);
        &self.reopened[usize::try_from(hash % REOPEN_STRIPES as u64).unwrap_or_default()]
    }

    /// Taken before reading `sale`'s stock, for [`Self::mark`].
    pub(super) fn since(&self, sale: &str) -> Since {
        Since(self.stripe(sale).load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Remembers `sale` sold out, as read after `since` was taken — unless a unit was put back
    /// here meanwhile. Inserted first and checked after, so a put-back that races the insert
    /// either is seen here or removes the insert itself.
    pub(super) fn mark(&self, sale: &str, since: Since) {
        self.seen.insert(sale.to_owned(), ());
        if self.stripe(sale).load(std::sync::atomic::Ordering::SeqCst) != since.0 {
            self.seen.invalidate(sale);
        }
    }

    /// A unit of `sale` was put back (after it was committed): claims and orders go to the
    /// writer again, and sightings read before now are not remembered.
    pub(super) fn reopen(&self, sale: &str) {
        self.stripe(sale)
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.seen.invalidate(sale);
    }
}

/// The purposes that let a co-host see who bought.
const NAMING_PURPOSES: [common::ConsentPurpose; 2] = [
    common::ConsentPurpose::LivePersonalization,
    common::ConsentPurpose::ShareProfile,
];

pub(super) fn order_proto(o: &Order, buyer: String) -> pb::Order {
    pb::Order {
        name: o.name(),
        member: buyer,
        product: format!("sessions/{}/products/{}", o.session_id, o.product_id),
        flash_sale: o
            .flash_sale_id
            .as_ref()
            .map(|s| format!("sessions/{}/flashSales/{s}", o.session_id))
            .unwrap_or_default(),
        quantity: o.quantity,
        amount: money(&o.amount),
        partner: format!("partners/{}", o.seller),
        store: o.store.clone(),
        guide: o.guide.clone(),
        payment_reference: o.payment_reference.clone(),
        state: match o.state {
            OrderState::Placed => pb::OrderState::Placed,
            OrderState::Cancelled => pb::OrderState::Cancelled,
        } as i32,
        create_time: timestamp(o.created_at),
        share_code: o.share_code.clone(),
        placed_by: format!("partners/{}", o.placed_by),
    }
}

/// What a request names as bought: a flash sale, or a product at list price.
enum Item<'a> {
    Sale(&'a str),
    Product(&'a str),
}

fn item<'a>(session: &str, o: &'a pb::Order) -> Result<Item<'a>, KitError> {
    let in_session =
        |name: &'a str, pattern: &str, field: &str| match names::parse::<2>(name, pattern) {
            Ok([s, id]) if s == session => Ok(id),
            Ok(_) => Err(KitError::invalid(field, "must belong to this session")),
            Err(e) => Err(KitError::invalid(field, e)),
        };
    if !o.flash_sale.is_empty() {
        return in_session(
            &o.flash_sale,
            "sessions/{session}/flashSales/{flash_sale}",
            "order.flash_sale",
        )
        .map(Item::Sale);
    }
    if o.product.is_empty() {
        return Err(KitError::invalid(
            "order.product",
            "name a product or a flash sale",
        ));
    }
    in_session(
        &o.product,
        "sessions/{session}/products/{product}",
        "order.product",
    )
    .map(Item::Product)
}

impl Api {
    /// How each buyer (member, the partner that placed the order, and how the buyer is named
    /// once erased there) is named to `reader`: by its own scoped id where it placed the order
    /// or the member consented (LIVE_PERSONALIZATION or SHARE_PROFILE) to it, asked of identity
    /// now; by the session pseudonym otherwise; and by the erased name once the member is
    /// forgotten, or when the placing reader no longer knows them — it erased them, and live
    /// has yet to hear of it: the session pseudonym would link its erased orders to what the
    /// person bought through the other co-host.
    pub(super) async fn buyers(
        &self,
        reader: &str,
        session: &Session,
        orders: &[(Option<String>, PartnerId, String)],
    ) -> Result<Vec<String>, KitError> {
        let mut questions = Vec::new();
        for (member, placed_by, _) in orders {
            if let Some(m) = member
                && placed_by.as_str() != reader
            {
                for purpose in NAMING_PURPOSES {
                    questions.push(Question {
                        member: MeshMemberId::new(m.clone()),
                        grantor: placed_by.to_string(),
                        grantee: reader.to_owned(),
                        purpose: purpose as i32,
                    });
                }
            }
        }
        let directory = self.directory()?;
        let decisions = if questions.is_empty() {
            Vec::new()
        } else {
            directory.decide(reader, &questions).await?
        };
        let mut decided = questions.iter().zip(decisions);
        let mut named: Vec<Option<MeshMemberId>> = Vec::with_capacity(orders.len());
        for (member, placed_by, _) in orders {
            let allowed = match member {
                None => false,
                Some(_) if placed_by.as_str() == reader => true,
                Some(_) => {
                    let answers: Vec<bool> = decided
                        .by_ref()
                        .take(NAMING_PURPOSES.len())
                        .map(|(_, d)| d.allowed)
                        .collect();
                    answers.contains(&true)
                }
            };
            named.push(
                member
                    .as_ref()
                    .filter(|_| allowed)
                    .map(|m| MeshMemberId::new(m.clone())),
            );
        }
        let wanted: Vec<MeshMemberId> = named.iter().flatten().cloned().collect();
        let mut scoped = if wanted.is_empty() {
            Vec::new()
        } else {
            directory.scoped_ids(reader, &wanted).await?
        }
        .into_iter();
        Ok(named
            .into_iter()
            .zip(orders)
            .map(|(n, (member, placed_by, erased))| {
                let id = n.and_then(|_| scoped.next().flatten());
                match (id, member) {
                    (Some(id), _) => format!("members/{id}"),
                    (None, Some(m)) if placed_by.as_str() != reader => session.pseudonym(m),
                    (None, _) => erased.clone(),
                }
            })
            .collect())
    }

    /// What an order rests on, read beside the writer: the session (the caller's role, the
    /// share code's attribution, LIVE), the product or flash sale and the amount. Products and
    /// sales do not change once made, except that a sale closes (its session ended, or a
    /// co-host ended it early); what
    /// may change by the time the order is written — the stock, the sale's window, the
    /// session's state — is checked again where the stock is taken ([`store::take_stock`]),
    /// or, for a product at list price, by reading the session's state in the transaction.
    async fn order_facts(
        &self,
        call: &Call,
        r: &pb::PlaceOrderRequest,
        given: &pb::Order,
    ) -> Result<OrderFacts, LiveError> {
        let (session, role) = self.read_session(call, &r.parent, "parent").await?;
        if call.who.store.is_some() && role != Role::Host {
            return Err(KitError::Denied(
                "STORE_TOKEN_NOT_ALLOWED",
                "a store token places orders only in a session of its store",
            )
            .into());
        }
        let (store, guide) = session
            .attribute(&given.share_code)
            .map_err(|e| KitError::invalid("order.share_code", e))?;
        if session.state != SessionState::Live {
            return Err(session.state.refuse("a LIVE session").into());
        }
        let (product, sale) = match item(&session.id, given)? {
            Item::Sale(id) => {
                let (sale, product) = self.sale_and_product(&session.id, id).await?;
                // A sale closed early (its session ended, or ended on another replica) may
                // still look open here; the stock update refuses it all the same.
                sale.window.open_at(now_millis(), "SALE_NOT_OPEN")?;
                (product, Some(sale))
            }
            Item::Product(id) => {
                let (product, _) = store::product(&self.read, &session.id, id)
                    .await?
                    .ok_or(LiveError::ProductNotFound)?;
                (product, None)
            }
        };
        let unit = sale.as_ref().map_or(&product.price, |s| &s.price);
        let amount = Order::price(unit, given.quantity)?;
        Ok(OrderFacts {
            session,
            store,
            guide,
            product,
            sale,
            amount,
        })
    }

    /// Drops this replica's copy of a sale that changed (a co-host ended it early).
    pub(super) fn forget_sale(&self, session: &str, sale: &str) {
        self.sales
            .invalidate(&(session.to_owned(), sale.to_owned()));
    }

    /// A flash sale and its product, from this replica's cache or read and kept: neither
    /// changes once made, except that a sale may close early (its session ended, or a co-host
    /// ended it: [`Self::forget_sale`]), which [`store::take_stock`] checks on every order — so
    /// in a burst the thousands of buyers of one sale read it once, not once each.
    async fn sale_and_product(
        &self,
        session: &str,
        sale: &str,
    ) -> Result<(FlashSale, Product), LiveError> {
        let key = (session.to_owned(), sale.to_owned());
        if let Some(known) = self.sales.get(&key) {
            return Ok((*known).clone());
        }
        // The buyers that arrive before the first read is kept share reads.
        let found = self
            .sale_reads
            .get(key.clone(), |keys| async move {
                futures::future::join_all(keys.iter().map(|(session, sale)| async move {
                    self.read_sale(session, sale)
                        .await
                        .map_err(KitError::into_storage)
                }))
                .await
            })
            .await
            .map_err(KitError::Storage)?;
        let (sale, product) = found.ok_or(LiveError::FlashSaleNotFound)?;
        self.sales
            .insert(key, std::sync::Arc::new((sale.clone(), product.clone())));
        Ok((sale, product))
    }

    /// A flash sale of `session` with its product, read.
    async fn read_sale(
        &self,
        session: &str,
        sale: &str,
    ) -> Result<Option<(FlashSale, Product)>, KitError> {
        let Some(found) = store::sale(&self.read, session, sale).await? else {
            return Ok(None);
        };
        let (product, _) = store::product(&self.read, session, &found.product_id)
            .await?
            .ok_or_else(|| KitError::Internal("a flash sale's product is missing".into()))?;
        Ok(Some((found, product)))
    }

    /// Why no stock was taken from `sale`: the session is no longer LIVE, the sale is not
    /// open, or too few units are left (SOLD_OUT). Read again in the transaction: if enough is left after all, the take lost a race
    /// with a concurrent one and is retried (ABORTED / CONCURRENT_UPDATE), never told SOLD_OUT.
    async fn not_taken(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        sale: &FlashSale,
        quantity: i32,
        now: i64,
    ) -> LiveError {
        match store::load_session(txn, &sale.session_id).await {
            Ok(Some(session)) if session.state != SessionState::Live => {
                return session.state.refuse("a LIVE session").into();
            }
            Ok(_) => {}
            Err(e) => return e.into(),
        }
        let current = match store::sale(txn, &sale.session_id, &sale.id).await {
            Ok(Some(current)) => current,
            Ok(None) => return LiveError::FlashSaleNotFound,
            Err(e) => return e.into(),
        };
        if let Err(closed) = current.window.open_at(now, "SALE_NOT_OPEN") {
            return closed.into();
        }
        if current.remaining_stock >= i64::from(quantity) {
            return KitError::Storage(lianyu_kit::storage::StorageError::Conflict(
                "the stock changed while it was taken; retry".into(),
            ))
            .into();
        }
        KitError::Precondition("SOLD_OUT", "fewer units are left than asked for".into()).into()
    }

    /// Places an order for `call` (already validated). What it rests on is read first, beside
    /// the writer; in the transaction a flash-sale order costs two conditional writes (the
    /// member's limit, the stock) and one trip for the order with its stored reply — in a
    /// burst, every buyer's transaction queues on the one writer, so what it does there is
    /// kept to that.
    async fn place(
        &self,
        call: &Call,
        r: &pb::PlaceOrderRequest,
        member: &MeshMemberId,
    ) -> Result<pb::Order, LiveError> {
        let given = r.order.clone().unwrap_or_default();
        let reference = check_order(given.quantity, &given.payment_reference)?;
        // A refusal here gives way to the stored order of a replay (`place_order`).
        let facts = self.order_facts(call, r, &given).await?;
        let OrderFacts {
            session,
            store: attributed_store,
            guide,
            product,
            sale,
            amount,
        } = &facts;
        let since = sale.as_ref().map(|s| self.sold_out.since(&s.id));
        // The stored reply names the buyer: tagged with them, an erasure purges it.
        let buyer = member.to_string();
        let placed = self
            .orders
            .run_writing_about(call, &r.request_id, r, &buyer, async |txn, writes| {
                let now = now_millis();
                let mut sold_out = None;
                if let Some(sale) = sale {
                    let left = match store::take_for_member(
                        txn,
                        (&session.id, &sale.id),
                        member,
                        (given.quantity, sale.per_member_limit),
                        now,
                    )
                    .await?
                    {
                        store::Take::Taken(left) => left,
                        store::Take::OverLimit => {
                            return Err(KitError::Precondition(
                                "MEMBER_LIMIT_REACHED",
                                format!(
                                    "a member buys at most {} of this flash sale",
                                    sale.per_member_limit
                                ),
                            )
                            .into());
                        }
                        store::Take::NotTaken => {
                            return Err(self.not_taken(txn, sale, given.quantity, now).await);
                        }
                    };
                    if left == 0 {
                        sold_out = Some(sale.name());
                    }
                } else {
                    let state = store::load_session(txn, &session.id)
                        .await?
                        .map_or(SessionState::Cancelled, |s| s.state);
                    if state != SessionState::Live {
                        return Err(state.refuse("a LIVE session").into());
                    }
                }
                let order = Order {
                    id: uuid::Uuid::now_v7().simple().to_string(),
                    session_id: session.id.clone(),
                    member: Some(member.to_string()),
                    pseudonym: session.pseudonym(member),
                    placed_by: PartnerId::new(call.partner_id()),
                    product_id: product.id.clone(),
                    flash_sale_id: sale.as_ref().map(|s| s.id.clone()),
                    quantity: given.quantity,
                    amount: amount.clone(),
                    seller: product.seller.clone(),
                    store: attributed_store.clone(),
                    guide: guide.clone(),
                    share_code: given.share_code.clone(),
                    payment_reference: reference.clone(),
                    state: OrderState::Placed,
                    created_at: now,
                };
                store::stage_order(
                    writes,
                    sea_orm::ConnectionTrait::get_database_backend(txn),
                    &order,
                );
                if let Some(flash_sale) = sold_out {
                    self.tell_viewers(
                        writes,
                        &session.id,
                        pb::join_session_response::Update::StockLevel(pb::StockLevel {
                            flash_sale,
                            remaining_stock: 0,
                        }),
                    );
                }
                let stored = order_proto(&order, format!("meshMembers/{member}"));
                self.tell_hosts(
                    writes,
                    session,
                    pb::watch_live_events_response::Event::Order(stored),
                    now,
                );
                Ok(order_proto(&order, given.member.clone()))
            })
            .await;
        // Remembered for the sold-out gate only once final: a refusal inside a shared
        // transaction may rest on another member's take that was then rolled back, and the
        // pipeline decides it again — only a SOLD_OUT that reaches here was read committed.
        if let (Err(refused), Some(sale), Some(since)) = (&placed, sale, since)
            && given.quantity == 1
            && lianyu_kit::ServiceError::reason(refused) == "SOLD_OUT"
        {
            self.sold_out.mark(&sale.id, since);
        }
        placed
    }
}

/// Whose orders `call` sees in a session where it has `role` (ListOrders, GetOrder).
fn order_scope(call: &Call, role: Role) -> OrderScope<'_> {
    match (role, call.who.store.as_deref()) {
        (Role::Host, Some(own)) => OrderScope::Store(own),
        (Role::Host, None) => OrderScope::All,
        (_, Some(own)) => OrderScope::PlacedByAt(call.partner_id(), own),
        (_, None) => OrderScope::PlacedBy(call.partner_id()),
    }
}

/// What an order rests on ([`Api::order_facts`]).
struct OrderFacts {
    session: Session,
    store: String,
    guide: String,
    product: Product,
    sale: Option<FlashSale>,
    amount: lianyu_kit::money::Money,
}

#[tonic::async_trait]
impl pb::order_service_server::OrderService for Api {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        unary(request, async |call, r| {
            let given = r.order.clone().unwrap_or_default();
            // Bad fields first, all at once, before identity is asked anything.
            let mut v = lianyu_kit::validate::Violations::default();
            if let Err(e) = names::parse::<1>(&r.parent, "sessions/{session}") {
                v.add("parent", e);
            }
            if let Err(e) = names::parse::<1>(&given.member, "members/{member}") {
                v.add("order.member", e);
            }
            if let Err(KitError::Invalid(fields)) =
                check_order(given.quantity, &given.payment_reference)
            {
                for f in fields {
                    v.add(f.field, f.description);
                }
            }
            v.finish()?;
            // A sale this replica saw sell out: SOLD_OUT at once, unless this is a replay of
            // an order that was placed.
            let sale_id = given.flash_sale.rsplit('/').next().unwrap_or_default();
            if !given.flash_sale.is_empty() && self.sold_out.is(sale_id) {
                return match self.orders.stored(&call, &r.request_id, &r).await? {
                    Some(placed) => Ok(placed),
                    None => Err(KitError::Precondition(
                        "SOLD_OUT",
                        "fewer units are left than asked for".into(),
                    )
                    .into()),
                };
            }
            // Boxed: a refusal above never builds the order's (large) future, and a call's
            // future stays small enough that moving it costs nothing.
            let placed = async {
                let member = Box::pin(self.mesh_id(&call, &given.member, "order.member")).await?;
                Box::pin(self.place(&call, &r, &member)).await
            };
            // A replay of an order placed before the session or sale changed gets its order;
            // of one whose buyer the caller has since erased, NOT_FOUND / MEMBER_ERASED.
            self.orders
                .replayable(&call, &r.request_id, &r, placed)
                .await
        })
        .await
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        unary(request, async |call, r| {
            let [session_id, order_id] = names::parse(&r.name, "sessions/{session}/orders/{order}")
                .map_err(|e| KitError::invalid("name", e))?;
            let cancelled = self
                .orders
                .run_writing(&call, &r.request_id, &r, async |txn, writes| {
                    let mut order = store::order(txn, session_id, order_id)
                        .await?
                        .filter(|o| {
                            !call.who.operator
                                && (o.placed_by.as_str() == call.partner_id()
                                    || o.seller.as_str() == call.partner_id())
                        })
                        .ok_or(LiveError::OrderNotFound)?;
                    if order.state != OrderState::Placed
                        || !store::cancel_order(txn, &order.id).await?
                    {
                        return Err(KitError::WrongState(
                            "ORDER_STATE",
                            "CANCELLED",
                            "only a PLACED order is cancelled".into(),
                        )
                        .into());
                    }
                    if let Some(sale) = &order.flash_sale_id {
                        store::restock(txn, sale, order.member.as_deref(), order.quantity).await?;
                    }
                    order.state = OrderState::Cancelled;
                    let session = store::load_session(txn, session_id)
                        .await?
                        .ok_or(LiveError::OrderNotFound)?;
                    let stored = order_proto(
                        &order,
                        order
                            .member
                            .as_ref()
                            .map(|m| format!("meshMembers/{m}"))
                            .unwrap_or_else(|| order.pseudonym.clone()),
                    );
                    self.tell_hosts(
                        writes,
                        &session,
                        pb::watch_live_events_response::Event::Order(stored),
                        now_millis(),
                    );
                    // The reply names the buyer by the session pseudonym, which any reader may see.
                    Ok(order_proto(&order, order.pseudonym.clone()))
                })
                .await?;
            // Reopened once the restock is committed: an order that read the stock before
            // then may still have seen it sold out, and must not be remembered as such.
            if let Some(sale) = cancelled.flash_sale.rsplit_once("/flashSales/") {
                self.sold_out.reopen(sale.1);
            }
            Ok::<_, LiveError>(cancelled)
        })
        .await
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        unary(request, async |call, r| {
            let [session_id, order_id] = names::parse(&r.name, "sessions/{session}/orders/{order}")
                .map_err(|e| KitError::invalid("name", e))?;
            let (session, role) = self
                .read_session(&call, &format!("sessions/{session_id}"), "name")
                .await
                .map_err(|e| match e {
                    LiveError::SessionNotFound => LiveError::OrderNotFound,
                    e => e,
                })?;
            let order = store::order(&self.read, &session.id, order_id)
                .await?
                .filter(|o| order_scope(&call, role).admits(o))
                .ok_or(LiveError::OrderNotFound)?;
            let key = (
                order.member.clone(),
                order.placed_by.clone(),
                session.erased_pseudonym(&order.id),
            );
            let buyer = self
                .buyers(call.partner_id(), &session, &[key])
                .await?
                .pop()
                .ok_or_else(|| KitError::Internal("no buyer named for an order".into()))?;
            Ok::<_, LiveError>(order_proto(&order, buyer))
        })
        .await
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        unary(request, async |call, r| {
            let (session, role) = self.read_session(&call, &r.parent, "parent").await?;
            let scope = order_scope(&call, role);
            let store_key = call.who.store.clone().unwrap_or_default();
            let page = Page::parse(
                r.page_size,
                &r.page_token,
                &[call.partner_id(), &store_key, &session.id],
            )?;
            let (orders, next_page_token) =
                store::list_orders(&self.read, &session.id, scope, &page).await?;
            let keys: Vec<_> = orders
                .iter()
                .map(|o| {
                    let erased = session.erased_pseudonym(&o.id);
                    (o.member.clone(), o.placed_by.clone(), erased)
                })
                .collect();
            let buyers = self.buyers(call.partner_id(), &session, &keys).await?;
            Ok::<_, LiveError>(pb::ListOrdersResponse {
                orders: orders
                    .iter()
                    .zip(buyers)
                    .map(|(o, b)| order_proto(o, b))
                    .collect(),
                next_page_token,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sold_out_gate_holds_a_bounded_number_of_sales_and_reopens_on_a_restock() {
        let gate = SoldOut::default();
        let sales = SOLD_OUT_REMEMBERED + 5_000;
        for n in 0..sales {
            let sale = format!("sale-{n}");
            gate.mark(&sale, gate.since(&sale));
        }
        gate.seen.run_pending_tasks();
        assert!(
            gate.seen.entry_count() <= SOLD_OUT_REMEMBERED,
            "{} sales remembered",
            gate.seen.entry_count()
        );
        let last = format!("sale-{}", sales - 1);
        gate.mark(&last, gate.since(&last));
        assert!(gate.is(&last));
        gate.reopen(&last);
        assert!(!gate.is(&last), "a restocked sale is let through again");
        assert!(!gate.is("sale-never-seen"));
    }

    #[test]
    fn a_sighting_read_before_a_put_back_is_not_remembered() {
        let gate = SoldOut::default();
        let read_before = gate.since("sale");
        gate.reopen("sale");
        gate.mark("sale", read_before);
        assert!(!gate.is("sale"), "the unit put back is offered again");
        let read_after = gate.since("sale");
        gate.mark("sale", read_after);
        assert!(
            gate.is("sale"),
            "a sighting after the put-back is remembered"
        );
        gate.reopen("sale");
        assert!(!gate.is("sale"));
    }
}
