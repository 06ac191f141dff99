//! The trust model (DESIGN.md, invariant 8): no partner's action changes, removes or reveals
//! another partner's records of a person beyond what the person consented to share. One test
//! per finding of the black-box review, each reading back what a refused or foreign action
//! must have left alone. B = brand-a, M = mall-b (allied, accepting any verification method),
//! X = brand-c (no alliance with either, unless a test makes one).

use lianyu_proto::{common::v1::ConsentPurpose, identity::v1 as pb};
use tonic::Code;

use crate::harness::{As, Identity, count, details, enroll, grant, phone, phone_by, unionid};

async fn get(client: &mut As, name: &str, purpose: ConsentPurpose) -> pb::Member {
    client
        .members
        .get_member(pb::GetMemberRequest {
            name: name.into(),
            purpose: purpose as i32,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn enrolled(
    client: &mut As,
    id: &str,
    ids: Vec<pb::Identifier>,
    profile: &[(&str, &str)],
) -> pb::EnrollMemberResponse {
    client
        .members
        .enroll_member(enroll(id, ids, profile))
        .await
        .unwrap()
        .into_inner()
}

/// Finding 1: X enrols B's customer's phone as "verified" and erases its member: B's and M's
/// records of the person are untouched, because X's claim never linked to them.
#[tokio::test]
async fn an_outsiders_verified_claim_links_nothing_and_its_erasure_touches_nobody_else() {
    let identity = Identity::with_partners("trust_outsider_erasure").await;
    let (mut b, mut m, mut x) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );
    let b_id = enrolled(
        &mut b,
        "e",
        vec![phone("13500135000", true)],
        &[("tier", "gold")],
    )
    .await
    .member
    .unwrap()
    .name;
    let m_id = enrolled(
        &mut m,
        "e",
        vec![phone("13500135000", true)],
        &[("vip", "2")],
    )
    .await
    .member
    .unwrap()
    .name;
    b.consents
        .grant_consent(grant(&b_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap();

    let at_x = enrolled(&mut x, "e", vec![phone("13500135000", true)], &[]).await;
    assert!(!at_x.linked_existing, "a stranger's claim links to nobody");
    assert_eq!(at_x.unverified_candidate_count, 0, "and reveals nobody");
    x.members
        .erase_member(pb::EraseMemberRequest {
            request_id: "erase".into(),
            member: at_x.member.unwrap().name,
            scope: pb::ErasureScope::JointDomain as i32,
        })
        .await
        .unwrap();

    // Read back: B's and M's records, the link and the consent are all still there.
    let at_b = get(&mut b, &b_id, ConsentPurpose::ShareProfile).await;
    assert_eq!(at_b.profile.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(at_b.identifiers.len(), 1);
    let at_m = get(&mut m, &m_id, ConsentPurpose::ShareProfile).await;
    assert_eq!(at_m.profile.get("vip").map(String::as_str), Some("2"));
    assert_eq!(at_m.shared_profiles.len(), 1, "the brand's shared profile");
    let db = identity.database().await;
    for (query, expected) in [
        (
            "SELECT COUNT(*) FROM identifiers WHERE partner_id = 'brand-a'",
            1,
        ),
        (
            "SELECT COUNT(*) FROM identifiers WHERE partner_id = 'mall-b'",
            1,
        ),
        ("SELECT COUNT(*) FROM consents WHERE state = 'granted'", 1),
        ("SELECT COUNT(*) FROM members WHERE status = 'active'", 1),
    ] {
        assert_eq!(count(&db, query).await, expected, "{query}");
    }
}

/// Finding 2: X cannot fuse B's two customers. X's own "verified" copies of their phones make
/// X's own members, and a merge of those touches only X's records.
#[tokio::test]
async fn an_outsiders_merge_changes_only_its_own_records() {
    let identity = Identity::with_partners("trust_outsider_merge").await;
    let (mut b, mut m, mut x) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );
    let (pa, pb_) = ("13600136001", "13600136002");
    let b_a = enrolled(&mut b, "a", vec![phone(pa, true)], &[("name", "A")]).await;
    let b_b = enrolled(&mut b, "b", vec![phone(pb_, true)], &[("name", "B")]).await;
    let m_a = enrolled(&mut m, "a", vec![phone(pa, true)], &[]).await;
    b.consents
        .grant_consent(grant(
            &b_a.member.clone().unwrap().name,
            "mall-b",
            &[ConsentPurpose::ShareProfile],
        ))
        .await
        .unwrap();
    let x_a = enrolled(&mut x, "a", vec![phone(pa, true)], &[]).await;
    let x_b = enrolled(&mut x, "b", vec![phone(pb_, true)], &[]).await;
    x.members
        .merge_members(pb::MergeMembersRequest {
            request_id: "merge".into(),
            member: x_a.member.unwrap().name,
            duplicate_member: x_b.member.unwrap().name,
            evidence: Some(phone(pa, true)),
        })
        .await
        .unwrap();

    let second = get(
        &mut b,
        &b_b.member.unwrap().name,
        ConsentPurpose::ShareProfile,
    )
    .await;
    assert_eq!(second.profile.get("name").map(String::as_str), Some("B"));
    let first = get(
        &mut b,
        &b_a.member.unwrap().name,
        ConsentPurpose::ShareProfile,
    )
    .await;
    assert_eq!(first.profile.get("name").map(String::as_str), Some("A"));
    let at_m = get(
        &mut m,
        &m_a.member.unwrap().name,
        ConsentPurpose::ShareProfile,
    )
    .await;
    assert_eq!(at_m.shared_profiles.len(), 1);
    assert_eq!(
        at_m.shared_profiles[0]
            .profile
            .get("name")
            .map(String::as_str),
        Some("A"),
        "the mall reads the person it holds, not a fusion"
    );
}

/// Finding 2, allied: a merge that would change an ally's records is refused unless the
/// alliance accepts the evidence's verification method — and the refusal changes nothing.
#[tokio::test]
async fn a_merge_an_ally_has_not_accepted_is_refused_and_changes_nothing() {
    let identity = Identity::with_partners("trust_merge_refused").await;
    identity
        .ally("mall-b", "brand-c", &[pb::VerificationMethod::InStoreCheck])
        .await;
    let (mut m, mut x) = (
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );
    let store = pb::VerificationMethod::InStoreCheck;
    let x_a = enrolled(
        &mut x,
        "a",
        vec![phone_by("13600136011", store)],
        &[("n", "1")],
    )
    .await;
    let x_b = enrolled(
        &mut x,
        "b",
        vec![phone_by("13600136012", store)],
        &[("n", "2")],
    )
    .await;
    let m_a = enrolled(&mut m, "a", vec![phone_by("13600136011", store)], &[]).await;
    let m_b = enrolled(&mut m, "b", vec![phone_by("13600136012", store)], &[]).await;
    assert!(
        m_a.linked_existing && m_b.linked_existing,
        "linked by an accepted method"
    );

    let refused = m
        .members
        .merge_members(pb::MergeMembersRequest {
            request_id: "merge".into(),
            member: m_a.member.clone().unwrap().name,
            duplicate_member: m_b.member.clone().unwrap().name,
            evidence: Some(phone_by("13600136011", pb::VerificationMethod::SmsCode)),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), details(&refused).0.as_str()),
        (Code::FailedPrecondition, "MERGE_AFFECTS_OTHER_PARTNER")
    );
    // Read back: X's two customers are still two, and so are the mall's.
    for (name, n) in [(&x_a, "1"), (&x_b, "2")] {
        let member = get(
            &mut x,
            &name.member.clone().unwrap().name,
            ConsentPurpose::ShareProfile,
        )
        .await;
        assert_eq!(member.profile.get("n").map(String::as_str), Some(n));
        assert_eq!(member.identifiers.len(), 1);
    }
    let db = identity.database().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM member_merges").await, 0);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM members WHERE status = 'active'").await,
        2
    );

    // With the accepted method as evidence, the ally's terms allow it.
    m.members
        .merge_members(pb::MergeMembersRequest {
            request_id: "merge-2".into(),
            member: m_a.member.unwrap().name,
            duplicate_member: m_b.member.unwrap().name,
            evidence: Some(phone_by("13600136011", store)),
        })
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM member_merges").await, 1);
}

/// Finding 3: a partner never sees the person's consents with others — not an outsider, and
/// not an ally that is no party to them.
#[tokio::test]
async fn consents_are_shown_only_to_their_parties() {
    let identity = Identity::with_partners("trust_consent_parties").await;
    identity.ally("brand-a", "brand-c", &[]).await;
    let (mut b, mut c) = (
        identity.as_partner("brand-a"),
        identity.as_partner("brand-c"),
    );
    let (b_id, _) = identity.shared_member("13700137010").await;
    b.consents
        .grant_consent(grant(&b_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap();
    let at_c = enrolled(&mut c, "e", vec![phone("13700137010", true)], &[]).await;
    assert!(
        at_c.linked_existing,
        "an ally of the brand holds the same person"
    );
    let c_id = at_c.member.unwrap().name;
    let listed = c
        .consents
        .list_consents(pb::ListConsentsRequest {
            member: c_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.consents.is_empty(), "{:?}", listed.consents);
    let export = c
        .members
        .export_member_data(pb::ExportMemberDataRequest { member: c_id })
        .await
        .unwrap()
        .into_inner();
    assert!(export.consents.is_empty() && export.access_records.is_empty());
    // The brand, a party, still sees its receipt.
    let own = b
        .consents
        .list_consents(pb::ListConsentsRequest {
            member: b_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.consents.len(), 1);
}

/// Finding 5: a store token acts only within its store.
#[tokio::test]
async fn a_store_token_acts_only_within_its_store() {
    let identity = Identity::with_partners("trust_store_token").await;
    let mut b = identity.as_partner("brand-a");
    for store in ["one", "two"] {
        b.partners
            .create_store(pb::CreateStoreRequest {
                request_id: format!("store-{store}"),
                parent: "partners/brand-a".into(),
                store_id: store.into(),
                store: Some(pb::Store {
                    display_name: format!("Store {store}"),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let mut pos = identity.as_store("brand-a", "one");
    let denied = |e: tonic::Status| (e.code(), details(&e).0);
    let refused = [
        pos.auth
            .create_credential(pb::CreateCredentialRequest {
                request_id: "c".into(),
                parent: "partners/brand-a".into(),
                scopes: vec!["identity.read".into()],
            })
            .await
            .map(drop),
        pos.partners
            .update_store(pb::UpdateStoreRequest {
                request_id: "u".into(),
                store: Some(pb::Store {
                    name: "partners/brand-a/stores/two".into(),
                    display_name: "Taken over".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            })
            .await
            .map(drop),
        pos.partners
            .update_partner(pb::UpdatePartnerRequest {
                request_id: "p".into(),
                partner: Some(pb::Partner {
                    name: "partners/brand-a".into(),
                    display_name: "Renamed".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            })
            .await
            .map(drop),
        pos.partners
            .create_alliance(pb::CreateAllianceRequest {
                request_id: "a".into(),
                alliance: Some(crate::harness::alliance(&["brand-a", "brand-c"])),
            })
            .await
            .map(drop),
    ];
    for (i, result) in refused.into_iter().enumerate() {
        assert_eq!(
            result.map_err(denied),
            Err((Code::PermissionDenied, "STORE_TOKEN_NOT_ALLOWED".to_owned())),
            "call {i}"
        );
    }
    let other = pos
        .partners
        .get_store(pb::GetStoreRequest {
            name: "partners/brand-a/stores/two".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    let listed = pos
        .partners
        .list_stores(pb::ListStoresRequest {
            parent: "partners/brand-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .stores
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["partners/brand-a/stores/one"]
    );
    // Its own store's work goes on: enrolling a shopper at the counter.
    enrolled(&mut pos, "e", vec![phone("13700137020", true)], &[]).await;

    // Read back with the partner's own token: nothing changed.
    let two = b
        .partners
        .get_store(pb::GetStoreRequest {
            name: "partners/brand-a/stores/two".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(two.display_name, "Store two");
    let credentials = b
        .auth
        .list_credentials(pb::ListCredentialsRequest {
            parent: "partners/brand-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(credentials.credentials.is_empty());
    let partner = b
        .partners
        .get_partner(pb::GetPartnerRequest {
            name: "partners/brand-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(partner.display_name, "Brand A Shoes");
    let alliances = b
        .partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alliances.alliances.len(), 1);
}

/// Finding 6: MARKETING_CONTACT unlocks contact, not the profile; GetMember shares a profile
/// only under SHARE_PROFILE.
#[tokio::test]
async fn each_purpose_unlocks_only_what_it_says() {
    let identity = Identity::with_partners("trust_purpose").await;
    let (mut b, mut m) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    let b_id = enrolled(
        &mut b,
        "e",
        vec![phone("13700137030", true)],
        &[("tier", "gold")],
    )
    .await
    .member
    .unwrap()
    .name;
    let m_id = enrolled(&mut m, "e", vec![phone("13700137030", true)], &[])
        .await
        .member
        .unwrap()
        .name;
    b.consents
        .grant_consent(grant(&b_id, "mall-b", &[ConsentPurpose::MarketingContact]))
        .await
        .unwrap();
    for purpose in [
        ConsentPurpose::MarketingContact,
        ConsentPurpose::ShareProfile,
    ] {
        let view = get(&mut m, &m_id, purpose).await;
        assert!(view.shared_profiles.is_empty(), "{purpose:?}");
    }
    let records = b
        .audit
        .list_access_records(pb::ListAccessRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(
        records.len(),
        1,
        "only the SHARE_PROFILE read was a read of the brand's data"
    );
    assert!(!records[0].allowed);
}

/// Finding 7: suspension stops a partner's tokens at once; reinstatement restores them.
#[tokio::test]
async fn suspension_stops_a_partners_issued_tokens_at_once() {
    let identity = Identity::with_partners("trust_suspension").await;
    let (mut x, mut operator) = (identity.as_partner("brand-c"), identity.operator());
    x.partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap();
    let set_status =
        |status: pb::PartnerStatus, id: &str| crate::harness::partner_status("brand-c", status, id);
    operator
        .partners
        .update_partner(set_status(pb::PartnerStatus::Suspended, "suspend"))
        .await
        .unwrap();
    let refused = x
        .partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), details(&refused).0.as_str()),
        (Code::PermissionDenied, "PARTNER_SUSPENDED")
    );
    let keys = identity
        .public_auth()
        .get_signing_keys(pb::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        keys.suspended_partners,
        ["brand-c"],
        "published for other services"
    );
    // Others are unaffected.
    identity
        .as_partner("brand-a")
        .partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap();
    operator
        .partners
        .update_partner(set_status(pb::PartnerStatus::Active, "reinstate"))
        .await
        .unwrap();
    x.partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap();
    // The operator's tool retries its old suspension: it gets the stored answer, and the
    // reinstated partner stays reinstated, its tokens accepted.
    let replayed = operator
        .partners
        .update_partner(set_status(pb::PartnerStatus::Suspended, "suspend"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.status, pb::PartnerStatus::Suspended as i32);
    x.partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap();
}

/// Finding 8: after new terms, the person's receipt reads STALE (and the grantee hears it).
#[tokio::test]
async fn a_receipt_reads_stale_after_the_terms_change() {
    let identity = Identity::with_partners("trust_stale").await;
    let mut b = identity.as_partner("brand-a");
    let (b_id, _) = identity.shared_member("13700137040").await;
    let receipt = b
        .consents
        .grant_consent(grant(&b_id, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap()
        .into_inner();
    let alliance = receipt.alliance.clone();
    b.partners
        .update_alliance(pb::UpdateAllianceRequest {
            request_id: "terms".into(),
            alliance: Some(pb::Alliance {
                name: alliance,
                processing_method: "shown to guides and used for lookalike modelling".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["processing_method".into()],
            }),
        })
        .await
        .unwrap();
    let listed = b
        .consents
        .list_consents(pb::ListConsentsRequest {
            member: b_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.consents.len(), 1);
    assert_eq!(listed.consents[0].status, pb::ConsentStatus::Stale as i32);
}

/// Finding 9: a partner's read of its own member leaves nothing in the audit trail of a
/// partner it has no consent relationship with — even one holding the same person.
#[tokio::test]
async fn a_read_without_a_consent_relationship_is_not_in_anyone_elses_log() {
    let identity = Identity::with_partners("trust_audit_oracle").await;
    identity.ally("mall-b", "brand-c", &[]).await;
    let (mut b, mut m, mut c) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );
    // Both hold a profile of the person, so a read could touch either's records.
    enrolled(
        &mut b,
        "e",
        vec![phone("13700137050", true)],
        &[("tier", "gold")],
    )
    .await;
    enrolled(
        &mut m,
        "e",
        vec![phone("13700137050", true)],
        &[("vip", "1")],
    )
    .await;
    let at_c = enrolled(&mut c, "e", vec![phone("13700137050", true)], &[]).await;
    assert!(at_c.linked_existing, "linked through its ally, the mall");
    get(
        &mut c,
        &at_c.member.unwrap().name,
        ConsentPurpose::ShareProfile,
    )
    .await;
    let brand_log = b
        .audit
        .list_access_records(pb::ListAccessRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(brand_log.is_empty(), "{brand_log:?}");
}

/// Finding 10: proposing an alliance with an unknown partner id answers exactly like one with
/// a real id, so it cannot be used to learn which ids exist.
#[tokio::test]
async fn proposing_an_alliance_does_not_tell_partner_ids_apart() {
    let identity = Identity::with_partners("trust_alliance_oracle").await;
    let mut x = identity.as_partner("brand-c");
    let mut shape = Vec::new();
    for (i, other) in ["mall-b", "no-such-partner"].into_iter().enumerate() {
        let proposed = x
            .partners
            .create_alliance(pb::CreateAllianceRequest {
                request_id: format!("p{i}"),
                alliance: Some(crate::harness::alliance(&["brand-c", other])),
            })
            .await
            .unwrap()
            .into_inner();
        shape.push((proposed.status, proposed.accepted_by.len()));
    }
    assert_eq!(shape[0], shape[1]);
    assert_eq!(shape[0].0, pb::AllianceStatus::Proposed as i32);
}

/// Finding 11: one number written two ways is one person (libphonenumber drops the UK
/// trunk prefix after +44).
#[tokio::test]
async fn a_number_written_with_its_trunk_prefix_is_the_same_person() {
    let identity = Identity::with_partners("trust_phone").await;
    let (mut b, mut m) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
    );
    enrolled(&mut b, "e", vec![phone("+44 07911 123456", true)], &[]).await;
    let at_m = enrolled(&mut m, "e", vec![phone("+44 7911 123456", true)], &[]).await;
    assert!(at_m.linked_existing);
    assert_eq!(at_m.member.unwrap().identifiers[0].value, "+447911123456");
}

/// A mutation without a request_id is INVALID_ARGUMENT naming the field, and writes nothing.
#[tokio::test]
async fn a_mutation_without_a_request_id_is_refused_and_writes_nothing() {
    let identity = Identity::with_partners("trust_request_id").await;
    let mut b = identity.as_partner("brand-a");
    let e = b
        .members
        .enroll_member(enroll("", vec![phone("13700137060", true)], &[]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).1.as_deref()),
        (Code::InvalidArgument, Some("request_id"))
    );
    let resolved = b
        .members
        .resolve_member(pb::ResolveMemberRequest {
            identifier: Some(phone("13700137060", true)),
        })
        .await
        .unwrap_err();
    assert_eq!(resolved.code(), Code::NotFound);
}

/// A request over the size limit is RESOURCE_EXHAUSTED (gRPC's convention), not OUT_OF_RANGE.
#[tokio::test]
async fn an_oversized_request_is_resource_exhausted() {
    let identity = Identity::with_partners("trust_oversize").await;
    let mut b = identity.as_partner("brand-a");
    let big = "x".repeat(5 * 1024 * 1024);
    let e = b
        .members
        .enroll_member(enroll(
            "big",
            vec![phone("13700137070", true)],
            &[("note", &big)],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
}

/// Failed secrets are counted per client id and source: a stranger guessing from elsewhere
/// is stopped, and the partner still gets its tokens from its own address.
#[tokio::test]
async fn wrong_secrets_lock_out_their_source_not_the_partner() {
    let identity = Identity::with_partners("trust_failed_secrets").await;
    let created = identity
        .as_partner("brand-a")
        .auth
        .create_credential(pb::CreateCredentialRequest {
            request_id: "c".into(),
            parent: "partners/brand-a".into(),
            scopes: vec!["identity.read".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let client_id = created.credential.unwrap().client_id;
    let address = identity.address();
    let from = |ip: &str| {
        let channel = tonic::transport::Endpoint::from_shared(address.clone())
            .unwrap()
            .local_address(Some(ip.parse().unwrap()))
            .connect_lazy();
        pb::auth_service_client::AuthServiceClient::new(channel)
    };
    let (mut stranger, mut partner) = (from("127.0.0.2"), from("127.0.0.1"));
    let ask = |secret: &str| pb::IssueTokenRequest {
        client_id: client_id.clone(),
        client_secret: secret.into(),
        ..Default::default()
    };
    for _ in 0..10 {
        let e = stranger.issue_token(ask("lys_wrong")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let locked = stranger
        .issue_token(ask(&created.client_secret))
        .await
        .unwrap_err();
    assert_eq!(
        (locked.code(), details(&locked).0.as_str()),
        (Code::ResourceExhausted, "TOO_MANY_FAILED_SECRETS")
    );
    partner
        .issue_token(ask(&created.client_secret))
        .await
        .expect("the partner is not locked out by a stranger's guesses");
}

/// Candidates are counted only among allies: an ally's unverified record is a candidate, a
/// stranger's is nothing.
#[tokio::test]
async fn unverified_candidates_are_counted_only_within_alliances() {
    let identity = Identity::with_partners("trust_candidates").await;
    let (mut b, mut m, mut x) = (
        identity.as_partner("brand-a"),
        identity.as_partner("mall-b"),
        identity.as_partner("brand-c"),
    );
    enrolled(&mut b, "e", vec![phone("13700137080", false)], &[]).await;
    enrolled(
        &mut x,
        "e",
        vec![
            phone("13700137080", true),
            unionid("oX00000000000000001", "wx-x"),
        ],
        &[],
    )
    .await;
    let at_m = enrolled(&mut m, "e", vec![phone("13700137080", true)], &[]).await;
    assert!(!at_m.linked_existing);
    assert_eq!(
        at_m.unverified_candidate_count, 1,
        "the brand's record, not the stranger's"
    );
}

/// Proposals no longer look partners up, so the operator could be named in one: it still
/// cannot join, so no alliance (and no consent) ever makes it a reader of members.
#[tokio::test]
async fn the_operator_joins_no_alliance() {
    let identity = Identity::with_partners("trust_operator_alliance").await;
    let proposed = identity
        .as_partner("brand-a")
        .partners
        .create_alliance(pb::CreateAllianceRequest {
            request_id: "with-operator".into(),
            alliance: Some(crate::harness::alliance(&["brand-a", "operator"])),
        })
        .await
        .unwrap()
        .into_inner();
    let mut operator = identity.operator();
    let refused = operator
        .partners
        .accept_alliance(pb::AcceptAllianceRequest {
            request_id: "accept".into(),
            name: proposed.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), details(&refused).0.as_str()),
        (Code::PermissionDenied, "OPERATOR_JOINS_NO_ALLIANCE")
    );
    let still = identity
        .as_partner("brand-a")
        .partners
        .get_alliance(pb::GetAllianceRequest {
            name: proposed.name,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.status, pb::AllianceStatus::Proposed as i32);
    let own = operator
        .partners
        .create_alliance(pb::CreateAllianceRequest {
            request_id: "own".into(),
            alliance: Some(crate::harness::alliance(&["operator", "brand-a"])),
        })
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied);
}

/// An open feed outlives no refusal: the stream of a store's till ends with PERMISSION_DENIED /
/// STORE_CLOSED when its partner closes the store, a partner's with PARTNER_SUSPENDED when the
/// operator suspends it — while another partner's stream goes on.
#[tokio::test]
async fn an_open_feed_ends_the_moment_its_token_is_refused() {
    let identity = Identity::with_partners("trust_stream_refused").await;
    let mut brand = identity.as_partner("brand-a");
    brand
        .partners
        .create_store(pb::CreateStoreRequest {
            request_id: "store".into(),
            parent: "partners/brand-a".into(),
            store_id: "sh01".into(),
            store: Some(pb::Store {
                display_name: "Shanghai".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut till = identity.as_store("brand-a", "sh01").feed().await;
    let mut suspended = identity.as_partner("brand-c").feed().await;
    let mut other = identity.as_partner("mall-b").feed().await;
    let ends = async |stream: &mut tonic::Streaming<pb::WatchConsentEventsResponse>| loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return ("ended without a status".to_owned(), String::new()),
            Ok(Err(status)) => return (format!("{:?}", status.code()), details(&status).0),
            Err(_) => return ("still open after 5 s".to_owned(), String::new()),
        }
    };
    brand
        .partners
        .update_store(crate::harness::store_active(
            "brand-a", "sh01", false, "close",
        ))
        .await
        .unwrap();
    assert_eq!(
        ends(&mut till).await,
        ("PermissionDenied".to_owned(), "STORE_CLOSED".to_owned())
    );
    identity
        .operator()
        .partners
        .update_partner(crate::harness::partner_status(
            "brand-c",
            pb::PartnerStatus::Suspended,
            "suspend",
        ))
        .await
        .unwrap();
    assert_eq!(
        ends(&mut suspended).await,
        (
            "PermissionDenied".to_owned(),
            "PARTNER_SUSPENDED".to_owned()
        )
    );
    // The mall's stream is still open, and still delivers: a consent granted to it arrives.
    let (brand_member, mall_member) = identity.shared_member("13800138077").await;
    brand
        .consents
        .grant_consent(grant(
            &brand_member,
            "mall-b",
            &[ConsentPurpose::ShareProfile],
        ))
        .await
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), other.message())
        .await
        .expect("the mall's stream is open")
        .unwrap()
        .expect("an event");
    assert_eq!(event.member, mall_member, "named by the mall's own id");
}
