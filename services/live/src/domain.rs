//! The live domain: sessions (their people, guides and revenue shares), products, flash sales
//! and orders, built only through their checking constructors, and the service's own error
//! cases. No gRPC, no SQL.

mod sale;

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    names,
    validate::{Violations, partner, text},
};
use sha2::{Digest, Sha256};

pub use sale::{
    CouponDrop, CouponDropDraft, FlashSale, FlashSaleDraft, MAX_PER_MEMBER, MAX_STOCK, Order,
    OrderState, Product, ProductDraft, SaleWindow, check_order,
};

/// Live's own failures; everything generic is the kit's [`KitError`].
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// NOT_FOUND / SESSION_NOT_FOUND: no such session (the operator reads none).
    #[error("session not found")]
    SessionNotFound,
    /// NOT_FOUND / PRODUCT_NOT_FOUND: no such product in the session.
    #[error("product not found")]
    ProductNotFound,
    /// NOT_FOUND / FLASH_SALE_NOT_FOUND: no such flash sale in the session.
    #[error("flash sale not found")]
    FlashSaleNotFound,
    /// NOT_FOUND / COUPON_DROP_NOT_FOUND: no such coupon drop in the session.
    #[error("coupon drop not found")]
    CouponDropNotFound,
    /// NOT_FOUND / ORDER_NOT_FOUND: no such order that the caller placed or sells.
    #[error("order not found")]
    OrderNotFound,
    /// NOT_FOUND / MEMBER_NOT_FOUND: the calling partner holds no member by that scoped id.
    #[error("member not found")]
    MemberNotFound,
    /// NOT_FOUND / BENEFIT_NOT_FOUND: entitlements holds no such benefit that the calling
    /// partner is party to.
    #[error("benefit not found")]
    BenefitNotFound,
    /// ABORTED / ETAG_MISMATCH: the session changed since the caller read the etag it gave.
    #[error("the session changed since it was read; read it again")]
    EtagMismatch,
    #[error(transparent)]
    Kit(#[from] KitError),
}

/// Where a session stands: SCHEDULED → LIVE → ENDED, or CANCELLED from SCHEDULED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Scheduled,
    Live,
    Ended,
    Cancelled,
}

impl SessionState {
    /// The contract's name of the state, as FAILED_PRECONDITION's metadata carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Scheduled => "SCHEDULED",
            SessionState::Live => "LIVE",
            SessionState::Ended => "ENDED",
            SessionState::Cancelled => "CANCELLED",
        }
    }

    /// FAILED_PRECONDITION / SESSION_STATE for a call that needs another state.
    pub fn refuse(self, needed: &str) -> KitError {
        KitError::WrongState("SESSION_STATE", self.as_str(), needed.to_owned())
    }
}

/// A state change a co-host asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Start,
    End,
    Cancel,
}

/// A shopping guide on air.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guide {
    pub guide_id: String,
    pub display_name: String,
    pub partner: PartnerId,
    /// The guide's store id at `partner`.
    pub store: String,
    pub share_code: String,
}

impl Guide {
    /// "sessions/{session}/guides/{partner}:{guide_id}", as orders and stats name the guide.
    pub fn name(&self, session: &str) -> String {
        format!(
            "sessions/{session}/guides/{}:{}",
            self.partner, self.guide_id
        )
    }

    /// The guide's store as a name.
    pub fn store_name(&self) -> String {
        names::format(
            "partners/{partner}/stores/{store}",
            &[&self.partner, &self.store],
        )
    }
}

/// What co-hosts may change about a session besides its schedule: kept together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub presenters: Vec<String>,
    pub assistants: Vec<PartnerId>,
    pub guides: Vec<Guide>,
    /// Each host's share in basis points, summing to 10,000.
    pub revenue_shares: Vec<(PartnerId, i32)>,
}

/// A session as the service keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub title: String,
    /// The co-hosting partners, the creator first; only they see and change all of it.
    pub hosts: Vec<PartnerId>,
    /// The hosts that have not yet accepted to co-host — at first every host but the creator,
    /// and every host but the changer when the revenue shares change. While any is left the
    /// session does not go LIVE and no other partner sees it; such a host reads the session,
    /// accepts, starts it (accepting) or cancels it (declining).
    pub pending: Vec<PartnerId>,
    /// Whether every host has accepted at least once: from then on other partners see the
    /// session (a later change of revenue shares asks the hosts again before it goes LIVE,
    /// but does not take back what every host agreed to show).
    pub announced: bool,
    /// The hosting store, `(partner, store)`; its partner is one of the hosts.
    pub store: Option<(PartnerId, String)>,
    pub stream_url: String,
    pub scheduled_start_millis: i64,
    pub state: SessionState,
    pub created_by: PartnerId,
    pub profile: Profile,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// Secret to the service: makes buyers' pseudonyms unlinkable across sessions.
    pub salt: String,
}

/// A guide as a co-host describes it, before it is checked.
pub struct GuideDraft<'a> {
    pub guide_id: &'a str,
    pub display_name: &'a str,
    pub partner: &'a str,
    pub store: &'a str,
}

/// The profile as a co-host gives it, before it is checked.
#[derive(Default)]
pub struct ProfileDraft<'a> {
    pub presenters: &'a [String],
    pub assistants: &'a [String],
    pub guides: Vec<GuideDraft<'a>>,
    pub revenue_shares: Vec<(&'a str, i32)>,
}

/// What a partner asks for when it schedules a session, before it is checked.
pub struct SessionDraft<'a> {
    pub title: &'a str,
    pub hosts: &'a [String],
    pub store: &'a str,
    pub stream_url: &'a str,
    pub scheduled_start: Result<i64, String>,
    pub profile: ProfileDraft<'a>,
}

/// At most this many co-hosts (a brand and a mall typically; a joint festival a few more).
pub const MAX_HOSTS: usize = 8;
/// At most this many assisting partners.
pub const MAX_ASSISTANTS: usize = 8;
/// At most this many presenters.
pub const MAX_PRESENTERS: usize = 10;
/// At most this many guides on one session.
pub const MAX_GUIDES: usize = 50;
/// All of a session's revenue, in basis points.
pub const WHOLE_BPS: i32 = 10_000;

impl Session {
    /// Checks a draft from `caller` at `now`: every problem is reported at once, with the
    /// field (under `session.`) it concerns. The caller is always a host.
    pub fn schedule(
        caller: &PartnerId,
        draft: &SessionDraft<'_>,
        now: i64,
    ) -> Result<Self, KitError> {
        let mut v = Violations::default();
        let title = v.check("session.title", text(draft.title, true, 100));
        let mut hosts = vec![caller.clone()];
        v.partners("session.hosts", draft.hosts, MAX_HOSTS, &mut hosts);
        let store = if draft.store.is_empty() {
            None
        } else {
            match names::parse(draft.store, "partners/{partner}/stores/{store}") {
                Ok([partner, store]) if hosts.iter().any(|h| h.as_str() == partner) => {
                    Some((PartnerId::new(partner), store.to_owned()))
                }
                Ok(_) => {
                    v.add("session.store", "must be a store of one of the hosts");
                    None
                }
                Err(e) => {
                    v.add("session.store", e);
                    None
                }
            }
        };
        let stream_url = v.check("session.stream_url", stream_url(draft.stream_url));
        let start = v.check(
            "session.scheduled_start_time",
            future(draft.scheduled_start.clone(), now),
        );
        let mut session = Self {
            id: uuid::Uuid::now_v7().simple().to_string(),
            title: title.unwrap_or_default(),
            pending: hosts.iter().filter(|h| *h != caller).cloned().collect(),
            announced: hosts.len() == 1,
            hosts,
            store,
            stream_url: stream_url.unwrap_or_default(),
            scheduled_start_millis: start.unwrap_or_default(),
            state: SessionState::Scheduled,
            created_by: caller.clone(),
            profile: Profile::default(),
            started_at: None,
            ended_at: None,
            salt: uuid::Uuid::new_v4().simple().to_string(),
        };
        session.profile = session.check_profile(&mut v, &draft.profile, Fields::all());
        v.finish()?;
        Ok(session)
    }

    /// Checks the parts of `draft` named in `fields` against this session (its hosts and
    /// store), reporting under `session.`; the parts not named stay as they are. A guide that
    /// stays (same partner and id) keeps its share code; a new one gets a fresh code.
    pub fn check_profile(
        &self,
        v: &mut Violations,
        draft: &ProfileDraft<'_>,
        fields: Fields,
    ) -> Profile {
        let mut out = self.profile.clone();
        if fields.presenters {
            if draft.presenters.len() > MAX_PRESENTERS {
                v.add(
                    "session.presenters",
                    format!("at most {MAX_PRESENTERS} presenters"),
                );
            }
            out.presenters = draft
                .presenters
                .iter()
                .enumerate()
                .filter_map(|(i, p)| v.check(format!("session.presenters[{i}]"), text(p, true, 60)))
                .collect();
        }
        if fields.assistants {
            let mut assistants = Vec::new();
            v.partners(
                "session.assistants",
                draft.assistants,
                MAX_ASSISTANTS,
                &mut assistants,
            );
            out.assistants = assistants;
        }
        if fields.guides {
            out.guides = self.check_guides(v, &draft.guides);
        }
        if fields.revenue_shares {
            out.revenue_shares = self.check_shares(v, &draft.revenue_shares);
        }
        out
    }

    fn check_guides(&self, v: &mut Violations, drafts: &[GuideDraft<'_>]) -> Vec<Guide> {
        if drafts.len() > MAX_GUIDES {
            v.add("session.guides", format!("at most {MAX_GUIDES} guides"));
        }
        let mut guides: Vec<Guide> = Vec::new();
        for (i, g) in drafts.iter().enumerate() {
            let field = |f: &str| format!("session.guides[{i}].{f}");
            let id = v.check(field("guide_id"), guide_id(g.guide_id));
            let display_name = v.check(field("display_name"), text(g.display_name, true, 60));
            let employer = match partner(g.partner) {
                Ok(p) if self.hosted_by(&p) => Some(p),
                Ok(_) => {
                    v.add(field("partner"), "must be one of the hosts");
                    None
                }
                Err(e) => {
                    v.add(field("partner"), e);
                    None
                }
            };
            let store = employer
                .as_ref()
                .and_then(|p| self.guide_store(v, &field("store"), p, g.store));
            let (Some(id), Some(display_name), Some(employer), Some(store)) =
                (id, display_name, employer, store)
            else {
                continue;
            };
            if guides
                .iter()
                .any(|o| o.partner == employer && o.guide_id == id)
            {
                v.add(field("guide_id"), "already on the session for that partner");
                continue;
            }
            let share_code = self
                .profile
                .guides
                .iter()
                .find(|o| o.partner == employer && o.guide_id == id)
                .map(|o| o.share_code.clone())
                .unwrap_or_else(|| fresh_code(&guides, &self.profile.guides));
            guides.push(Guide {
                guide_id: id,
                display_name,
                partner: employer,
                store,
                share_code,
            });
        }
        guides
    }

    /// A guide's store id: the named one (of the guide's partner), else the session's store
    /// when the guide's partner hosts it.
    fn guide_store(
        &self,
        v: &mut Violations,
        field: &str,
        employer: &PartnerId,
        given: &str,
    ) -> Option<String> {
        if given.is_empty() {
            return match &self.store {
                Some((p, s)) if p == employer => Some(s.clone()),
                _ => {
                    v.add(
                        field,
                        "required: the session's store is not the guide's partner's",
                    );
                    None
                }
            };
        }
        match names::parse(given, "partners/{partner}/stores/{store}") {
            Ok([p, s]) if p == employer.as_str() => Some(s.to_owned()),
            Ok(_) => {
                v.add(field, "must be a store of the guide's partner");
                None
            }
            Err(e) => {
                v.add(field, e);
                None
            }
        }
    }

    fn check_shares(&self, v: &mut Violations, given: &[(&str, i32)]) -> Vec<(PartnerId, i32)> {
        if given.is_empty() {
            return vec![(self.created_by.clone(), WHOLE_BPS)];
        }
        let mut shares: Vec<(PartnerId, i32)> = Vec::new();
        let before = v.len();
        for (i, (name, bps)) in given.iter().enumerate() {
            let field = |f: &str| format!("session.revenue_shares[{i}].{f}");
            match partner(name) {
                Ok(p) if !self.hosted_by(&p) => v.add(field("partner"), "must be one of the hosts"),
                Ok(p) if shares.iter().any(|(o, _)| *o == p) => {
                    v.add(field("partner"), "already has a share")
                }
                Ok(p) => shares.push((p, *bps)),
                Err(e) => v.add(field("partner"), e),
            }
            if !(0..=WHOLE_BPS).contains(bps) {
                v.add(field("share_bps"), "must be 0 to 10000");
            }
        }
        let total: i64 = shares.iter().map(|(_, b)| i64::from(*b)).sum();
        if v.len() == before && total != i64::from(WHOLE_BPS) {
            v.add(
                "session.revenue_shares",
                format!("must sum to 10000 basis points, not {total}"),
            );
        }
        shares
    }

    /// Whether `partner` is a host that has not yet accepted.
    pub fn awaits(&self, partner: &str) -> bool {
        self.pending.iter().any(|p| p.as_str() == partner)
    }

    /// Records that the host `partner` accepted to co-host.
    pub fn accept(&mut self, partner: &str) {
        self.pending.retain(|p| p.as_str() != partner);
        self.announced |= self.pending.is_empty();
    }

    /// The revenue shares change to `shares` by the host `by`: a change of the money terms is
    /// the other hosts' to accept again, so it is made only while SCHEDULED (SESSION_STATE
    /// otherwise) and leaves every other host pending. Returns whether anything changed (the
    /// same shares in another order are no change).
    pub fn reshare(&mut self, by: &str, shares: Vec<(PartnerId, i32)>) -> Result<bool, KitError> {
        let sorted = |v: &[(PartnerId, i32)]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        if sorted(&shares) == sorted(&self.profile.revenue_shares) {
            return Ok(false);
        }
        if self.state != SessionState::Scheduled {
            return Err(self
                .state
                .refuse("revenue shares change only while SCHEDULED"));
        }
        self.profile.revenue_shares = shares;
        self.pending = self
            .hosts
            .iter()
            .filter(|h| h.as_str() != by)
            .cloned()
            .collect();
        Ok(true)
    }

    /// Applies a co-host's transition at `now`, or says why the session does not allow it: a
    /// session goes LIVE only once every host has accepted (HOSTS_NOT_ACCEPTED names those
    /// left).
    pub fn transition(&mut self, to: Transition, now: i64) -> Result<(), KitError> {
        match (to, self.state) {
            (Transition::Start, SessionState::Scheduled) if !self.pending.is_empty() => {
                let waiting: Vec<String> = self
                    .pending
                    .iter()
                    .map(|p| format!("partners/{p}"))
                    .collect();
                return Err(KitError::WrongState(
                    "HOSTS_NOT_ACCEPTED",
                    SessionState::Scheduled.as_str(),
                    format!("waiting for {} to accept co-hosting", waiting.join(", ")),
                ));
            }
            (Transition::Start, SessionState::Scheduled) => {
                self.state = SessionState::Live;
                self.started_at = Some(now);
            }
            (Transition::End, SessionState::Live) => {
                self.state = SessionState::Ended;
                self.ended_at = Some(now);
            }
            (Transition::Cancel, SessionState::Scheduled) => {
                self.state = SessionState::Cancelled;
                self.ended_at = Some(now);
            }
            (Transition::Start | Transition::Cancel, state) => {
                return Err(state.refuse("only a SCHEDULED session"));
            }
            (Transition::End, state) => return Err(state.refuse("only a LIVE session")),
        }
        Ok(())
    }

    /// Whether `partner` co-hosts the session (and so may see and change it).
    pub fn hosted_by(&self, partner: &str) -> bool {
        self.hosts.iter().any(|h| h.as_str() == partner)
    }

    /// Whether `partner` may pin products and post announcements: a host or an assistant.
    pub fn assisted_by(&self, partner: &str) -> bool {
        self.hosted_by(partner)
            || self
                .profile
                .assistants
                .iter()
                .any(|a| a.as_str() == partner)
    }

    /// The session's store as a name, "partners/{partner}/stores/{store}".
    pub fn store_name(&self) -> Option<String> {
        self.store
            .as_ref()
            .map(|(p, id)| names::format("partners/{partner}/stores/{store}", &[p, id]))
    }

    /// Whether a caller sees all of the session: a co-host — and, with a store token
    /// (`own_store`), only a session in that store, as a store acts only within itself.
    pub fn visible_to(&self, partner: &str, own_store: Option<&str>) -> bool {
        self.hosted_by(partner)
            && own_store.is_none_or(|own| self.store_name().as_deref() == Some(own))
    }

    /// The guide whose share code this is.
    pub fn guide_by_code(&self, code: &str) -> Option<&Guide> {
        self.profile.guides.iter().find(|g| g.share_code == code)
    }

    /// Who an order is credited to: the store (the guide's, else the session's) and the guide
    /// whose share code it carries (empty for none). An unknown code is an error for
    /// `order.share_code`.
    pub fn attribute(&self, share_code: &str) -> Result<(String, String), String> {
        if share_code.is_empty() {
            return Ok((self.store_name().unwrap_or_default(), String::new()));
        }
        let guide = self
            .guide_by_code(share_code)
            .ok_or("not a share code of this session's guides")?;
        Ok((guide.store_name(), guide.name(&self.id)))
    }

    /// A buyer's pseudonym in this session: the same member always gets the same one here,
    /// and nobody can link it to the member or to their pseudonym in another session.
    pub fn pseudonym(&self, mesh_member: &str) -> String {
        self.hashed(0, mesh_member)
    }

    /// The pseudonym of an order whose buyer was erased at the partner that placed it: its
    /// own, linked to nothing — not to the buyer's pseudonym, which their orders through
    /// other partners keep, nor to the buyer's other erased orders. (With the buyer's
    /// pseudonym, the erasing partner would learn, from the orders it sees by that pseudonym,
    /// what the person bought through the other co-host.)
    pub fn erased_pseudonym(&self, order_id: &str) -> String {
        self.hashed(1, order_id)
    }

    fn hashed(&self, domain: u8, value: &str) -> String {
        let digest = Sha256::new()
            .chain_update(self.salt.as_bytes())
            .chain_update([domain])
            .chain_update(value.as_bytes())
            .finalize();
        format!("buyers/{}", lianyu_kit::keycodec::hex(&digest[..10]))
    }

    /// Each host's share of `gross` minor units by the revenue shares; the rounding remainder
    /// goes to the first line, so the parts always add up to `gross`.
    pub fn split(&self, gross: i64) -> Vec<(PartnerId, i64)> {
        let mut parts: Vec<(PartnerId, i64)> = self
            .profile
            .revenue_shares
            .iter()
            .map(|(p, bps)| {
                let part = i128::from(gross) * i128::from(*bps) / i128::from(WHOLE_BPS);
                (p.clone(), i64::try_from(part).unwrap_or(0))
            })
            .collect();
        let rest = gross - parts.iter().map(|(_, a)| a).sum::<i64>();
        if let Some(first) = parts.first_mut() {
            first.1 += rest;
        }
        parts
    }
}

/// Which profile parts an update names.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields {
    pub presenters: bool,
    pub assistants: bool,
    pub guides: bool,
    pub revenue_shares: bool,
}

impl Fields {
    pub fn all() -> Self {
        Self {
            presenters: true,
            assistants: true,
            guides: true,
            revenue_shares: true,
        }
    }
}

/// A time that must lie after `now`.
pub fn future(at: Result<i64, String>, now: i64) -> Result<i64, String> {
    at.and_then(|at| {
        if at > now {
            Ok(at)
        } else {
            Err("must be in the future".into())
        }
    })
}

/// Where viewers' players fetch the stream: an https or rtmp(s) URL, or empty until it is known.
pub fn stream_url(url: &str) -> Result<String, String> {
    let url = text(url, false, 500)?;
    if url.is_empty()
        || ["https://", "rtmp://", "rtmps://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
    {
        Ok(url)
    } else {
        Err("must be an https, rtmp or rtmps URL".into())
    }
}

/// A partner's own id for a guide: 1 to 64 of [A-Za-z0-9_-].
fn guide_id(id: &str) -> Result<String, String> {
    if (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(id.to_owned())
    } else {
        Err("1 to 64 of A-Z, a-z, 0-9, _ and -".into())
    }
}

/// A share code no guide of the session holds: 8 characters that read unambiguously.
fn fresh_code(taken: &[Guide], kept: &[Guide]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
    loop {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let code: String = bytes[..8]
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
            .collect();
        if !taken.iter().chain(kept).any(|g| g.share_code == code) {
            return code;
        }
    }
}

#[cfg(test)]
mod tests;
