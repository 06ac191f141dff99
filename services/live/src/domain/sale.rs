//! What a session sells: products, flash sales and orders, checked before they are stored.

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    money::Money,
    validate::{Violations, partner, text},
};

use super::Session;

/// A product on show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub session_id: String,
    pub sku: String,
    pub title: String,
    pub price: Money,
    pub seller: PartnerId,
    pub category: String,
}

/// A product as a co-host describes it.
pub struct ProductDraft<'a> {
    pub sku: &'a str,
    pub title: &'a str,
    /// `(currency, minor units)`, or `None` when absent.
    pub price: Option<(&'a str, i64)>,
    pub seller: &'a str,
    pub category: &'a str,
}

impl Product {
    /// Checks a product `caller` adds to `session` (reported under `product.`); the seller
    /// defaults to the caller and must be a host.
    pub fn new(
        session: &Session,
        caller: &PartnerId,
        draft: &ProductDraft<'_>,
    ) -> Result<Self, KitError> {
        let mut v = Violations::default();
        let sku = v.check("product.sku", text(draft.sku, true, 64));
        let title = v.check("product.title", text(draft.title, true, 100));
        let price = v.check(
            "product.price",
            draft
                .price
                .ok_or_else(|| "required".to_owned())
                .and_then(|(c, n)| Money::positive(c, n)),
        );
        let seller = if draft.seller.is_empty() {
            Some(caller.clone())
        } else {
            v.check("product.seller", partner(draft.seller))
        };
        if let Some(s) = &seller
            && !session.hosted_by(s)
        {
            v.add("product.seller", "must be one of the session's hosts");
        }
        let category = v.check("product.category", category(draft.category));
        v.finish()?;
        let (Some(sku), Some(title), Some(price), Some(seller), Some(category)) =
            (sku, title, price, seller, category)
        else {
            return Err(KitError::invalid("product", "required"));
        };
        Ok(Self {
            id: uuid::Uuid::now_v7().simple().to_string(),
            session_id: session.id.clone(),
            sku,
            title,
            price,
            seller,
            category,
        })
    }

    /// "sessions/{session}/products/{product}".
    pub fn name(&self) -> String {
        format!("sessions/{}/products/{}", self.session_id, self.id)
    }
}

/// When a flash sale may be bought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaleWindow {
    pub start: i64,
    pub end: i64,
}

impl SaleWindow {
    /// Ok while open at `now`; FAILED_PRECONDITION / `reason` (SALE_NOT_OPEN, DROP_NOT_OPEN;
    /// metadata `state` NOT_STARTED or CLOSED) otherwise.
    pub fn open_at(&self, now: i64, reason: &'static str) -> Result<(), KitError> {
        if now < self.start {
            Err(KitError::WrongState(
                reason,
                "NOT_STARTED",
                "it has not opened yet".into(),
            ))
        } else if now >= self.end {
            Err(KitError::WrongState(
                reason,
                "CLOSED",
                "it has closed".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// FAILED_PRECONDITION / `reason`, metadata `state` CLOSED: a window that had closed
    /// cannot be ended again.
    pub fn already_closed(reason: &'static str) -> KitError {
        KitError::WrongState(reason, "CLOSED", "it has already closed".into())
    }

    /// The window ended at `now`, before its time (a co-host stops a sale or a drop early): a
    /// window not yet open becomes an empty one at `now`. FAILED_PRECONDITION / `reason` with
    /// metadata `state` CLOSED when it has already closed.
    pub fn ended_at(&self, now: i64, reason: &'static str) -> Result<Self, KitError> {
        if now >= self.end {
            return Err(Self::already_closed(reason));
        }
        Ok(Self {
            start: self.start.min(now),
            end: now,
        })
    }
}

/// Scarce stock at a sale price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlashSale {
    pub id: String,
    pub session_id: String,
    pub product_id: String,
    pub price: Money,
    pub total_stock: i64,
    pub remaining_stock: i64,
    pub per_member_limit: i32,
    pub window: SaleWindow,
}

/// A flash sale as a co-host describes it.
pub struct FlashSaleDraft {
    /// `(currency, minor units)`, or `None` when absent.
    pub price: Option<(String, i64)>,
    pub total_stock: i64,
    pub per_member_limit: i32,
    /// `None` opens it now.
    pub start: Option<Result<i64, String>>,
    pub end: Result<i64, String>,
}

/// Most units one flash sale offers.
pub const MAX_STOCK: i64 = 1_000_000;
/// Most units one member may buy in one sale, and in one order.
pub const MAX_PER_MEMBER: i32 = 100;

impl FlashSale {
    /// Checks a sale of `product` at `now` (reported under `flash_sale.`).
    pub fn new(product: &Product, draft: &FlashSaleDraft, now: i64) -> Result<Self, KitError> {
        let mut v = Violations::default();
        let price = v.check(
            "flash_sale.sale_price",
            draft
                .price
                .clone()
                .ok_or_else(|| "required".to_owned())
                .and_then(|(c, n)| Money::positive(&c, n))
                .and_then(|m| {
                    if m.currency() == product.price.currency() {
                        Ok(m)
                    } else {
                        Err(format!("must be in {}", product.price.currency()))
                    }
                }),
        );
        if !(1..=MAX_STOCK).contains(&draft.total_stock) {
            v.add("flash_sale.total_stock", "must be 1 to 1000000");
        }
        if !(1..=MAX_PER_MEMBER).contains(&draft.per_member_limit) {
            v.add("flash_sale.per_member_limit", "must be 1 to 100");
        }
        let (start, end) = window(
            &mut v,
            "flash_sale.start_time",
            "flash_sale.end_time",
            draft.start.as_ref(),
            &draft.end,
            now,
        );
        v.finish()?;
        let (Some(price), Some(start), Some(end)) = (price, start, end) else {
            return Err(KitError::invalid("flash_sale", "required"));
        };
        Ok(Self {
            id: uuid::Uuid::now_v7().simple().to_string(),
            session_id: product.session_id.clone(),
            product_id: product.id.clone(),
            price,
            total_stock: draft.total_stock,
            remaining_stock: draft.total_stock,
            per_member_limit: draft.per_member_limit,
            window: SaleWindow { start, end },
        })
    }

    /// "sessions/{session}/flashSales/{flash_sale}".
    pub fn name(&self) -> String {
        format!("sessions/{}/flashSales/{}", self.session_id, self.id)
    }
}

/// Units of an entitlements benefit handed out to viewers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CouponDrop {
    pub id: String,
    pub session_id: String,
    pub benefit_id: String,
    pub quantity: i64,
    pub remaining: i64,
    pub window: SaleWindow,
}

/// A drop as a co-host describes it.
pub struct CouponDropDraft<'a> {
    pub benefit: &'a str,
    pub quantity: i64,
    /// `None` opens it now.
    pub open: Option<Result<i64, String>>,
    pub close: Result<i64, String>,
}

impl CouponDrop {
    /// Checks a drop for `session` at `now` (reported under `coupon_drop.`).
    pub fn new(session: &str, draft: &CouponDropDraft<'_>, now: i64) -> Result<Self, KitError> {
        let mut v = Violations::default();
        let benefit = v.check(
            "coupon_drop.benefit",
            lianyu_kit::names::parse::<1>(draft.benefit, "benefits/{benefit}")
                .map(|[b]| b.to_owned()),
        );
        if !(1..=MAX_STOCK).contains(&draft.quantity) {
            v.add("coupon_drop.quantity", "must be 1 to 1000000");
        }
        let (start, end) = window(
            &mut v,
            "coupon_drop.open_time",
            "coupon_drop.close_time",
            draft.open.as_ref(),
            &draft.close,
            now,
        );
        v.finish()?;
        let (Some(benefit_id), Some(start), Some(end)) = (benefit, start, end) else {
            return Err(KitError::invalid("coupon_drop", "required"));
        };
        Ok(Self {
            id: uuid::Uuid::now_v7().simple().to_string(),
            session_id: session.to_owned(),
            benefit_id,
            quantity: draft.quantity,
            remaining: draft.quantity,
            window: SaleWindow { start, end },
        })
    }

    /// "sessions/{session}/couponDrops/{drop}".
    pub fn name(&self) -> String {
        format!("sessions/{}/couponDrops/{}", self.session_id, self.id)
    }
}

/// A window from an optional start (now when absent) to an end after both the start and now.
fn window(
    v: &mut Violations,
    start_field: &str,
    end_field: &str,
    start: Option<&Result<i64, String>>,
    end: &Result<i64, String>,
    now: i64,
) -> (Option<i64>, Option<i64>) {
    let start = match start {
        None => Some(now),
        Some(at) => v.check(start_field, at.clone()),
    };
    let end = v.check(
        end_field,
        end.clone().and_then(|end| {
            if end > now && start.is_none_or(|s| end > s) {
                Ok(end)
            } else {
                Err("must be after the start and after now".into())
            }
        }),
    );
    (start, end)
}

/// Where an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderState {
    Placed,
    Cancelled,
}

/// An order as stored: the buyer by mesh id only (`None` once erased at the partner that
/// placed it), with a pseudonym kept for the co-hosts that may not know them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: String,
    pub session_id: String,
    pub member: Option<String>,
    pub pseudonym: String,
    pub placed_by: PartnerId,
    pub product_id: String,
    pub flash_sale_id: Option<String>,
    pub quantity: i32,
    pub amount: Money,
    pub seller: PartnerId,
    pub store: String,
    pub guide: String,
    pub share_code: String,
    pub payment_reference: String,
    pub state: OrderState,
    pub created_at: i64,
}

impl Order {
    /// "sessions/{session}/orders/{order}".
    pub fn name(&self) -> String {
        format!("sessions/{}/orders/{}", self.session_id, self.id)
    }

    /// What `quantity` units at `unit` minor units cost; INVALID_ARGUMENT past i64.
    pub fn price(unit: &Money, quantity: i32) -> Result<Money, KitError> {
        unit.minor_units()
            .checked_mul(i64::from(quantity))
            .and_then(|n| Money::new(unit.currency(), n).ok())
            .ok_or_else(|| KitError::invalid("order.quantity", "the amount is too large"))
    }
}

/// Checks an order's own fields (reported under `order.`): quantity and payment reference.
pub fn check_order(quantity: i32, payment_reference: &str) -> Result<String, KitError> {
    let mut v = Violations::default();
    if !(1..=MAX_PER_MEMBER).contains(&quantity) {
        v.add("order.quantity", "must be 1 to 100");
    }
    let reference = v.check(
        "order.payment_reference",
        text(payment_reference, true, 128),
    );
    v.finish()?;
    Ok(reference.unwrap_or_default())
}

/// A product category: empty, or 1 to 64 of [a-z0-9_-].
fn category(c: &str) -> Result<String, String> {
    if c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        Ok(c.to_owned())
    } else {
        Err("up to 64 of a-z, 0-9, _ and -".into())
    }
}
