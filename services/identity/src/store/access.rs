//! The access log: append-only, hash-chained through a single head row whose update
//! serialises appenders, so the chain never forks under concurrency.

use lianyu_kit::{page::Page, storage::StorageError};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Condition, Expr, ExprTrait},
};

use super::{
    Store,
    entities::{access_record, audit_head},
};
use crate::domain::{
    IdentityError,
    audit::{Access, AccessRecord, ChainCheck, chain_hash},
};

impl Store {
    /// Appends `reads` in one transaction of their own, committed before the caller answers.
    pub(crate) async fn record_accesses(&self, reads: Vec<Access>) -> Result<(), IdentityError> {
        use sea_orm::TransactionTrait;
        if reads.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await.map_err(StorageError::from)?;
        for read in reads {
            Self::record_access(&txn, read).await?;
        }
        txn.commit().await.map_err(StorageError::from)?;
        Ok(())
    }

    /// Appends one record inside the caller's transaction.
    pub(crate) async fn record_access(
        txn: &impl ConnectionTrait,
        mut access: Access,
    ) -> Result<(), IdentityError> {
        // Bump first: the row lock is held to commit, so the next appender reads our hash.
        audit_head::Entity::update_many()
            .col_expr(
                audit_head::Column::Seq,
                Expr::col(audit_head::Column::Seq).add(1),
            )
            .filter(audit_head::Column::Id.eq(1))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        let head = audit_head::Entity::find_by_id(1)
            .one(txn)
            .await
            .map_err(StorageError::from)?
            .ok_or(StorageError::NotFound)?;
        access.seq = head.seq;
        let hash = chain_hash(&head.hash, &access);
        audit_head::Entity::update_many()
            .col_expr(audit_head::Column::Hash, Expr::value(hash.clone()))
            .filter(audit_head::Column::Id.eq(1))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        access_record::ActiveModel {
            seq: Set(access.seq),
            accessor: Set(access.accessor),
            source: Set(access.source),
            member_id: Set(access.member_id),
            purpose: Set(access.purpose),
            receipt_id: Set(access.receipt_id),
            allowed: Set(access.allowed),
            at: Set(access.at_millis),
            hash: Set(hash),
            via_service: Set((!access.via_service.is_empty()).then_some(access.via_service)),
            acting_partner: Set(
                (!access.acting_partner.is_empty()).then_some(access.acting_partner)
            ),
        }
        .insert(txn)
        .await
        .map_err(StorageError::from)?;
        Ok(())
    }

    /// Walks the whole log in sequence order, a page at a time, then compares with the head.
    /// Returns the check (or the first broken sequence) and the head's hash.
    pub(crate) async fn check_access_log(
        &self,
    ) -> Result<(Result<ChainCheck, i64>, String), IdentityError> {
        const PAGE: u64 = 1_000;
        let head = audit_head::Entity::find_by_id(1)
            .one(&self.read)
            .await
            .map_err(StorageError::from)?
            .ok_or(StorageError::NotFound)?;
        let mut check = ChainCheck::default();
        let mut after = 0;
        loop {
            let rows = access_record::Entity::find()
                .filter(access_record::Column::Seq.gt(after))
                .filter(access_record::Column::Seq.lte(head.seq))
                .order_by_asc(access_record::Column::Seq)
                .limit(PAGE)
                .all(&self.read)
                .await
                .map_err(StorageError::from)?;
            let last_page = (rows.len() as u64) < PAGE;
            for row in rows {
                after = row.seq;
                let record = AccessRecord::from(row);
                if let Err(seq) = check.next(&record.access, &record.chain_hash) {
                    return Ok((Err(seq), head.hash));
                }
            }
            if last_page {
                break;
            }
        }
        let outcome = check.finish(head.seq, &head.hash).map(|()| check);
        Ok((outcome, head.hash))
    }

    /// For each of `ids` merged into another member, that member.
    pub(crate) async fn survivors(
        &self,
        ids: Vec<String>,
    ) -> Result<std::collections::BTreeMap<String, String>, IdentityError> {
        use super::entities::member_merge;
        Ok(member_merge::Entity::find()
            .filter(member_merge::Column::DuplicateId.is_in(ids))
            .all(&self.read)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|m| (m.duplicate_id, m.survivor_id))
            .collect())
    }

    /// Records of `partner`'s reads and of reads of data `partner` provided, optionally for one member.
    pub(crate) async fn access_records(
        &self,
        partner: &str,
        member_id: Option<&str>,
        page: &Page,
    ) -> Result<Vec<AccessRecord>, IdentityError> {
        let mut query = access_record::Entity::find()
            .filter(
                Condition::any()
                    .add(access_record::Column::Accessor.eq(partner.to_owned()))
                    .add(access_record::Column::Source.eq(partner.to_owned())),
            )
            .order_by_asc(access_record::Column::Seq)
            .limit(page.size + 1);
        if let Some(member_id) = member_id {
            // Reads of members merged into this one were recorded under their old ids.
            let ids = Self::member_and_merged(&self.read, member_id).await?;
            query = query.filter(access_record::Column::MemberId.is_in(ids));
        }
        if let Some(after) = page.after.as_deref().and_then(|a| a.parse::<i64>().ok()) {
            query = query.filter(access_record::Column::Seq.gt(after));
        }
        Ok(query
            .all(&self.read)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(AccessRecord::from)
            .collect())
    }
}
