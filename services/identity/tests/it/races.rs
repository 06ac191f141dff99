//! Races, with real parallel calls: concurrent enrolments of one person make one person, on
//! SQLite and on PostgreSQL's default READ COMMITTED isolation, and a caller who did nothing
//! wrong never sees a concurrent caller's unique-key conflict; two field-masked updates of
//! one row at once both stand.

use futures::{StreamExt, stream::FuturesUnordered};
use lianyu_proto::identity::v1 as pb;

use crate::harness::{
    Identity, count, details, enroll, partner_status, phone, store_active, unionid,
};

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

/// A field-masked update changes only its fields: two updates of one row at once — a store
/// closed while it is renamed, a partner suspended while it is renamed — both stand, each
/// made on what the other committed rather than on the row both read (on PostgreSQL's READ
/// COMMITTED a second writer would otherwise put back the first one's field: a close or a
/// suspension acknowledged and then undone).
#[tokio::test]
async fn two_updates_of_one_store_or_partner_at_once_both_stand() {
    const TRIALS: usize = 12;
    let identity = Identity::with_partners("race_row_updates").await;
    let (brand, mut operator) = (identity.as_partner("brand-a"), identity.operator());
    for t in 0..TRIALS {
        brand
            .clone()
            .partners
            .create_store(pb::CreateStoreRequest {
                request_id: format!("store-{t}"),
                parent: "partners/brand-a".into(),
                store_id: format!("store-{t}"),
                store: Some(pb::Store {
                    display_name: format!("Store {t}"),
                    city: "Beijing".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        operator
            .partners
            .create_partner(pb::CreatePartnerRequest {
                request_id: format!("partner-{t}"),
                partner_id: format!("partner-{t}"),
                partner: Some(pb::Partner {
                    kind: lianyu_proto::common::v1::PartnerKind::Brand as i32,
                    display_name: format!("Partner {t}"),
                    privacy_contact: format!("privacy@partner-{t}.example"),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let masked = |paths: &[&str]| {
        Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        })
    };
    let trials: FuturesUnordered<_> = (0..TRIALS)
        .map(|t| {
            let (mut brand, mut operator) = (brand.clone(), operator.clone());
            let mut itself = identity.as_partner(&format!("partner-{t}"));
            let rename_store = pb::UpdateStoreRequest {
                request_id: format!("rename-{t}"),
                store: Some(pb::Store {
                    name: format!("partners/brand-a/stores/store-{t}"),
                    display_name: format!("Renamed {t}"),
                    ..Default::default()
                }),
                update_mask: masked(&["display_name"]),
            };
            let rename_partner = pb::UpdatePartnerRequest {
                request_id: format!("rename-{t}"),
                partner: Some(pb::Partner {
                    name: format!("partners/partner-{t}"),
                    display_name: format!("Renamed {t}"),
                    ..Default::default()
                }),
                update_mask: masked(&["display_name"]),
            };
            async move {
                let mut both = brand.clone();
                let (closed, renamed, suspended, renamed_partner) = tokio::join!(
                    brand.partners.update_store(store_active(
                        "brand-a",
                        &format!("store-{t}"),
                        false,
                        &format!("close-{t}")
                    )),
                    both.partners.update_store(rename_store),
                    operator.partners.update_partner(partner_status(
                        &format!("partner-{t}"),
                        pb::PartnerStatus::Suspended,
                        &format!("suspend-{t}")
                    )),
                    itself.partners.update_partner(rename_partner),
                );
                for (what, outcome) in [
                    ("close", closed.map(drop)),
                    ("rename store", renamed.map(drop)),
                    ("suspend", suspended.map(drop)),
                ] {
                    outcome.unwrap_or_else(|e| panic!("trial {t}: {what}: {e:?}"));
                }
                // The partner renames itself with its own token: refused once the suspension
                // has reached the token check, else it stands beside the suspension.
                let renamed = match renamed_partner {
                    Ok(_) => true,
                    Err(e) => {
                        assert_eq!(
                            details(&e).0,
                            "PARTNER_SUSPENDED",
                            "trial {t}: rename partner: {e:?}"
                        );
                        false
                    }
                };
                (t, renamed)
            }
        })
        .collect();
    let renamed: std::collections::HashMap<usize, bool> = trials.collect().await;
    for t in 0..TRIALS {
        let store = brand
            .clone()
            .partners
            .get_store(pb::GetStoreRequest {
                name: format!("partners/brand-a/stores/store-{t}"),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (store.display_name.as_str(), store.active),
            (format!("Renamed {t}").as_str(), false),
            "trial {t}: the store is renamed and closed"
        );
        let partner = operator
            .partners
            .get_partner(pb::GetPartnerRequest {
                name: format!("partners/partner-{t}"),
            })
            .await
            .unwrap()
            .into_inner();
        let display_name = if renamed[&t] {
            format!("Renamed {t}")
        } else {
            format!("Partner {t}")
        };
        assert_eq!(
            (partner.display_name, partner.status),
            (display_name, pb::PartnerStatus::Suspended as i32),
            "trial {t}: the partner is suspended, and renamed if that was answered OK"
        );
    }
    // Where it lives: the rows the tokens' refusals are rebuilt from after a restart.
    let db = identity.database().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM stores WHERE active = false AND display_name LIKE 'Renamed %'"
        )
        .await,
        TRIALS as i64
    );
}

/// A partner holds at most twenty credentials that are not revoked, however many it asks for
/// at once: of thirty creations sent together twenty are made and ten refused with
/// TOO_MANY_CREDENTIALS (two creations at once could otherwise both count room for one more).
#[tokio::test]
async fn thirty_credentials_asked_for_at_once_make_twenty() {
    const ASKED: usize = 30;
    const LIMIT: usize = 20;
    let identity = Identity::with_partners("race_credentials").await;
    let brand = identity.as_partner("brand-a");
    let calls: FuturesUnordered<_> = (0..ASKED)
        .map(|i| {
            let mut brand = brand.clone();
            async move {
                brand
                    .auth
                    .create_credential(pb::CreateCredentialRequest {
                        request_id: format!("cred-{i}"),
                        parent: "partners/brand-a".into(),
                        scopes: vec!["identity.read".into()],
                    })
                    .await
            }
        })
        .collect();
    let outcomes: Vec<_> = calls.collect().await;
    let made = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(made, LIMIT, "twenty made");
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(
            (refused.code(), details(refused).0.as_str()),
            (tonic::Code::FailedPrecondition, "TOO_MANY_CREDENTIALS")
        );
    }
    let listed = brand
        .clone()
        .auth
        .list_credentials(pb::ListCredentialsRequest {
            parent: "partners/brand-a".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.credentials.len(), LIMIT, "the refused made none");
}

/// Two merges of one pair sent at once in opposite directions (two agents cleaning up the same
/// duplicate) leave one person: one merge folds the pair, the other finds them one already —
/// never both folded into each other, which would leave the person merged away on both sides.
#[tokio::test]
async fn opposite_merges_of_one_pair_at_once_leave_one_person() {
    const TRIALS: usize = 10;
    let identity = Identity::with_partners("race_opposite_merges").await;
    let brand = identity.as_partner("brand-a");
    let mut pairs = Vec::new();
    for t in 0..TRIALS {
        let mut b = brand.clone();
        let first = b
            .enrolled(enroll(
                &format!("first-{t}"),
                vec![unionid(&format!("oU_race_{t:020}"), "open-brand-a")],
                &[],
            ))
            .await;
        let second = b
            .enrolled(enroll(
                &format!("second-{t}"),
                vec![phone(&format!("1361113{t:04}"), true)],
                &[],
            ))
            .await;
        pairs.push((first, second, format!("1361113{t:04}")));
    }
    let trials: FuturesUnordered<_> = pairs
        .iter()
        .enumerate()
        .map(|(t, (first, second, number))| {
            let (mut a, mut b) = (brand.clone(), brand.clone());
            let merge = |rid: String, keep: &str, dup: &str| pb::MergeMembersRequest {
                request_id: rid,
                member: keep.to_owned(),
                duplicate_member: dup.to_owned(),
                evidence: Some(phone(number, true)),
            };
            let forward = merge(format!("forward-{t}"), first, second);
            let backward = merge(format!("backward-{t}"), second, first);
            async move {
                let (x, y) = tokio::join!(
                    a.members.merge_members(forward),
                    b.members.merge_members(backward)
                );
                x.unwrap_or_else(|e| panic!("trial {t}: forward: {e:?}"));
                y.unwrap_or_else(|e| panic!("trial {t}: backward: {e:?}"));
            }
        })
        .collect();
    trials.collect::<Vec<()>>().await;
    for (t, (first, second, _)) in pairs.iter().enumerate() {
        let mut b = brand.clone();
        let read = |name: &str| pb::GetMemberRequest {
            name: name.to_owned(),
            purpose: 0,
        };
        let (x, y) = (
            b.members.get_member(read(first)).await,
            b.members.get_member(read(second)).await,
        );
        let (x, y) = (
            x.unwrap_or_else(|e| panic!("trial {t}: the first id: {e:?}")),
            y.unwrap_or_else(|e| panic!("trial {t}: the second id: {e:?}")),
        );
        assert_eq!(
            (
                x.into_inner().identifiers.len(),
                y.into_inner().identifiers.len()
            ),
            (2, 2),
            "trial {t}: both ids name the one person, with both identifiers"
        );
    }
    let db = identity.database().await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM members WHERE status = 'active'").await,
        TRIALS as i64,
        "one person per pair"
    );
}

/// A partner erasing the only record of a person at the moment an allied partner enrols the
/// same verified phone: the enrolment is answered with a person who is there — linked to the
/// one being erased only if that one stays (the new holder keeps them in the mesh), a new one
/// otherwise — never OK about a person the erasure then removes from the mesh.
#[tokio::test]
async fn an_enrolment_racing_the_last_holders_erasure_is_never_left_with_an_erased_person() {
    const TRIALS: usize = 12;
    let identity = Identity::with_partners("race_erase_enrol").await;
    let (brand, mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let mut held = Vec::new();
    for t in 0..TRIALS {
        let number = format!("1371113{t:04}");
        let at_brand = brand
            .clone()
            .enrolled(enroll(&format!("b{t}"), vec![phone(&number, true)], &[]))
            .await;
        held.push((at_brand, number));
    }
    let trials: FuturesUnordered<_> = held
        .iter()
        .enumerate()
        .map(|(t, (at_brand, number))| {
            let (mut brand, mut mall) = (brand.clone(), mall.clone());
            let erase = pb::EraseMemberRequest {
                request_id: format!("erase-{t}"),
                member: at_brand.clone(),
                scope: 0,
            };
            let enrol = enroll(&format!("m{t}"), vec![phone(number, true)], &[]);
            async move {
                let (erased, enrolled) = tokio::join!(
                    brand.members.erase_member(erase),
                    mall.members.enroll_member(enrol)
                );
                erased.unwrap_or_else(|e| panic!("trial {t}: erase: {e:?}"));
                let enrolled = enrolled
                    .unwrap_or_else(|e| panic!("trial {t}: enrol: {e:?}"))
                    .into_inner();
                let at_mall = enrolled.member.unwrap().name;
                let read = mall
                    .members
                    .get_member(pb::GetMemberRequest {
                        name: at_mall,
                        purpose: 0,
                    })
                    .await;
                let read = read.unwrap_or_else(|e| {
                    panic!(
                        "trial {t}: the mall's member (linked: {}) after the race: {e:?}",
                        enrolled.linked_existing
                    )
                });
                assert_eq!(read.into_inner().identifiers.len(), 1, "trial {t}");
            }
        })
        .collect();
    trials.collect::<Vec<()>>().await;
    let db = identity.database().await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM members WHERE status = 'active'").await,
        TRIALS as i64,
        "one person per phone is in the mesh, held by the mall"
    );
}

/// A partner accepting the alliance terms it read while another member partner widens them,
/// sent at once: either the acceptance commits first and the new terms then ask for it again,
/// or the new terms do and the acceptance is refused (TERMS_VERSION_MISMATCH). Either way the
/// alliance ends on the new terms with nobody but their author having accepted them.
#[tokio::test]
async fn an_acceptance_racing_new_alliance_terms_never_covers_terms_it_did_not_read() {
    const TRIALS: usize = 12;
    let identity = Identity::with_partners("race_alliance_terms").await;
    let (brand, mall) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    for t in 0..TRIALS {
        let (mut brand, mut mall) = (brand.clone(), mall.clone());
        let proposed = brand
            .partners
            .create_alliance(pb::CreateAllianceRequest {
                request_id: format!("a{t}"),
                alliance: Some(crate::harness::alliance(&["brand-a", "mall-b"])),
            })
            .await
            .unwrap()
            .into_inner();
        let widen = pb::UpdateAllianceRequest {
            request_id: format!("w{t}"),
            alliance: Some(pb::Alliance {
                name: proposed.name.clone(),
                data_categories: vec!["profile.basic".into(), "purchase.history".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["data_categories".into()],
            }),
        };
        let accept = pb::AcceptAllianceRequest {
            request_id: format!("ok{t}"),
            name: proposed.name.clone(),
            terms_version: proposed.terms_version,
        };
        let (mut brand_again, mut mall_again) = (brand.clone(), mall.clone());
        let (widened, accepted) = tokio::join!(
            tokio::spawn(async move { brand_again.partners.update_alliance(widen).await }),
            tokio::spawn(async move { mall_again.partners.accept_alliance(accept).await }),
        );
        let widened = widened.unwrap().expect("new terms stand").into_inner();
        if let Err(e) = accepted.unwrap() {
            assert_eq!(details(&e).0, "TERMS_VERSION_MISMATCH", "trial {t}");
        }
        let now = mall
            .partners
            .get_alliance(pb::GetAllianceRequest {
                name: proposed.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (now.terms_version, now.status, now.accepted_by.clone()),
            (
                widened.terms_version,
                pb::AllianceStatus::Proposed as i32,
                vec!["partners/brand-a".to_owned()]
            ),
            "trial {t}: the mall never accepted the widened terms"
        );
        assert_eq!(now.data_categories, widened.data_categories);
    }
}
