//! ShowcaseService: products, pins (kept as replay markers), announcements and flash sales.

use lianyu_kit::{
    Call, KitError,
    call::unary,
    ids::PartnerId,
    names,
    page::Page,
    time::{now_millis, required_millis, timestamp},
    validate::text,
};
use lianyu_proto::live::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Api, Role, amount, money};
use crate::{
    domain::{
        FlashSale, FlashSaleDraft, LiveError, Product, ProductDraft, SaleWindow, Session,
        SessionState,
    },
    store,
};

pub(super) fn product_proto(p: &Product, pinned: bool) -> pb::Product {
    pb::Product {
        name: p.name(),
        sku: p.sku.clone(),
        title: p.title.clone(),
        price: money(&p.price),
        seller: format!("partners/{}", p.seller),
        pinned,
        category: p.category.clone(),
    }
}

pub(super) fn sale_proto(s: &FlashSale) -> pb::FlashSale {
    pb::FlashSale {
        name: s.name(),
        product: format!("sessions/{}/products/{}", s.session_id, s.product_id),
        sale_price: money(&s.price),
        total_stock: s.total_stock,
        remaining_stock: s.remaining_stock,
        per_member_limit: s.per_member_limit,
        start_time: timestamp(s.window.start),
        end_time: timestamp(s.window.end),
    }
}

/// A session that has not ended or been cancelled, for adding to it.
fn not_over(session: &Session) -> Result<(), KitError> {
    match session.state {
        SessionState::Scheduled | SessionState::Live => Ok(()),
        state => Err(state.refuse("a SCHEDULED or LIVE session")),
    }
}

impl Api {
    /// The session of a pin or an announcement: the caller must be a co-host or an assistant,
    /// and the session LIVE.
    async fn on_air(
        &self,
        txn: &impl sea_orm::ConnectionTrait,
        call: &Call,
        name: &str,
        field: &str,
    ) -> Result<Session, LiveError> {
        let (session, role) = self.session(txn, call, name, field).await?;
        if role == Role::Public {
            return Err(KitError::Denied(
                "HOST_OR_ASSISTANT_ONLY",
                "only a co-host or an assistant pins products and posts announcements",
            )
            .into());
        }
        if session.state != SessionState::Live {
            return Err(session.state.refuse("a LIVE session").into());
        }
        Ok(session)
    }
}

#[tonic::async_trait]
impl pb::showcase_service_server::ShowcaseService for Api {
    async fn add_product(
        &self,
        request: Request<pb::AddProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        unary(request, async |call, r| {
            let given = r.product.clone().unwrap_or_default();
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let session = self.hosted(txn, &call, &r.parent, "parent").await?;
                    let product = Product::new(
                        &session,
                        &PartnerId::new(call.partner_id()),
                        &ProductDraft {
                            sku: &given.sku,
                            title: &given.title,
                            price: amount(given.price.as_ref()),
                            seller: &given.seller,
                            category: &given.category,
                        },
                    )?;
                    if call.who.store.is_some() && product.seller.as_str() != call.partner_id() {
                        return Err(KitError::Denied(
                            "STORE_TOKEN_NOT_ALLOWED",
                            "a store token adds only its own partner's products",
                        )
                        .into());
                    }
                    not_over(&session)?;
                    if !store::insert_product(txn, &product).await? {
                        return Err(KitError::Exists(
                            "SKU_EXISTS",
                            "that seller's SKU is already on the session",
                        )
                        .into());
                    }
                    Ok(product_proto(&product, false))
                })
                .await
        })
        .await
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        unary(request, async |call, r| {
            let (session, _) = self.read_session(&call, &r.parent, "parent").await?;
            let page = Page::parse(r.page_size, &r.page_token, &[&session.id])?;
            let (products, next_page_token) =
                store::list_products(&self.read, &session.id, &page).await?;
            Ok::<_, LiveError>(pb::ListProductsResponse {
                products: products
                    .iter()
                    .map(|(p, pinned)| product_proto(p, *pinned))
                    .collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn pin_product(
        &self,
        request: Request<pb::PinProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        unary(request, async |call, r| {
            let [session_id, product_id] =
                names::parse(&r.name, "sessions/{session}/products/{product}")
                    .map_err(|e| KitError::invalid("name", e))?;
            let parent = format!("sessions/{session_id}");
            self.mutations
                .run_writing(&call, &r.request_id, &r, async |txn, writes| {
                    let session = self.on_air(txn, &call, &parent, "name").await?;
                    let (product, _) = store::product(txn, &session.id, product_id)
                        .await?
                        .ok_or(LiveError::ProductNotFound)?;
                    let now = now_millis();
                    let offset = now - session.started_at.unwrap_or(now);
                    store::pin(txn, &session.id, &product.id, r.pinned, now, offset).await?;
                    let shown = product_proto(&product, r.pinned);
                    if r.pinned {
                        self.tell_viewers(
                            writes,
                            &session.id,
                            pb::join_session_response::Update::PinnedProduct(shown.clone()),
                        );
                        self.tell_hosts(
                            writes,
                            &session,
                            pb::watch_live_events_response::Event::ProductPinned(
                                pb::ProductPinned {
                                    session: format!("sessions/{}", session.id),
                                    marker: Some(pb::PinMarker {
                                        product: product.name(),
                                        pin_time: timestamp(now),
                                        stream_offset_millis: offset,
                                    }),
                                },
                            ),
                            now,
                        );
                    } else {
                        // Nothing on screen: an empty product.
                        self.tell_viewers(writes,
                            &session.id,
                            pb::join_session_response::Update::PinnedProduct(
                                pb::Product::default(),
                            ),
                        );
                    }
                    Ok(shown)
                })
                .await
        })
        .await
    }

    async fn list_pin_markers(
        &self,
        request: Request<pb::ListPinMarkersRequest>,
    ) -> Result<Response<pb::ListPinMarkersResponse>, Status> {
        unary(request, async |call, r| {
            let (session, _) = self.read_session(&call, &r.parent, "parent").await?;
            let page = Page::parse(r.page_size, &r.page_token, &[&session.id])?;
            let (markers, next_page_token) =
                store::list_markers(&self.read, &session.id, &page).await?;
            Ok::<_, LiveError>(pb::ListPinMarkersResponse {
                markers: markers
                    .into_iter()
                    .map(|m| pb::PinMarker {
                        product: format!("sessions/{}/products/{}", session.id, m.product_id),
                        pin_time: timestamp(m.at),
                        stream_offset_millis: m.offset,
                    })
                    .collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn post_announcement(
        &self,
        request: Request<pb::PostAnnouncementRequest>,
    ) -> Result<Response<pb::Announcement>, Status> {
        unary(request, async |call, r| {
            let text = text(&r.text, true, 280).map_err(|e| KitError::invalid("text", e))?;
            self.mutations
                .run_writing(&call, &r.request_id, &r, async |txn, writes| {
                    let session = self.on_air(txn, &call, &r.parent, "parent").await?;
                    let said = pb::Announcement {
                        text: text.clone(),
                        post_time: timestamp(now_millis()),
                        author: format!("partners/{}", call.partner_id()),
                    };
                    self.tell_viewers(
                        writes,
                        &session.id,
                        pb::join_session_response::Update::Announcement(said.clone()),
                    );
                    Ok(said)
                })
                .await
        })
        .await
    }

    async fn create_flash_sale(
        &self,
        request: Request<pb::CreateFlashSaleRequest>,
    ) -> Result<Response<pb::FlashSale>, Status> {
        unary(request, async |call, r| {
            let given = r.flash_sale.clone().unwrap_or_default();
            self.mutations
                .run_writing(&call, &r.request_id, &r, async |txn, writes| {
                    let session = self.hosted(txn, &call, &r.parent, "parent").await?;
                    let product_id = match names::parse::<2>(
                        &given.product,
                        "sessions/{session}/products/{product}",
                    ) {
                        Ok([s, p]) if s == session.id => p,
                        Ok(_) => {
                            return Err(KitError::invalid(
                                "flash_sale.product",
                                "must be a product of this session",
                            )
                            .into());
                        }
                        Err(e) => return Err(KitError::invalid("flash_sale.product", e).into()),
                    };
                    let (product, _) = store::product(txn, &session.id, product_id)
                        .await?
                        .ok_or(LiveError::ProductNotFound)?;
                    let sale = FlashSale::new(
                        &product,
                        &FlashSaleDraft {
                            price: amount(given.sale_price.as_ref())
                                .map(|(c, n)| (c.to_owned(), n)),
                            total_stock: given.total_stock,
                            per_member_limit: given.per_member_limit,
                            start: given.start_time.as_ref().map(|t| required_millis(Some(t))),
                            end: required_millis(given.end_time.as_ref()),
                        },
                        now_millis(),
                    )?;
                    not_over(&session)?;
                    store::insert_sale(txn, &sale).await?;
                    let shown = sale_proto(&sale);
                    self.tell_viewers(
                        writes,
                        &session.id,
                        pb::join_session_response::Update::FlashSale(shown.clone()),
                    );
                    Ok(shown)
                })
                .await
        })
        .await
    }

    async fn create_coupon_drop(
        &self,
        request: Request<pb::CreateCouponDropRequest>,
    ) -> Result<Response<pb::CouponDrop>, Status> {
        unary(request, async |call, r| {
            // A retry of a drop that was created gets it, even once the session or the benefit
            // changed (the checks before the write read them as they are now).
            self.mutations
                .replayable(&call, &r.request_id, &r, self.create_drop(&call, &r))
                .await
        })
        .await
    }

    async fn get_coupon_drop(
        &self,
        request: Request<pb::GetCouponDropRequest>,
    ) -> Result<Response<pb::CouponDrop>, Status> {
        unary(request, async |call, r| self.get_drop(&call, &r.name).await).await
    }

    async fn claim_coupon_drop(
        &self,
        request: Request<pb::ClaimCouponDropRequest>,
    ) -> Result<Response<pb::ClaimCouponDropResponse>, Status> {
        let call = Call::of(&request).map_err(|e| lianyu_kit::call::status(&LiveError::from(e)))?;
        self.claim_drop(&call, request.get_ref())
            .await
            .map(Response::new)
    }

    async fn end_flash_sale(
        &self,
        request: Request<pb::EndFlashSaleRequest>,
    ) -> Result<Response<pb::FlashSale>, Status> {
        unary(request, async |call, r| {
            let [session_id, sale_id] =
                names::parse(&r.name, "sessions/{session}/flashSales/{flash_sale}")
                    .map_err(|e| KitError::invalid("name", e))?;
            let parent = format!("sessions/{session_id}");
            let ended = self
                .mutations
                .run_writing(&call, &r.request_id, &r, async |txn, writes| {
                    let session = self.hosted(txn, &call, &parent, "name").await?;
                    let sale = store::sale(txn, &session.id, sale_id)
                        .await?
                        .ok_or(LiveError::FlashSaleNotFound)?;
                    let window = sale.window.ended_at(now_millis(), "SALE_NOT_OPEN")?;
                    if !store::end_sale(txn, &sale.id, window).await? {
                        return Err(SaleWindow::already_closed("SALE_NOT_OPEN").into());
                    }
                    // Read again: orders that took stock between the first read and the end
                    // (their window was still open) count in what is left.
                    let sale = store::sale(txn, &session.id, sale_id)
                        .await?
                        .ok_or(LiveError::FlashSaleNotFound)?;
                    let shown = sale_proto(&sale);
                    self.tell_viewers(
                        writes,
                        &session.id,
                        pb::join_session_response::Update::FlashSale(shown.clone()),
                    );
                    Ok(shown)
                })
                .await?;
            // Once committed, this replica's buyers are refused from memory again (others
            // read the sale as open until their copy goes; the stock's take refuses them).
            self.forget_sale(session_id, sale_id);
            Ok::<_, LiveError>(ended)
        })
        .await
    }

    async fn close_coupon_drop(
        &self,
        request: Request<pb::CloseCouponDropRequest>,
    ) -> Result<Response<pb::CouponDrop>, Status> {
        unary(request, async |call, r| {
            let [session_id, drop_id] =
                names::parse(&r.name, "sessions/{session}/couponDrops/{drop}")
                    .map_err(|e| KitError::invalid("name", e))?;
            let parent = format!("sessions/{session_id}");
            self.mutations
                .run_writing(&call, &r.request_id, &r, async |txn, writes| {
                    let session = self.hosted(txn, &call, &parent, "name").await?;
                    let drop = store::coupon_drop(txn, &session.id, drop_id)
                        .await?
                        .ok_or(LiveError::CouponDropNotFound)?;
                    let window = drop.window.ended_at(now_millis(), "DROP_NOT_OPEN")?;
                    if !store::close_drop(txn, &drop.id, window).await? {
                        return Err(SaleWindow::already_closed("DROP_NOT_OPEN").into());
                    }
                    // Read again: claims that took a unit between the first read and the close
                    // (their window was still open) count in what is left.
                    let drop = store::coupon_drop(txn, &session.id, drop_id)
                        .await?
                        .ok_or(LiveError::CouponDropNotFound)?;
                    let shown = super::drops::drop_proto(&drop);
                    self.tell_viewers(
                        writes,
                        &session.id,
                        pb::join_session_response::Update::CouponDrop(shown.clone()),
                    );
                    Ok(shown)
                })
                .await
        })
        .await
    }

    async fn list_flash_sales(
        &self,
        request: Request<pb::ListFlashSalesRequest>,
    ) -> Result<Response<pb::ListFlashSalesResponse>, Status> {
        unary(request, async |call, r| {
            let (session, _) = self.read_session(&call, &r.parent, "parent").await?;
            let page = Page::parse(r.page_size, &r.page_token, &[&session.id])?;
            let (sales, next_page_token) =
                store::list_sales(&self.read, &session.id, &page).await?;
            Ok::<_, LiveError>(pb::ListFlashSalesResponse {
                flash_sales: sales.iter().map(sale_proto).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn list_coupon_drops(
        &self,
        request: Request<pb::ListCouponDropsRequest>,
    ) -> Result<Response<pb::ListCouponDropsResponse>, Status> {
        unary(request, async |call, r| {
            let (session, _) = self.read_session(&call, &r.parent, "parent").await?;
            let page = Page::parse(r.page_size, &r.page_token, &[&session.id])?;
            let (drops, next_page_token) =
                store::list_drops(&self.read, &session.id, &page).await?;
            Ok::<_, LiveError>(pb::ListCouponDropsResponse {
                coupon_drops: drops.iter().map(super::drops::drop_proto).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn get_flash_sale(
        &self,
        request: Request<pb::GetFlashSaleRequest>,
    ) -> Result<Response<pb::FlashSale>, Status> {
        unary(request, async |call, r| {
            let [session_id, sale_id] =
                names::parse(&r.name, "sessions/{session}/flashSales/{flash_sale}")
                    .map_err(|e| KitError::invalid("name", e))?;
            let (session, _) = self
                .session(&self.read, &call, &format!("sessions/{session_id}"), "name")
                .await
                .map_err(|e| match e {
                    LiveError::SessionNotFound => LiveError::FlashSaleNotFound,
                    e => e,
                })?;
            let sale = store::sale(&self.read, &session.id, sale_id)
                .await?
                .ok_or(LiveError::FlashSaleNotFound)?;
            Ok::<_, LiveError>(sale_proto(&sale))
        })
        .await
    }
}
