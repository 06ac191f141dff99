//! AuditService: the access records a partner may see — its own reads, and reads of data it
//! provided — with members named by the caller's own scoped ids.

use lianyu_kit::KitError;
use lianyu_kit::ids::MeshMemberId;
use lianyu_kit::page::Page;
use lianyu_proto::identity::v1::{self as pb, audit_service_server::AuditService};
use tonic::{Request, Response, Status};

use super::{Api, caller, convert, status};
use crate::{domain::IdentityError, store::Store};

#[tonic::async_trait]
impl AuditService for Api {
    async fn list_access_records(
        &self,
        request: Request<pb::ListAccessRecordsRequest>,
    ) -> Result<Response<pb::ListAccessRecordsResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        let r = request.get_ref();
        let page = Page::parse(r.page_size, &r.page_token, &[&who.partner_id, &r.member])
            .map_err(status)?;
        let member_id = if r.member.is_empty() {
            None
        } else {
            let scoped = convert::member_name(&r.member)
                .map_err(|e| status(KitError::invalid("member", e)))?;
            Some(
                Store::member_for(&self.store.read, &who.partner_id, &scoped)
                    .await
                    .map_err(status)?,
            )
        };
        let (records, next_page_token) = self
            .access_records(&who.partner_id, member_id.as_deref(), &page)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAccessRecordsResponse {
            records,
            next_page_token,
        }))
    }

    async fn check_access_log(
        &self,
        request: Request<pb::CheckAccessLogRequest>,
    ) -> Result<Response<pb::CheckAccessLogResponse>, Status> {
        let call = caller(&request)?;
        let who = &call.who;
        if !who.operator {
            return Err(status(KitError::Denied(
                "OPERATOR_ONLY",
                "only the mesh operator checks the whole access log",
            )));
        }
        let (check, head_hash) = self.store.check_access_log().await.map_err(status)?;
        let broken = check.as_ref().err().copied().unwrap_or(0);
        if broken != 0 {
            tracing::error!(
                first_broken_sequence = broken,
                "the access log's hash chain is broken"
            );
        }
        Ok(Response::new(pb::CheckAccessLogResponse {
            intact: check.is_ok(),
            records_checked: check.as_ref().map_or(0, |c| c.checked),
            first_broken_sequence: broken,
            head_hash,
        }))
    }
}

impl Api {
    /// One page of the records `who` may see, optionally about one member.
    pub(super) async fn access_records(
        &self,
        who: &str,
        member_id: Option<&str>,
        page: &Page,
    ) -> Result<(Vec<pb::AccessRecord>, String), IdentityError> {
        let records = self.store.access_records(who, member_id, page).await?;
        let (records, next_page_token) = page.finish(records, |r| r.access.seq.to_string());
        let rows: Vec<_> = records.iter().map(|r| &r.access).collect();
        // A record made before a merge names the merged-away member: name its survivor.
        let survivors = self
            .store
            .survivors(rows.iter().map(|r| r.member_id.clone()).collect())
            .await?;
        let current = |id: &String| survivors.get(id).unwrap_or(id).clone();
        let members: Vec<MeshMemberId> = rows
            .iter()
            .map(|r| MeshMemberId::new(current(&r.member_id)))
            .collect();
        let scoped =
            Store::scoped_ids_of(&self.store.read, &self.store.secrets, who, &members).await?;
        let records = rows
            .iter()
            .zip(&records)
            .map(|(row, record)| pb::AccessRecord {
                name: format!("accessRecords/{}", row.seq),
                accessor: format!("partners/{}", row.accessor),
                member: scoped
                    .get(current(&row.member_id).as_str())
                    .map(|s| format!("members/{s}"))
                    .unwrap_or_default(),
                purpose: row.purpose,
                consent_receipt: if row.receipt_id.is_empty() {
                    String::new()
                } else {
                    format!("consentReceipts/{}", row.receipt_id)
                },
                access_time: convert::timestamp(row.at_millis),
                allowed: row.allowed,
                chain_hash: record.chain_hash.clone(),
                via_service: row.via_service.clone(),
                acting_partner: if row.acting_partner.is_empty() {
                    String::new()
                } else {
                    format!("partners/{}", row.acting_partner)
                },
            })
            .collect();
        Ok((records, next_page_token))
    }
}
