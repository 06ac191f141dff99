//! A partner's stores (PartnerService's store calls) and partner updates. A partner manages
//! only its own stores; any other partner's store is NOT_FOUND.

use lianyu_kit::KitError;
use lianyu_kit::{Call, Principal, mask, page::Page};
use lianyu_proto::identity::internal::v1::MeshEventKind;
use lianyu_proto::identity::v1 as pb;

use super::{Api, convert};
use crate::{
    domain::{
        IdentityError, Violations,
        partner::{PartnerStatus, PartnerStore, parse_partner_name, parse_store_name, partner_id},
        text,
    },
    store::{
        Store,
        mesh::{MeshEvent, append_mesh},
        now,
    },
};

impl Api {
    pub(super) async fn create_store_call(
        &self,
        call: &Call,
        r: &pb::CreateStoreRequest,
    ) -> Result<pb::Store, IdentityError> {
        let who = &call.who;
        super::partner_wide(who)?;
        let partner = own_parent(who, &r.parent)?;
        let row = new_store(&partner, r)?;
        self.mutations
            .run(call, &r.request_id, r, async |txn| {
                Ok(convert::store(&Store::insert_store(txn, row).await?))
            })
            .await
    }

    pub(super) async fn get_store_call(
        &self,
        who: &Principal,
        name: &str,
    ) -> Result<pb::Store, IdentityError> {
        let (partner, id) = own_store(who, name)?;
        Store::store(&self.store.read, &partner, &id)
            .await?
            .map(|s| convert::store(&s))
            .ok_or(KitError::NotFound("STORE_NOT_FOUND").into())
    }

    pub(super) async fn list_stores_call(
        &self,
        who: &Principal,
        r: &pb::ListStoresRequest,
    ) -> Result<pb::ListStoresResponse, IdentityError> {
        let partner = own_parent(who, &r.parent)?;
        let page = Page::parse(r.page_size, &r.page_token, &[&partner])?;
        let mut rows = self.store.list_stores(&partner, &page).await?;
        // A store token sees its own store only.
        if let Some(own) = &who.store {
            rows.retain(|s| &format!("partners/{}/stores/{}", s.partner_id, s.id) == own);
        }
        let (rows, next_page_token) = page.finish(rows, |s| s.id.clone());
        Ok(pb::ListStoresResponse {
            stores: rows.iter().map(convert::store).collect(),
            next_page_token,
        })
    }

    pub(super) async fn update_store_call(
        &self,
        call: &Call,
        r: &pb::UpdateStoreRequest,
    ) -> Result<pb::Store, IdentityError> {
        let who = &call.who;
        super::partner_wide(who)?;
        let given = r.store.clone().unwrap_or_default();
        let (partner, id) = own_store(who, &given.name)?;
        let paths = mask::paths(r.update_mask.as_ref(), &["display_name", "city", "active"])?;
        let mut v = Violations::default();
        let display_name = paths
            .contains("display_name")
            .then(|| v.check("store.display_name", text(&given.display_name, true, 100)))
            .flatten();
        let city = paths
            .contains("city")
            .then(|| v.check("store.city", text(&given.city, false, 64)))
            .flatten();
        v.finish()?;
        let name = format!("partners/{partner}/stores/{id}");
        let updated = self
            .mutations
            .run(call, &r.request_id, r, async |txn| {
                let mut row = Store::store_for_update(txn, &partner, &id)
                    .await?
                    .ok_or(KitError::NotFound("STORE_NOT_FOUND"))?;
                if let Some(name) = display_name {
                    row.display_name = name;
                }
                if let Some(city) = city {
                    row.city = city;
                }
                if paths.contains("active") && row.active != given.active {
                    row.active = given.active;
                    append_mesh(
                        &self.store.feed,
                        txn,
                        if given.active {
                            MeshEventKind::StoreReopened
                        } else {
                            MeshEventKind::StoreClosed
                        },
                        MeshEvent {
                            partner: &partner,
                            store: &name,
                            ..Default::default()
                        },
                    )
                    .await?;
                }
                row.updated_at = now();
                Ok(convert::store(&Store::save_store(txn, row).await?))
            })
            .await?;
        // Closing (or reopening) takes effect on this process's tokens before the answer —
        // every service of `lianyu up` shares the verifier; other replicas and standalone
        // services learn it from the mesh feed. Applied from the committed events, in order:
        // a replay, answered with its stored reply, changes nothing.
        self.store.refusals.catch_up(&self.store.feed).await;
        Ok(updated)
    }

    pub(super) async fn update_partner_call(
        &self,
        call: &Call,
        r: &pb::UpdatePartnerRequest,
    ) -> Result<pb::Partner, IdentityError> {
        let who = &call.who;
        super::partner_wide(who)?;
        let given = r.partner.clone().unwrap_or_default();
        let id =
            parse_partner_name(&given.name).map_err(|e| KitError::invalid("partner.name", e))?;
        if !(who.operator || who.partner_id == id) {
            return Err(KitError::NotFound("PARTNER_NOT_FOUND").into());
        }
        let paths = mask::paths(
            r.update_mask.as_ref(),
            &["display_name", "privacy_contact", "status"],
        )?;
        let mut v = Violations::default();
        let display_name = paths
            .contains("display_name")
            .then(|| v.check("partner.display_name", text(&given.display_name, true, 100)))
            .flatten();
        let contact = paths
            .contains("privacy_contact")
            .then(|| {
                v.check(
                    "partner.privacy_contact",
                    text(&given.privacy_contact, true, 200),
                )
            })
            .flatten();
        let new_status = if paths.contains("status") {
            match pb::PartnerStatus::try_from(given.status) {
                Ok(pb::PartnerStatus::Active) => Some(PartnerStatus::Active),
                Ok(pb::PartnerStatus::Suspended) => Some(PartnerStatus::Suspended),
                _ => {
                    v.add("partner.status", "ACTIVE or SUSPENDED");
                    None
                }
            }
        } else {
            None
        };
        v.finish()?;
        if new_status.is_some() && !who.operator {
            return Err(KitError::Denied(
                "OPERATOR_ONLY",
                "only the mesh operator suspends or reinstates a partner",
            )
            .into());
        }
        // The operator suspends and reinstates; a partner's name and privacy contact are its
        // own to state (they are what members read on their receipts).
        if who.partner_id != id && (display_name.is_some() || contact.is_some()) {
            return Err(KitError::Denied(
                "PARTNER_SETTINGS_OWN_ONLY",
                "only the partner itself changes its display name and privacy contact",
            )
            .into());
        }
        let updated = self
            .mutations
            .run(call, &r.request_id, r, async |txn| {
                let mut row = Store::partner_for_update(txn, &id)
                    .await?
                    .ok_or(KitError::NotFound("PARTNER_NOT_FOUND"))?;
                if let Some(name) = display_name {
                    row.display_name = name;
                }
                if let Some(contact) = contact {
                    row.privacy_contact = contact;
                }
                if let Some(s) = new_status
                    && s != row.status
                {
                    row.status = s;
                    append_mesh(
                        &self.store.feed,
                        txn,
                        if s == PartnerStatus::Suspended {
                            MeshEventKind::PartnerSuspended
                        } else {
                            MeshEventKind::PartnerReinstated
                        },
                        MeshEvent {
                            partner: &id,
                            ..Default::default()
                        },
                    )
                    .await?;
                }
                row.updated_at = now();
                Ok(convert::partner(&Store::save_partner(txn, row).await?))
            })
            .await?;
        // Suspension (and reinstatement) takes effect on this process's tokens before the
        // answer, from the committed events in order (as a store's closing); other replicas
        // and standalone services learn it from the mesh feed and GetSigningKeys.
        self.store.refusals.catch_up(&self.store.feed).await;
        Ok(updated)
    }
}

/// The partner in `parent` when it is the caller; NOT_FOUND otherwise (a partner manages only
/// its own stores).
fn own_parent(who: &Principal, parent: &str) -> Result<String, IdentityError> {
    let partner = parse_partner_name(parent).map_err(|e| KitError::invalid("parent", e))?;
    if who.partner_id == partner {
        Ok(partner)
    } else {
        Err(KitError::NotFound("PARTNER_NOT_FOUND").into())
    }
}

/// The store named `name` when the caller's partner owns it — and, for a store token, when it
/// is the token's own store; NOT_FOUND otherwise.
fn own_store(who: &Principal, name: &str) -> Result<(String, String), IdentityError> {
    let (partner, id) = parse_store_name(name).map_err(|e| KitError::invalid("name", e))?;
    let narrowed_elsewhere = who
        .store
        .as_ref()
        .is_some_and(|own| own != &format!("partners/{partner}/stores/{id}"));
    if who.partner_id == partner && !narrowed_elsewhere {
        Ok((partner, id))
    } else {
        Err(KitError::NotFound("STORE_NOT_FOUND").into())
    }
}

fn new_store(partner: &str, r: &pb::CreateStoreRequest) -> Result<PartnerStore, IdentityError> {
    let mut v = Violations::default();
    let id = v.check("store_id", partner_id(&r.store_id));
    let s = r.store.clone().unwrap_or_default();
    let display_name = v.check("store.display_name", text(&s.display_name, true, 100));
    let city = v.check("store.city", text(&s.city, false, 64));
    v.finish()?;
    let at = now();
    Ok(PartnerStore {
        partner_id: partner.to_owned(),
        id: id.unwrap_or_default(),
        display_name: display_name.unwrap_or_default(),
        city: city.unwrap_or_default(),
        active: true,
        created_at: at,
        updated_at: at,
    })
}
