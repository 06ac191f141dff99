//! Races, with real parallel calls: concurrent enrolments of one person make one person, on
//! SQLite and on PostgreSQL's default READ COMMITTED isolation, and a caller who did nothing
//! wrong never sees a concurrent caller's unique-key conflict.

use futures::{StreamExt, stream::FuturesUnordered};

use crate::harness::{Identity, count, enroll, phone};

#[tokio::test]
async fn two_partners_enrolling_one_new_phone_at_once_make_one_person() {
    const TRIALS: usize = 30;
    let identity = Identity::with_partners("race_two_partners").await;
    let (brand, mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let trials: FuturesUnordered<_> = (0..TRIALS)
        .map(|t| {
            let (mut brand, mut mall) = (brand.clone(), mall.clone());
            async move {
                let number = format!("1350000{t:04}");
                let request = || enroll(&format!("t{t}"), vec![phone(&number, true)], &[]);
                let (at_brand, at_mall) = tokio::join!(
                    brand.members.enroll_member(request()),
                    mall.members.enroll_member(request())
                );
                let linked =
                    [at_brand.unwrap(), at_mall.unwrap()].map(|r| r.into_inner().linked_existing);
                assert_eq!(
                    linked.iter().filter(|l| **l).count(),
                    1,
                    "trial {t}: exactly the later enrolment links to the earlier"
                );
            }
        })
        .collect();
    trials.collect::<Vec<()>>().await;
    let db = identity.database().await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM members").await,
        TRIALS as i64,
        "one person per phone"
    );
}

#[tokio::test]
async fn concurrent_enrolments_of_one_phone_at_one_partner_all_succeed_as_one_member() {
    const CALLERS: usize = 20;
    let identity = Identity::with_partners("race_one_partner").await;
    let brand = identity.as_partner("brand-a");
    let calls: FuturesUnordered<_> = (0..CALLERS)
        .map(|i| {
            let mut brand = brand.clone();
            async move {
                brand
                    .members
                    .enroll_member(enroll(
                        &format!("caller-{i}"),
                        vec![phone("13400134000", true)],
                        &[("seen_by", &format!("caller-{i}"))],
                    ))
                    .await
                    .map(|r| r.into_inner().member.unwrap().name)
            }
        })
        .collect();
    let names: Vec<_> = calls.collect().await;
    let names: Vec<String> = names
        .into_iter()
        .map(|r| r.expect("no caller sees another's conflict"))
        .collect();
    assert!(
        names.windows(2).all(|w| w[0] == w[1]),
        "one member: {names:?}"
    );
    let db = identity.database().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM members").await, 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM identifiers").await, 1);
}
