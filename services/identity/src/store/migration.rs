//! The identity schema, created from the entities, with the unique keys that make linking
//! decisions race-free.

use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, sea_query::Index};
use sea_orm_migration::{
    MigrationName, MigrationTrait, SchemaManager, async_trait::async_trait, prelude::DbErr,
};

use lianyu_kit::storage::create_entity_table;

use super::entities::*;

pub(crate) struct IdentityTables;

impl MigrationName for IdentityTables {
    fn name(&self) -> &str {
        "m20261122_000002_identity_tables"
    }
}

#[async_trait]
impl MigrationTrait for IdentityTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, partner::Entity).await?;
        create_entity_table(manager, alliance::Entity).await?;
        create_entity_table(manager, alliance_partner::Entity).await?;
        create_entity_table(manager, member::Entity).await?;
        create_entity_table(manager, identifier::Entity).await?;
        create_entity_table(manager, profile::Entity).await?;
        create_entity_table(manager, scoped_id::Entity).await?;
        create_entity_table(manager, consent_receipt::Entity).await?;
        create_entity_table(manager, consent::Entity).await?;
        create_entity_table(manager, access_record::Entity).await?;
        create_entity_table(manager, audit_head::Entity).await?;
        // A partner holds one record per identifier: enrolling it again finds the same member.
        manager
            .create_index(
                Index::create()
                    .name("identifiers_partner_unique")
                    .table(identifier::Entity)
                    .col(identifier::Column::PartnerId)
                    .col(identifier::Column::LookupHash)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        if audit_head::Entity::find_by_id(1).one(db).await?.is_none() {
            audit_head::ActiveModel {
                id: Set(1),
                seq: Set(0),
                hash: Set(crate::domain::audit::GENESIS.to_owned()),
            }
            .insert(db)
            .await?;
        }
        Ok(())
    }
}

/// Stores, credentials, member merges, and the index the consent-expiry sweep reads.
pub(crate) struct StoresAndCredentials;

impl MigrationName for StoresAndCredentials {
    fn name(&self) -> &str {
        "m20261123_000003_stores_credentials"
    }
}

#[async_trait]
impl MigrationTrait for StoresAndCredentials {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, store::Entity).await?;
        create_entity_table(manager, credential::Entity).await?;
        create_entity_table(manager, member_merge::Entity).await?;
        // The expiry sweep's range query.
        manager
            .create_index(
                Index::create()
                    .name("consents_state_valid_until")
                    .table(consent::Entity)
                    .col(consent::Column::State)
                    .col(consent::Column::ValidUntil)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// The trust model: how each identifier was verified and which methods an alliance accepts
/// (linking across partners), per-partner erasure of scoped ids, and the terms a receipt was
/// given under (a receipt reads STALE after new terms).
pub(crate) struct TrustModel;

impl MigrationName for TrustModel {
    fn name(&self) -> &str {
        "m20261202_000004_trust_model"
    }
}

#[async_trait]
impl MigrationTrait for TrustModel {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm::sea_query::{Alias, ColumnDef, Table};
        // Tables made by IdentityTables after this change already have the columns.
        let columns = [
            (
                "identifiers",
                ColumnDef::new(Alias::new("verification_method"))
                    .string()
                    .not_null()
                    .default("")
                    .to_owned(),
            ),
            (
                "alliances",
                ColumnDef::new(Alias::new("accepted_methods"))
                    .string()
                    .not_null()
                    .default("")
                    .to_owned(),
            ),
            (
                "scoped_ids",
                ColumnDef::new(Alias::new("erased_at"))
                    .big_integer()
                    .null()
                    .to_owned(),
            ),
            (
                "consent_receipts",
                ColumnDef::new(Alias::new("terms_version"))
                    .big_integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
            ),
        ];
        for (table, mut column) in columns {
            let name = column.get_column_name();
            if !manager.has_column(table, &name).await? {
                manager
                    .alter_table(
                        Table::alter()
                            .table(Alias::new(table))
                            .add_column(&mut column)
                            .to_owned(),
                    )
                    .await?;
            }
        }
        // Erasure and merge find a member's consents by party.
        manager
            .create_index(
                Index::create()
                    .name("consents_member_collector")
                    .table(consent::Entity)
                    .col(consent::Column::MemberId)
                    .col(consent::Column::Collector)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// Access records say which mesh service asked, for which partner (identity's internal
/// CheckConsents).
pub(crate) struct ServiceAudit;

impl MigrationName for ServiceAudit {
    fn name(&self) -> &str {
        "m20261203_000006_service_audit"
    }
}

#[async_trait]
impl MigrationTrait for ServiceAudit {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm::sea_query::{Alias, ColumnDef, Table};
        for column in ["via_service", "acting_partner"] {
            if !manager.has_column("access_records", column).await? {
                manager
                    .alter_table(
                        Table::alter()
                            .table(Alias::new("access_records"))
                            .add_column(ColumnDef::new(Alias::new(column)).string().null())
                            .to_owned(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

/// Fewer index entries per enrolment, each a page of its own to write when its key is random:
/// identifiers are found by hash through one unique (hash, partner) index instead of a hash
/// index beside a unique (partner, hash) one (every query by partner also names the hash or
/// the member), and scoped ids by member through one (member, partner) index instead of one
/// on each (no query looks a partner's scoped ids up without the member or the id).
pub(crate) struct FewerIndexEntries;

impl MigrationName for FewerIndexEntries {
    fn name(&self) -> &str {
        "m20261206_000010_fewer_index_entries"
    }
}

#[async_trait]
impl MigrationTrait for FewerIndexEntries {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("identifiers_hash_partner_unique")
                    .table(identifier::Entity)
                    .col(identifier::Column::LookupHash)
                    .col(identifier::Column::PartnerId)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("scoped_ids_member_partner")
                    .table(scoped_id::Entity)
                    .col(scoped_id::Column::MemberId)
                    .col(scoped_id::Column::PartnerId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        for (table, index) in [
            ("identifiers", "identifiers_partner_unique"),
            ("identifiers", "idx-identifiers-lookup_hash"),
            ("scoped_ids", "idx-scoped_ids-partner_id"),
            ("scoped_ids", "idx-scoped_ids-member_id"),
        ] {
            manager
                .drop_index(
                    Index::drop()
                        .name(index)
                        .table(sea_orm::sea_query::Alias::new(table))
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// The consent feed stored as the contract's own messages: events appended before this
/// release held a JSON record; each is rewritten, in place and in sequence order, as the
/// `WatchConsentEventsResponse` it stands for, so a watcher resuming from an old cursor misses
/// nothing. Rows that are already messages (a rerun) are left as they are.
pub(crate) struct TypedConsentFeed;

impl MigrationName for TypedConsentFeed {
    fn name(&self) -> &str {
        "m20261202_000005_typed_consent_feed"
    }
}

/// The JSON an event was stored as before.
#[derive(serde::Deserialize)]
struct LegacyEvent {
    kind: String,
    member: String,
    grantee: String,
    purposes: Vec<i32>,
}

impl LegacyEvent {
    fn into_message(self) -> Option<lianyu_proto::identity::v1::WatchConsentEventsResponse> {
        use lianyu_proto::identity::v1::ConsentEventKind as Kind;
        let kind = match self.kind.as_str() {
            "granted" => Kind::Granted,
            "withdrawn" => Kind::Withdrawn,
            "expired" => Kind::Expired,
            "stale" => Kind::Stale,
            "erased" => Kind::MemberErased,
            "erasure_requested" => Kind::ErasureRequested,
            "merged" => Kind::MembersMerged,
            _ => return None,
        };
        Some(lianyu_proto::identity::v1::WatchConsentEventsResponse {
            cursor: None,
            kind: kind as i32,
            member: if self.member.is_empty() {
                String::new()
            } else {
                format!("members/{}", self.member)
            },
            grantee: if kind == Kind::ErasureRequested {
                String::new()
            } else {
                format!("partners/{}", self.grantee)
            },
            purposes: self.purposes,
            event_time: None,
        })
    }
}

#[async_trait]
impl MigrationTrait for TypedConsentFeed {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use lianyu_kit::storage::entities::outbox_event;
        use prost::Message;
        use sea_orm::{ColumnTrait, QueryFilter, QueryOrder};
        let db = manager.get_connection();
        let rows = outbox_event::Entity::find()
            .filter(outbox_event::Column::Kind.starts_with("consent."))
            .order_by_asc(outbox_event::Column::Seq)
            .all(db)
            .await?;
        for row in rows {
            let Some(body) = serde_json::from_slice::<LegacyEvent>(&row.payload)
                .ok()
                .and_then(LegacyEvent::into_message)
            else {
                continue;
            };
            outbox_event::ActiveModel {
                seq: Set(row.seq),
                payload: Set(body.encode_to_vec()),
                ..Default::default()
            }
            .update(db)
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database made before typed feeds, holding an event as JSON: after the migration the
    /// event reads as the message a watcher is served, and the migration can run again.
    #[tokio::test]
    async fn events_stored_as_json_are_rewritten_as_messages_in_place() {
        use lianyu_kit::storage::entities::outbox_event;
        use prost::Message;
        use sea_orm_migration::MigratorTrait;

        use crate::store::Migrator;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/identity.db?mode=rwc", dir.path().display());
        let db = lianyu_kit::storage::connect(&url, "identity", None)
            .await
            .unwrap();
        let before_typed_feeds = Migrator::migrations()
            .iter()
            .position(|m| m.name() == TypedConsentFeed.name())
            .unwrap() as u32;
        Migrator::up(&db, Some(before_typed_feeds)).await.unwrap();
        let legacy = br#"{"kind":"granted","member":"m1","collector":"brand-a","grantee":"mall-b","purposes":[1,2],"receipt_id":"r1"}"#;
        outbox_event::ActiveModel {
            seq: Set(7),
            kind: Set("consent.granted".into()),
            partner_id: Set(Some("mall-b".into())),
            payload: Set(legacy.to_vec()),
            created_at: Set(1),
            ..Default::default()
        }
        .insert(&db)
        .await
        .unwrap();
        Migrator::up(&db, None).await.unwrap();
        let stored = outbox_event::Entity::find_by_id(7)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        let body = lianyu_proto::identity::v1::WatchConsentEventsResponse::decode(
            stored.payload.as_slice(),
        )
        .unwrap();
        assert_eq!(body.member, "members/m1");
        assert_eq!(body.grantee, "partners/mall-b");
        assert_eq!(body.purposes, [1, 2]);
        assert_eq!(
            body.kind,
            lianyu_proto::identity::v1::ConsentEventKind::Granted as i32
        );
        // Running it again leaves a message as it is.
        TypedConsentFeed.up(&SchemaManager::new(&db)).await.unwrap();
        let again = outbox_event::Entity::find_by_id(7)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.payload, stored.payload);
    }

    /// A database made with the old indexes: afterwards identifiers and scoped ids have one
    /// index each where they had two, the (hash, partner) key is still unique — a partner
    /// cannot hold an identifier twice, another partner can hold it too — and lookups by hash
    /// and by member use the new indexes.
    #[tokio::test]
    async fn identifiers_and_scoped_ids_keep_their_keys_with_one_index_each() {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        use sea_orm_migration::MigratorTrait;

        use crate::store::Migrator;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/identity.db?mode=rwc", dir.path().display());
        let db = lianyu_kit::storage::connect(&url, "identity", None)
            .await
            .unwrap();
        let before = Migrator::migrations()
            .iter()
            .position(|m| m.name() == FewerIndexEntries.name())
            .unwrap() as u32;
        Migrator::up(&db, Some(before)).await.unwrap();
        // The indexes the entities declared before this migration (tables made now no longer
        // get them from the entities).
        for sql in [
            "CREATE INDEX \"idx-identifiers-lookup_hash\" ON identifiers (lookup_hash)",
            "CREATE INDEX \"idx-scoped_ids-partner_id\" ON scoped_ids (partner_id)",
            "CREATE INDEX \"idx-scoped_ids-member_id\" ON scoped_ids (member_id)",
        ] {
            db.execute_unprepared(sql).await.unwrap();
        }
        let indexes = async |table: &str| -> Vec<String> {
            let rows = db
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? \
                     AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name",
                    [table.into()],
                ))
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.try_get_by_index::<String>(0).unwrap())
                .collect()
        };
        assert_eq!(
            indexes("identifiers").await,
            [
                "identifiers_partner_unique",
                "idx-identifiers-lookup_hash",
                "idx-identifiers-member_id"
            ]
        );
        assert_eq!(
            indexes("scoped_ids").await,
            ["idx-scoped_ids-member_id", "idx-scoped_ids-partner_id"]
        );
        let identifier = |partner: &str, member: &str| {
            Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "INSERT INTO identifiers (member_id, partner_id, kind, namespace, lookup_hash, \
                 sealed, verified, created_at, verification_method) \
                 VALUES (?, ?, 'phone', '', 'h1', x'00', 1, 0, '')",
                [member.into(), partner.into()],
            )
        };
        db.execute_raw(identifier("brand", "m1")).await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        assert_eq!(
            indexes("identifiers").await,
            [
                "identifiers_hash_partner_unique",
                "idx-identifiers-member_id"
            ]
        );
        assert_eq!(indexes("scoped_ids").await, ["scoped_ids_member_partner"]);
        // The key still holds: the same partner again is refused, another partner is not.
        assert!(db.execute_raw(identifier("brand", "m2")).await.is_err());
        db.execute_raw(identifier("mall", "m1")).await.unwrap();
        let plan = async |sql: &str| -> String {
            db.query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("EXPLAIN QUERY PLAN {sql}"),
            ))
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String>("", "detail").unwrap())
            .collect::<Vec<_>>()
            .join("; ")
        };
        assert!(
            plan("SELECT id FROM identifiers WHERE lookup_hash IN ('h1', 'h2')")
                .await
                .contains("identifiers_hash_partner_unique")
        );
        assert!(
            plan(
                "SELECT scoped_id FROM scoped_ids WHERE partner_id = 'brand' \
                 AND member_id IN ('m1', 'm2')"
            )
            .await
            .contains("scoped_ids_member_partner")
        );
    }

    #[test]
    fn a_legacy_event_becomes_the_message_a_watcher_is_served() {
        let legacy: LegacyEvent = serde_json::from_str(
            r#"{"kind":"withdrawn","member":"m1","collector":"brand-a","grantee":"mall-b","purposes":[2],"receipt_id":"r"}"#,
        )
        .unwrap();
        let body = legacy.into_message().unwrap();
        assert_eq!(body.member, "members/m1");
        assert_eq!(body.grantee, "partners/mall-b");
        assert_eq!(
            body.kind,
            lianyu_proto::identity::v1::ConsentEventKind::Withdrawn as i32
        );
        assert_eq!(body.purposes, [2]);
    }
}
