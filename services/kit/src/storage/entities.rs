//! The kit's own tables, present in every service's database.

/// Stored responses of mutating calls, by (partner, method, request_id).
pub mod idempotency_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "kit_idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub partner_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub method: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        pub request_hash: Vec<u8>,
        pub response: Vec<u8>,
        pub created_at: i64,
        /// Keyed digest of the person the response is about (a member), so erasing the person
        /// can purge the stored reply; None for replies that hold no personal data.
        pub subject: Option<Vec<u8>>,
        /// When the reply was purged because its subject was erased; a replay then answers
        /// NOT_FOUND / MEMBER_ERASED and returns nothing of the person.
        pub erased_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The outbox: events appended in the same transaction as the change they describe.
pub mod outbox_event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "kit_outbox_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub kind: String,
        /// The partner the event concerns, for filtering a partner's feed; None for mesh-wide events.
        pub partner_id: Option<String>,
        pub payload: Vec<u8>,
        pub created_at: i64,
        /// The person the payload names (a mesh member id), so that an erasure can find the
        /// event and rewrite it without them ([`crate::feed::Feed::rewrite_about`]); None for
        /// events that name no one, and once rewritten.
        pub subject: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One row holding the last sequence handed out.
pub mod outbox_counter {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "kit_outbox_counter")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub last_seq: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Where each consumer of another service's feed stands.
pub mod feed_cursor {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "kit_feed_cursors")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        pub position: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
