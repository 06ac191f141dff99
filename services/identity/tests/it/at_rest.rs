//! Personal data at rest: stored replies of mutations are sealed like everything else.

use lianyu_kit::storage::entities::idempotency_key;
use sea_orm::EntityTrait;

use crate::harness::{Identity, enroll, phone};

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn replies_kept_for_request_id_replays_hold_no_plaintext_identifiers() {
    let identity = Identity::with_partners("at_rest").await;
    let mut brand = identity.as_partner("brand-a");
    let request = enroll(
        "keep",
        vec![phone("13000130000", true)],
        &[("note", "allergic-to-wool")],
    );
    let first = brand
        .members
        .enroll_member(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(
        format!("{first:?}").contains("+8613000130000"),
        "the caller gets its identifiers back"
    );

    let db = lianyu_kit::storage::connect(&identity.db_url, "identity", None)
        .await
        .unwrap();
    let rows = idempotency_key::Entity::find().all(&db).await.unwrap();
    let enrolment = rows
        .iter()
        .find(|r| r.method == "/lianyu.identity.v1.MemberService/EnrollMember")
        .expect("the reply is kept");
    for secret in ["+8613000130000", "13000130000", "allergic-to-wool"] {
        assert!(
            !contains(&enrolment.response, secret),
            "{secret} stored in the clear"
        );
    }
    // And the sealed reply still replays.
    assert_eq!(
        brand
            .members
            .enroll_member(request)
            .await
            .unwrap()
            .into_inner(),
        first
    );
}
