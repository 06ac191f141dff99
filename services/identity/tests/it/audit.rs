//! The operator's check of the whole access log: intact after real reads, broken at the
//! exact record someone changed in the database.

use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};
use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::harness::{Identity, details, enroll, grant, phone};

#[tokio::test]
async fn the_operator_sees_the_access_log_intact_until_a_record_is_changed() {
    let identity = Identity::with_partners("audit_chain").await;
    let (mut brand, mut mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let brand_id = brand
        .enrolled(enroll(
            "e",
            vec![phone("13412134121", true)],
            &[("tier", "gold")],
        ))
        .await;
    let mall_id = mall
        .enrolled(enroll("e", vec![phone("13412134121", true)], &[]))
        .await;
    let read = || pb::GetMemberRequest {
        name: mall_id.clone(),
        purpose: 0,
    };
    // A read before any consent touches nobody's records and is not logged; after a grant,
    // two allowed reads, then a withdrawal and a denied read: three records.
    mall.members.get_member(read()).await.unwrap();
    brand
        .consents
        .grant_consent(grant(&brand_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap();
    mall.members.get_member(read()).await.unwrap();
    mall.members.get_member(read()).await.unwrap();
    brand
        .consents
        .withdraw_consent(pb::WithdrawConsentRequest {
            request_id: "w".into(),
            member: brand_id.clone(),
            grantee: "partners/mall-b".into(),
            purposes: vec![ConsentPurpose::ShareProfile as i32],
        })
        .await
        .unwrap();
    mall.members.get_member(read()).await.unwrap();

    let e = mall
        .audit
        .check_access_log(pb::CheckAccessLogRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::PermissionDenied, "OPERATOR_ONLY")
    );
    let mut operator = identity.operator();
    let intact = operator
        .audit
        .check_access_log(pb::CheckAccessLogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(intact.intact);
    assert_eq!(
        (intact.records_checked, intact.first_broken_sequence),
        (3, 0)
    );
    assert_eq!(intact.head_hash.len(), 64);

    // Someone with database access turns the first allowed read into a denied one.
    let db = lianyu_kit::storage::connect(&identity.db_url, "identity", None)
        .await
        .unwrap();
    db.execute_unprepared("UPDATE access_records SET allowed = NOT allowed WHERE seq = 1")
        .await
        .unwrap();
    let broken = operator
        .audit
        .check_access_log(pb::CheckAccessLogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!broken.intact);
    assert_eq!(broken.first_broken_sequence, 1);

    // Put back, then cut the last record off: the head still names it.
    db.execute_unprepared("UPDATE access_records SET allowed = NOT allowed WHERE seq = 1")
        .await
        .unwrap();
    db.execute_unprepared("DELETE FROM access_records WHERE seq = 3")
        .await
        .unwrap();
    let cut = operator
        .audit
        .check_access_log(pb::CheckAccessLogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cut.intact, cut.first_broken_sequence), (false, 3));
}
