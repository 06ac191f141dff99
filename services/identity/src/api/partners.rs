//! PartnerService: partners (created by the operator) and alliances (proposed by a partner,
//! active once every member partner accepts).

use lianyu_kit::KitError;
use lianyu_kit::page::Page;
use lianyu_proto::identity::v1::{self as pb, partner_service_server::PartnerService};
use tonic::{Request, Response, Status};

use super::{Api, caller, convert, status};
use crate::{
    domain::{
        IdentityError, Violations,
        consent::Purpose,
        partner::{
            Alliance, AllianceStatus, Amendment, Partner, PartnerKind, PartnerStatus,
            parse_partner_name, partner_id,
        },
        text,
    },
    store::{Store, now},
};
use lianyu_kit::call::unary;

#[tonic::async_trait]
impl PartnerService for Api {
    async fn create_partner(
        &self,
        request: Request<pb::CreatePartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        if !who.operator {
            return Err(status(KitError::Denied(
                "OPERATOR_ONLY",
                "only the mesh operator creates partners",
            )));
        }
        let r = request.into_inner();
        let row = new_partner(&r).map_err(status)?;
        let out = self
            .mutations
            .run(&call, &r.request_id, &r, async |txn| {
                Ok(convert::partner(&Store::insert_partner(txn, row).await?))
            })
            .await
            .map_err(status)?;
        Ok(Response::new(out))
    }

    async fn get_partner(
        &self,
        request: Request<pb::GetPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let id = parse_partner_name(&request.get_ref().name)
            .map_err(|e| status(KitError::invalid("name", e)))?;
        // A partner sees itself and the partners it shares an alliance with.
        let visible = who.operator
            || Store::allied_with(&self.store.read, &who.partner_id)
                .await
                .map_err(status)?
                .contains(&id);
        let found = Store::partner(&self.store.read, &id)
            .await
            .map_err(status)?
            .filter(|_| visible);
        Ok(Response::new(convert::partner(
            &found
                .ok_or(KitError::NotFound("PARTNER_NOT_FOUND"))
                .map_err(status)?,
        )))
    }

    async fn list_partners(
        &self,
        request: Request<pb::ListPartnersRequest>,
    ) -> Result<Response<pb::ListPartnersResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let r = request.get_ref();
        let page = Page::parse(r.page_size, &r.page_token, &[&who.partner_id]).map_err(status)?;
        let visible = if who.operator {
            None
        } else {
            Some(
                Store::allied_with(&self.store.read, &who.partner_id)
                    .await
                    .map_err(status)?
                    .into_iter()
                    .collect::<Vec<_>>(),
            )
        };
        let mut rows = self
            .store
            .list_partners(visible.as_deref(), &page)
            .await
            .map_err(status)?;
        let more = rows.len() as u64 > page.size;
        rows.truncate(usize::try_from(page.size).unwrap_or(usize::MAX));
        let next_page_token = page.next_token(rows.last().map(|p| p.id.as_str()), more);
        Ok(Response::new(pb::ListPartnersResponse {
            partners: rows.iter().map(convert::partner).collect(),
            next_page_token,
        }))
    }

    async fn update_partner(
        &self,
        request: Request<pb::UpdatePartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        unary(request, async |call, r| {
            self.update_partner_call(&call, &r).await
        })
        .await
    }

    async fn create_store(
        &self,
        request: Request<pb::CreateStoreRequest>,
    ) -> Result<Response<pb::Store>, Status> {
        unary(request, async |call, r| {
            self.create_store_call(&call, &r).await
        })
        .await
    }

    async fn get_store(
        &self,
        request: Request<pb::GetStoreRequest>,
    ) -> Result<Response<pb::Store>, Status> {
        unary(request, async |call, r| {
            self.get_store_call(&call.who, &r.name).await
        })
        .await
    }

    async fn list_stores(
        &self,
        request: Request<pb::ListStoresRequest>,
    ) -> Result<Response<pb::ListStoresResponse>, Status> {
        unary(request, async |call, r| {
            self.list_stores_call(&call.who, &r).await
        })
        .await
    }

    async fn update_store(
        &self,
        request: Request<pb::UpdateStoreRequest>,
    ) -> Result<Response<pb::Store>, Status> {
        unary(request, async |call, r| {
            self.update_store_call(&call, &r).await
        })
        .await
    }

    async fn update_alliance(
        &self,
        request: Request<pb::UpdateAllianceRequest>,
    ) -> Result<Response<pb::Alliance>, Status> {
        unary(request, async |call, r| {
            self.update_alliance_call(&call, &r).await
        })
        .await
    }

    async fn end_alliance(
        &self,
        request: Request<pb::EndAllianceRequest>,
    ) -> Result<Response<pb::Alliance>, Status> {
        unary(request, async |call, r| {
            self.end_alliance_call(&call, &r).await
        })
        .await
    }

    async fn create_alliance(
        &self,
        request: Request<pb::CreateAllianceRequest>,
    ) -> Result<Response<pb::Alliance>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        super::partner_wide(who).map_err(status)?;
        super::not_the_operator(who).map_err(status)?;
        let r = request.into_inner();
        let proposed = new_alliance(&r, &who.partner_id).map_err(status)?;
        let out = self
            .mutations
            .run(&call, &r.request_id, &r, async |txn| {
                // Partners are not looked up: an unknown id gets the same answer as a real one
                // (a proposal that it can never accept), so proposing is no way to learn which
                // partner ids exist.
                Store::insert_alliance(txn, &proposed, now()).await?;
                Ok(convert::alliance(&proposed))
            })
            .await
            .map_err(status)?;
        self.store.alliances.forget();
        Ok(Response::new(out))
    }

    async fn get_alliance(
        &self,
        request: Request<pb::GetAllianceRequest>,
    ) -> Result<Response<pb::Alliance>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        super::partner_wide(who).map_err(status)?;
        let alliance = self
            .member_alliance(&who.partner_id, &request.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::alliance(&alliance)))
    }

    async fn list_alliances(
        &self,
        request: Request<pb::ListAlliancesRequest>,
    ) -> Result<Response<pb::ListAlliancesResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        super::partner_wide(who).map_err(status)?;
        let r = request.get_ref();
        let page = Page::parse(r.page_size, &r.page_token, &[&who.partner_id]).map_err(status)?;
        let all = Store::alliances_of(&self.store.read, &who.partner_id)
            .await
            .map_err(status)?;
        let mut rows: Vec<_> = all
            .into_iter()
            .filter(|a| page.after.as_ref().is_none_or(|after| &a.id > after))
            .collect();
        let more = rows.len() as u64 > page.size;
        rows.truncate(usize::try_from(page.size).unwrap_or(usize::MAX));
        let next_page_token = page.next_token(rows.last().map(|a| a.id.as_str()), more);
        Ok(Response::new(pb::ListAlliancesResponse {
            alliances: rows.iter().map(convert::alliance).collect(),
            next_page_token,
        }))
    }

    async fn accept_alliance(
        &self,
        request: Request<pb::AcceptAllianceRequest>,
    ) -> Result<Response<pb::Alliance>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        super::partner_wide(who).map_err(status)?;
        super::not_the_operator(who).map_err(status)?;
        let r = request.into_inner();
        if r.terms_version < 0 {
            return Err(status(KitError::invalid(
                "terms_version",
                "the alliance's terms_version as read, or 0",
            )));
        }
        let current = self
            .member_alliance(&who.partner_id, &r.name)
            .await
            .map_err(status)?;
        let out = self
            .mutations
            .run(&call, &r.request_id, &r, async |txn| {
                // Read again inside the transaction: new terms saved meanwhile are not undone.
                let mut alliance = Store::alliance_for_update(txn, &current.id)
                    .await?
                    .ok_or(KitError::NotFound("ALLIANCE_NOT_FOUND"))?;
                alliance.accept(&who.partner_id).map_err(|reason| {
                    KitError::Precondition(
                        reason,
                        "the alliance is no longer open for acceptance".into(),
                    )
                })?;
                if r.terms_version != 0 && r.terms_version != alliance.terms_version {
                    return Err(IdentityError::TermsVersionMismatch);
                }
                Store::save_alliance_state(txn, &alliance).await?;
                Ok(convert::alliance(&alliance))
            })
            .await
            .map_err(status)?;
        self.store.alliances.forget();
        Ok(Response::new(out))
    }
}

impl Api {
    /// UpdateAlliance: a member partner changes the alliance. New terms make consents given
    /// under the old ones stale (each grantee hears of it on its feed) and need every partner's
    /// acceptance again.
    async fn update_alliance_call(
        &self,
        call: &lianyu_kit::Call,
        r: &pb::UpdateAllianceRequest,
    ) -> Result<pb::Alliance, IdentityError> {
        let who = &call.who;
        super::partner_wide(who)?;
        let given = r.alliance.clone().unwrap_or_default();
        let paths = lianyu_kit::mask::paths(
            r.update_mask.as_ref(),
            &[
                "display_name",
                "allowed_purposes",
                "data_categories",
                "processing_method",
                "valid_until",
                "accepted_verification_methods",
            ],
        )?;
        let current = self.member_alliance(&who.partner_id, &given.name).await?;
        let mut v = Violations::default();
        let change = Amendment {
            display_name: paths
                .contains("display_name")
                .then(|| {
                    v.check(
                        "alliance.display_name",
                        text(&given.display_name, true, 100),
                    )
                })
                .flatten(),
            purposes: paths
                .contains("allowed_purposes")
                .then(|| purposes(&mut v, &given.allowed_purposes)),
            data_categories: paths
                .contains("data_categories")
                .then(|| categories(&mut v, &given.data_categories)),
            processing_method: paths
                .contains("processing_method")
                .then(|| {
                    v.check(
                        "alliance.processing_method",
                        text(&given.processing_method, true, 500),
                    )
                })
                .flatten(),
            valid_until: paths
                .contains("valid_until")
                .then(|| valid_until(&mut v, given.valid_until.as_ref(), current.valid_from))
                .flatten(),
            accepted_methods: paths
                .contains("accepted_verification_methods")
                .then(|| methods(&mut v, &given.accepted_verification_methods)),
        };
        v.finish()?;
        let out = self
            .mutations.run(call, &r.request_id, r, async |txn| {
                // Read again inside the transaction: a concurrent acceptance is not lost.
                let mut alliance = Store::alliance_for_update(txn, &current.id)
                    .await?
                    .ok_or(KitError::NotFound("ALLIANCE_NOT_FOUND"))?;
                let new_terms = alliance.amend(&who.partner_id, change).map_err(|reason| {
                    KitError::Precondition(reason, "the alliance has ended".into())
                })?;
                Store::save_alliance_state(txn, &alliance).await?;
                if new_terms {
                    // Consents under the old terms stop counting at once (liveness is judged
                    // per check); the sweep announces them as STALE in bounded batches.
                    tracing::info!(alliance = %alliance.id, terms_version = alliance.terms_version, "alliance terms changed");
                }
                Ok(convert::alliance(&alliance))
            })
            .await?;
        self.store.alliances.forget();
        self.store.sweep_wake.notify_one();
        Ok(out)
    }

    /// EndAlliance: any member partner ends it; every consent under it expires at once.
    async fn end_alliance_call(
        &self,
        call: &lianyu_kit::Call,
        r: &pb::EndAllianceRequest,
    ) -> Result<pb::Alliance, IdentityError> {
        let who = &call.who;
        super::partner_wide(who)?;
        let current = self.member_alliance(&who.partner_id, &r.name).await?;
        let out = self
            .mutations
            .run(call, &r.request_id, r, async |txn| {
                let mut alliance = Store::alliance_for_update(txn, &current.id)
                    .await?
                    .ok_or(KitError::NotFound("ALLIANCE_NOT_FOUND"))?;
                if alliance.end() {
                    // Nothing under it counts from now on; the sweep announces each consent
                    // as EXPIRED in bounded batches.
                    Store::save_alliance_state(txn, &alliance).await?;
                    tracing::info!(alliance = %alliance.id, "alliance ended");
                }
                Ok(convert::alliance(&alliance))
            })
            .await?;
        self.store.alliances.forget();
        self.store.sweep_wake.notify_one();
        Ok(out)
    }

    /// The alliance named `name`, if `partner` belongs to it; NOT_FOUND otherwise.
    async fn member_alliance(&self, partner: &str, name: &str) -> Result<Alliance, IdentityError> {
        let id = name
            .strip_prefix("alliances/")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| KitError::invalid("name", "expected alliances/{alliance}"))?;
        Store::alliance(&self.store.read, id)
            .await?
            .filter(|a| a.partners.contains(partner))
            .ok_or(KitError::NotFound("ALLIANCE_NOT_FOUND").into())
    }
}

fn new_partner(r: &pb::CreatePartnerRequest) -> Result<Partner, IdentityError> {
    let mut v = Violations::default();
    let id = v.check("partner_id", partner_id(&r.partner_id));
    let p = r.partner.clone().unwrap_or_default();
    let kind = v.check(
        "partner.kind",
        match lianyu_proto::common::v1::PartnerKind::try_from(p.kind) {
            Ok(lianyu_proto::common::v1::PartnerKind::Brand) => Ok(PartnerKind::Brand),
            Ok(lianyu_proto::common::v1::PartnerKind::Mall) => Ok(PartnerKind::Mall),
            Ok(lianyu_proto::common::v1::PartnerKind::Operator) => Ok(PartnerKind::Operator),
            _ => Err("BRAND, MALL or OPERATOR".into()),
        },
    );
    let display_name = v.check("partner.display_name", text(&p.display_name, true, 100));
    let contact = v.check(
        "partner.privacy_contact",
        text(&p.privacy_contact, true, 200),
    );
    v.finish()?;
    let at = now();
    let (Some(id), Some(kind), Some(display_name), Some(contact)) =
        (id, kind, display_name, contact)
    else {
        return Err(KitError::invalid("partner", "required").into());
    };
    Ok(Partner {
        id,
        kind,
        display_name,
        status: PartnerStatus::Active,
        privacy_contact: contact,
        created_at: at,
        updated_at: at,
    })
}

fn new_alliance(r: &pb::CreateAllianceRequest, proposer: &str) -> Result<Alliance, IdentityError> {
    let mut v = Violations::default();
    let a = r.alliance.clone().unwrap_or_default();
    let display_name = v.check("alliance.display_name", text(&a.display_name, true, 100));
    let mut partners = std::collections::BTreeSet::new();
    for (i, name) in a.partners.iter().enumerate() {
        if let Some(id) = v.check(format!("alliance.partners[{i}]"), parse_partner_name(name)) {
            partners.insert(id);
        }
    }
    if !partners.contains(proposer) {
        v.add("alliance.partners", "must include the proposing partner");
    }
    if partners.len() < 2 {
        v.add(
            "alliance.partners",
            "an alliance joins at least two partners",
        );
    }
    let purposes = purposes(&mut v, &a.allowed_purposes);
    let categories = categories(&mut v, &a.data_categories);
    let method = v.check(
        "alliance.processing_method",
        text(&a.processing_method, true, 500),
    );
    let valid_from = a.valid_from.as_ref().map_or_else(now, convert::millis);
    let valid_until = valid_until(&mut v, a.valid_until.as_ref(), valid_from);
    let accepted_methods = methods(&mut v, &a.accepted_verification_methods);
    v.finish()?;
    Ok(Alliance {
        id: uuid::Uuid::now_v7().simple().to_string(),
        display_name: display_name.unwrap_or_default(),
        partners,
        accepted: [proposer.to_owned()].into(),
        purposes,
        data_categories: categories,
        processing_method: method.unwrap_or_default(),
        valid_from,
        valid_until: valid_until.unwrap_or_default(),
        status: AllianceStatus::Proposed,
        terms_version: 1,
        accepted_methods,
    })
}

/// The verification methods an alliance accepts; UNSPECIFIED cannot be listed (an empty list
/// is how an alliance accepts any method).
fn methods(
    v: &mut Violations,
    given: &[i32],
) -> std::collections::BTreeSet<crate::domain::identifier::Method> {
    use crate::domain::identifier::Method;
    given
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            v.check(
                format!("alliance.accepted_verification_methods[{i}]"),
                Method::from_number(*m)
                    .filter(|m| *m != Method::Unstated)
                    .ok_or_else(|| {
                        "SMS_CODE, WECHAT_PHONE_GRANT, IN_STORE_CHECK or EMAIL_CODE".to_owned()
                    }),
            )
        })
        .collect()
}

fn purposes(v: &mut Violations, given: &[i32]) -> std::collections::BTreeSet<Purpose> {
    if given.is_empty() {
        v.add("alliance.allowed_purposes", "at least one purpose");
    }
    given
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            v.check(
                format!("alliance.allowed_purposes[{i}]"),
                convert::purpose(*p),
            )
        })
        .collect()
}

fn categories(v: &mut Violations, given: &[String]) -> Vec<String> {
    if given.len() > 20 {
        v.add("alliance.data_categories", "at most 20 categories");
    }
    given
        .iter()
        .enumerate()
        .filter_map(|(i, c)| v.check(format!("alliance.data_categories[{i}]"), text(c, true, 64)))
        .collect()
}

/// The end of an alliance's window: required, in the future, after `valid_from`.
fn valid_until(
    v: &mut Violations,
    given: Option<&prost_types::Timestamp>,
    valid_from: i64,
) -> Option<i64> {
    match given.map(convert::millis) {
        None => {
            v.add("alliance.valid_until", "required");
            None
        }
        Some(until) if until <= valid_from.max(now()) => {
            v.add(
                "alliance.valid_until",
                "must be in the future and after valid_from",
            );
            None
        }
        Some(until) => Some(until),
    }
}
