//! The tenancy matrix: every identity RPC, aimed at one partner's canary members, stores,
//! credentials and alliances, called by each kind of principal that is not that partner — its
//! ally, an outsider, a store token of another of its stores, the operator, a suspended ally.
//! Each call must be refused or answer without a byte of what the rule keeps from that caller,
//! and after every call the owner's records read back exactly as before.

use std::time::Duration;

use futures::StreamExt;
use lianyu_proto::{
    common::v1::{ConsentPurpose, PartnerKind},
    identity::v1 as pb,
};
use prost::Message;
use prost_types::FieldMask;
use tonic::{Code, Status};

use crate::harness::{As, Identity, count, enroll, grant, phone};

/// Everything a probe aims at: the owner's (brand-a's) resources.
struct Targets {
    member_a: String,
    member_z: String,
    alliance_with_s: String,
    credential: String,
}

/// Every identity RPC. Writes aim at the owner's resources; reads too, or list the caller's
/// own view (which must not hold the owner's canaries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    GetPartner,
    ListPartners,
    UpdatePartner,
    CreateStore,
    GetStore,
    ListStores,
    UpdateStore,
    CreateAllianceForOthers,
    GetAlliance,
    ListAlliances,
    AcceptAlliance,
    UpdateAlliance,
    EndAlliance,
    CreateCredential,
    RotateCredential,
    RevokeCredential,
    ListCredentials,
    EnrollMember,
    ResolveMember,
    GetMember,
    LinkIdentifier,
    UnlinkIdentifier,
    MergeMembers,
    ExportMemberData,
    EraseMember,
    GrantConsent,
    WithdrawConsent,
    CheckConsent,
    BatchCheckConsent,
    ListConsentsOfMember,
    ListConsentsGranted,
    WatchConsentEvents,
    ListAccessRecordsOfMember,
    ListAccessRecords,
    CheckAccessLog,
    /// The caller's own view, through its own ids, of the same people: what the owner
    /// shared under consent, nothing more.
    OwnGetMember,
    OwnListConsents,
    OwnExport,
    OwnAccessRecords,
}

const ALL: [Probe; 39] = [
    Probe::GetPartner,
    Probe::ListPartners,
    Probe::UpdatePartner,
    Probe::CreateStore,
    Probe::GetStore,
    Probe::ListStores,
    Probe::UpdateStore,
    Probe::CreateAllianceForOthers,
    Probe::GetAlliance,
    Probe::ListAlliances,
    Probe::AcceptAlliance,
    Probe::UpdateAlliance,
    Probe::EndAlliance,
    Probe::CreateCredential,
    Probe::RotateCredential,
    Probe::RevokeCredential,
    Probe::ListCredentials,
    Probe::EnrollMember,
    Probe::ResolveMember,
    Probe::GetMember,
    Probe::LinkIdentifier,
    Probe::UnlinkIdentifier,
    Probe::MergeMembers,
    Probe::ExportMemberData,
    Probe::EraseMember,
    Probe::GrantConsent,
    Probe::WithdrawConsent,
    Probe::CheckConsent,
    Probe::BatchCheckConsent,
    Probe::ListConsentsOfMember,
    Probe::ListConsentsGranted,
    Probe::WatchConsentEvents,
    Probe::ListAccessRecordsOfMember,
    Probe::ListAccessRecords,
    Probe::CheckAccessLog,
    Probe::OwnGetMember,
    Probe::OwnListConsents,
    Probe::OwnExport,
    Probe::OwnAccessRecords,
];

fn mask(path: &str) -> Option<FieldMask> {
    Some(FieldMask {
        paths: vec![path.into()],
    })
}

fn email(value: &str) -> pb::Identifier {
    pb::Identifier {
        kind: pb::IdentifierKind::Email as i32,
        value: value.into(),
        verified: true,
        ..Default::default()
    }
}

fn bytes<T: Message>(r: Result<tonic::Response<T>, Status>) -> Result<Vec<u8>, Status> {
    r.map(|r| r.into_inner().encode_to_vec())
}

/// Runs one probe; the answer's bytes, or the refusal.
async fn run(
    c: &mut As,
    probe: Probe,
    t: &Targets,
    own: &[String],
    n: usize,
) -> Result<Vec<u8>, Status> {
    let rid = format!("probe-{n}");
    let mut all = Vec::new();
    for id in own {
        let answer = match probe {
            Probe::OwnGetMember => bytes(
                c.members
                    .get_member(pb::GetMemberRequest {
                        name: id.clone(),
                        purpose: ConsentPurpose::ShareProfile as i32,
                    })
                    .await,
            ),
            Probe::OwnListConsents => bytes(
                c.consents
                    .list_consents(pb::ListConsentsRequest {
                        member: id.clone(),
                        ..Default::default()
                    })
                    .await,
            ),
            Probe::OwnExport => bytes(
                c.members
                    .export_member_data(pb::ExportMemberDataRequest { member: id.clone() })
                    .await,
            ),
            Probe::OwnAccessRecords => bytes(
                c.audit
                    .list_access_records(pb::ListAccessRecordsRequest {
                        member: id.clone(),
                        ..Default::default()
                    })
                    .await,
            ),
            _ => break,
        };
        all.extend(answer?);
    }
    match probe {
        Probe::GetPartner => bytes(
            c.partners
                .get_partner(pb::GetPartnerRequest {
                    name: "partners/brand-a".into(),
                })
                .await,
        ),
        Probe::ListPartners => bytes(
            c.partners
                .list_partners(pb::ListPartnersRequest::default())
                .await,
        ),
        Probe::UpdatePartner => bytes(
            c.partners
                .update_partner(pb::UpdatePartnerRequest {
                    request_id: rid,
                    partner: Some(pb::Partner {
                        name: "partners/brand-a".into(),
                        display_name: "Hijacked".into(),
                        ..Default::default()
                    }),
                    update_mask: mask("display_name"),
                })
                .await,
        ),
        Probe::CreateStore => bytes(
            c.partners
                .create_store(pb::CreateStoreRequest {
                    request_id: rid,
                    parent: "partners/brand-a".into(),
                    store_id: format!("planted-{n}"),
                    store: Some(pb::Store {
                        display_name: "Planted".into(),
                        ..Default::default()
                    }),
                })
                .await,
        ),
        Probe::GetStore => bytes(
            c.partners
                .get_store(pb::GetStoreRequest {
                    name: "partners/brand-a/stores/one".into(),
                })
                .await,
        ),
        Probe::ListStores => bytes(
            c.partners
                .list_stores(pb::ListStoresRequest {
                    parent: "partners/brand-a".into(),
                    ..Default::default()
                })
                .await,
        ),
        Probe::UpdateStore => bytes(
            c.partners
                .update_store(pb::UpdateStoreRequest {
                    request_id: rid,
                    store: Some(pb::Store {
                        name: "partners/brand-a/stores/one".into(),
                        display_name: "Hijacked".into(),
                        ..Default::default()
                    }),
                    update_mask: mask("display_name"),
                })
                .await,
        ),
        Probe::CreateAllianceForOthers => bytes(
            c.partners
                .create_alliance(pb::CreateAllianceRequest {
                    request_id: rid,
                    alliance: Some(crate::harness::alliance(&["brand-a", "brand-s"])),
                })
                .await,
        ),
        Probe::GetAlliance => bytes(
            c.partners
                .get_alliance(pb::GetAllianceRequest {
                    name: t.alliance_with_s.clone(),
                })
                .await,
        ),
        Probe::ListAlliances => bytes(
            c.partners
                .list_alliances(pb::ListAlliancesRequest::default())
                .await,
        ),
        Probe::AcceptAlliance => bytes(
            c.partners
                .accept_alliance(pb::AcceptAllianceRequest {
                    request_id: rid,
                    name: t.alliance_with_s.clone(),
                    ..Default::default()
                })
                .await,
        ),
        Probe::UpdateAlliance => bytes(
            c.partners
                .update_alliance(pb::UpdateAllianceRequest {
                    request_id: rid,
                    alliance: Some(pb::Alliance {
                        name: t.alliance_with_s.clone(),
                        processing_method: "sold to data brokers".into(),
                        ..Default::default()
                    }),
                    update_mask: mask("processing_method"),
                })
                .await,
        ),
        Probe::EndAlliance => bytes(
            c.partners
                .end_alliance(pb::EndAllianceRequest {
                    request_id: rid,
                    name: t.alliance_with_s.clone(),
                })
                .await,
        ),
        Probe::CreateCredential => bytes(
            c.auth
                .create_credential(pb::CreateCredentialRequest {
                    request_id: rid,
                    parent: "partners/brand-a".into(),
                    scopes: vec!["identity.read".into()],
                })
                .await,
        ),
        Probe::RotateCredential => bytes(
            c.auth
                .rotate_credential(pb::RotateCredentialRequest {
                    request_id: rid,
                    name: t.credential.clone(),
                    overlap_seconds: 0,
                })
                .await,
        ),
        Probe::RevokeCredential => bytes(
            c.auth
                .revoke_credential(pb::RevokeCredentialRequest {
                    request_id: rid,
                    name: t.credential.clone(),
                })
                .await,
        ),
        Probe::ListCredentials => bytes(
            c.auth
                .list_credentials(pb::ListCredentialsRequest {
                    parent: "partners/brand-a".into(),
                    ..Default::default()
                })
                .await,
        ),
        // The caller's own claim on the canary's email: its own record, linked to nobody.
        Probe::EnrollMember => bytes(
            c.members
                .enroll_member(enroll(&rid, vec![email("canary-a@brand.example")], &[]))
                .await,
        ),
        Probe::ResolveMember => bytes(
            c.members
                .resolve_member(pb::ResolveMemberRequest {
                    identifier: Some(email("canary-z@brand.example")),
                })
                .await,
        ),
        Probe::GetMember => bytes(
            c.members
                .get_member(pb::GetMemberRequest {
                    name: t.member_a.clone(),
                    purpose: 0,
                })
                .await,
        ),
        Probe::LinkIdentifier => bytes(
            c.members
                .link_identifier(pb::LinkIdentifierRequest {
                    request_id: rid,
                    member: t.member_a.clone(),
                    identifier: Some(email("attacker@evil.example")),
                })
                .await,
        ),
        Probe::UnlinkIdentifier => bytes(
            c.members
                .unlink_identifier(pb::UnlinkIdentifierRequest {
                    request_id: rid,
                    member: t.member_a.clone(),
                    identifier: Some(email("canary-a@brand.example")),
                })
                .await,
        ),
        // Two real members of the owner, so the probe could succeed if the rule failed.
        Probe::MergeMembers => bytes(
            c.members
                .merge_members(pb::MergeMembersRequest {
                    request_id: rid,
                    member: t.member_a.clone(),
                    duplicate_member: t.member_z.clone(),
                    evidence: Some(phone("13988880001", true)),
                })
                .await,
        ),
        Probe::ExportMemberData => bytes(
            c.members
                .export_member_data(pb::ExportMemberDataRequest {
                    member: t.member_a.clone(),
                })
                .await,
        ),
        Probe::EraseMember => bytes(
            c.members
                .erase_member(pb::EraseMemberRequest {
                    request_id: rid,
                    member: t.member_a.clone(),
                    scope: pb::ErasureScope::JointDomain as i32,
                })
                .await,
        ),
        Probe::GrantConsent => bytes(
            c.consents
                .grant_consent(pb::GrantConsentRequest {
                    request_id: rid,
                    ..grant(&t.member_z, "brand-c", &[ConsentPurpose::ShareProfile])
                })
                .await,
        ),
        Probe::WithdrawConsent => bytes(
            c.consents
                .withdraw_consent(pb::WithdrawConsentRequest {
                    request_id: rid,
                    member: t.member_a.clone(),
                    grantee: "partners/mall-b".into(),
                    purposes: vec![ConsentPurpose::ShareProfile as i32],
                })
                .await,
        ),
        Probe::CheckConsent => bytes(
            c.consents
                .check_consent(pb::CheckConsentRequest {
                    member: t.member_a.clone(),
                    purpose: ConsentPurpose::ShareProfile as i32,
                })
                .await,
        ),
        Probe::BatchCheckConsent => bytes(
            c.consents
                .batch_check_consent(pb::BatchCheckConsentRequest {
                    members: vec![t.member_a.clone(), t.member_z.clone()],
                    purpose: ConsentPurpose::ShareProfile as i32,
                })
                .await,
        ),
        Probe::ListConsentsOfMember => bytes(
            c.consents
                .list_consents(pb::ListConsentsRequest {
                    member: t.member_a.clone(),
                    ..Default::default()
                })
                .await,
        ),
        Probe::ListConsentsGranted => bytes(
            c.consents
                .list_consents(pb::ListConsentsRequest::default())
                .await,
        ),
        // Whatever the caller's feed holds now (a moment's worth), concatenated.
        Probe::WatchConsentEvents => {
            let mut stream = c
                .consents
                .watch_consent_events(pb::WatchConsentEventsRequest { after: None })
                .await?
                .into_inner();
            let mut all = Vec::new();
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(300), stream.next()).await
            {
                all.extend(event?.encode_to_vec());
            }
            Ok(all)
        }
        Probe::ListAccessRecordsOfMember => bytes(
            c.audit
                .list_access_records(pb::ListAccessRecordsRequest {
                    member: t.member_a.clone(),
                    ..Default::default()
                })
                .await,
        ),
        Probe::ListAccessRecords => bytes(
            c.audit
                .list_access_records(pb::ListAccessRecordsRequest::default())
                .await,
        ),
        Probe::CheckAccessLog => {
            bytes(c.audit.check_access_log(pb::CheckAccessLogRequest {}).await)
        }
        Probe::OwnGetMember
        | Probe::OwnListConsents
        | Probe::OwnExport
        | Probe::OwnAccessRecords => Ok(all),
    }
}

/// The owner's records as it reads them, and the rows behind them: equal before and after
/// every probe, or a probe changed what it must not.
async fn snapshot(identity: &Identity, owner: &mut As, t: &Targets) -> String {
    let mut out = String::new();
    for member in [&t.member_a, &t.member_z] {
        let m = owner
            .members
            .get_member(pb::GetMemberRequest {
                name: member.clone(),
                purpose: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut profile: Vec<_> = m.profile.into_iter().collect();
        profile.sort();
        out += &format!("{member}: {:?} {profile:?}\n", m.identifiers);
        let consents = owner
            .consents
            .list_consents(pb::ListConsentsRequest {
                member: member.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out += &format!("{:?}\n", consents.consents);
    }
    let alliances = owner
        .partners
        .list_alliances(pb::ListAlliancesRequest::default())
        .await
        .unwrap()
        .into_inner();
    out += &format!("{:?}\n", alliances.alliances);
    let stores = owner
        .partners
        .list_stores(pb::ListStoresRequest {
            parent: "partners/brand-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    out += &format!("{:?}\n", stores.stores);
    let credentials = owner
        .auth
        .list_credentials(pb::ListCredentialsRequest {
            parent: "partners/brand-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    out += &format!("{:?}\n", credentials.credentials);
    let partner = owner
        .partners
        .get_partner(pb::GetPartnerRequest {
            name: "partners/brand-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    out += &format!("{} {}\n", partner.display_name, partner.status);
    let db = identity.database().await;
    for table in [
        "identifiers WHERE partner_id = 'brand-a'",
        "profiles WHERE partner_id = 'brand-a'",
        "scoped_ids WHERE partner_id = 'brand-a' AND erased_at IS NULL",
        "consents WHERE collector = 'brand-a' AND state = 'granted'",
        "member_merges",
        "alliance_partners WHERE partner_id = 'brand-a'",
        // Reads of the owner's data: only the mall's consented reads of canary A may add any.
        "access_records WHERE source = 'brand-a' AND (allowed = false OR accessor <> 'mall-b')",
    ] {
        out += &format!(
            "{table}: {}\n",
            count(&db, &format!("SELECT COUNT(*) FROM {table}")).await
        );
    }
    out
}

/// Whether the refusal or answer bytes contain any of `canaries`.
fn leaked<'a>(answer: &Result<Vec<u8>, Status>, canaries: &[&'a str]) -> Option<&'a str> {
    let text = match answer {
        Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Err(status) => format!(
            "{} {}",
            status.message(),
            String::from_utf8_lossy(status.details())
        ),
    };
    canaries.iter().copied().find(|c| text.contains(c))
}

/// A caller: who, its clients, what it must never see, what it may do, its own ids of the
/// canary people.
type Principal<'a> = (&'a str, As, Vec<&'a str>, Vec<Probe>, Vec<String>);

const OWN_STORE: &str = "store principal of another store";
const OPERATOR: &str = "operator";

#[tokio::test]
async fn no_principal_but_the_owner_changes_or_reads_the_owners_records() {
    let identity = Identity::with_partners("matrix").await;
    let mut operator = identity.operator();
    operator
        .partners
        .create_partner(pb::CreatePartnerRequest {
            request_id: "create-brand-s".into(),
            partner_id: "brand-s".into(),
            partner: Some(pb::Partner {
                kind: PartnerKind::Brand as i32,
                display_name: "Brand S".into(),
                privacy_contact: "privacy@brand-s.example".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let alliance_with_s = identity.ally("brand-a", "brand-s", &[]).await;
    let mut owner = identity.as_partner("brand-a");
    for store in ["one", "two"] {
        owner
            .partners
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
    let created = owner
        .auth
        .create_credential(pb::CreateCredentialRequest {
            request_id: "cred".into(),
            parent: "partners/brand-a".into(),
            scopes: vec!["identity.read".into()],
        })
        .await
        .unwrap()
        .into_inner();
    // Canary A: shared with the mall under consent. Canary Z: shared with nobody.
    let member_a = owner
        .enrolled(enroll(
            "canary-a",
            vec![phone("13988880001", true), email("canary-a@brand.example")],
            &[("note", "CANARY-A-7f3e")],
        ))
        .await;
    let member_z = owner
        .enrolled(enroll(
            "canary-z",
            vec![phone("13988880002", true), email("canary-z@brand.example")],
            &[("note", "CANARY-Z-91c4")],
        ))
        .await;
    let mut mall = identity.as_partner("mall-b");
    let mall_a = mall
        .enrolled(enroll("a", vec![phone("13988880001", true)], &[]))
        .await;
    let mall_z = mall
        .enrolled(enroll("z", vec![phone("13988880002", true)], &[]))
        .await;
    owner
        .consents
        .grant_consent(grant(&member_a, "mall-b", &[ConsentPurpose::ShareProfile]))
        .await
        .unwrap();
    let mut suspended = identity.as_partner("brand-s");
    let suspended_a = suspended
        .enrolled(enroll("a", vec![phone("13988880001", true)], &[]))
        .await;
    // The outsider holds the same phones, as its own (unlinked) members.
    let mut outsider = identity.as_partner("brand-c");
    let outsider_a = outsider
        .enrolled(enroll("a", vec![phone("13988880001", true)], &[]))
        .await;
    let outsider_z = outsider
        .enrolled(enroll("z", vec![phone("13988880002", true)], &[]))
        .await;
    // The mall reads canary A once under its consent: a record in both partners' logs.
    mall.members
        .get_member(pb::GetMemberRequest {
            name: mall_a.clone(),
            purpose: 0,
        })
        .await
        .unwrap();
    operator
        .partners
        .update_partner(crate::harness::partner_status(
            "brand-s",
            pb::PartnerStatus::Suspended,
            "suspend-s",
        ))
        .await
        .unwrap();
    let t = Targets {
        member_a: member_a.clone(),
        member_z: member_z.clone(),
        alliance_with_s,
        credential: created.credential.clone().unwrap().name,
    };
    let db = identity.database().await;
    let mesh_ids: Vec<String> = {
        use sea_orm::{ConnectionTrait, Statement};
        db.query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id FROM members",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.try_get_by_index::<String>(0).unwrap())
        .collect()
    };
    let strip = |name: &str| name.trim_start_matches("members/").to_owned();
    let (a_id, z_id) = (strip(&member_a), strip(&member_z));
    let mut everything: Vec<&str> = vec![
        "CANARY-A-7f3e",
        "CANARY-Z-91c4",
        "canary-z@brand.example",
        &a_id,
        &z_id,
    ];
    everything.extend(mesh_ids.iter().map(String::as_str));
    // What each principal may legitimately see of the canaries: the mall, canary A's profile
    // under its consent (and its own ids of both people, which are not the owner's).
    let (mall_a_id, mall_z_id) = (strip(&mall_a), strip(&mall_z));
    let not_for_outsiders: Vec<&str> = everything
        .iter()
        .copied()
        .chain([mall_a_id.as_str(), mall_z_id.as_str()])
        .collect();
    let not_for_the_mall: Vec<&str> = everything
        .iter()
        .copied()
        .filter(|c| *c != "CANARY-A-7f3e")
        .collect();

    use Probe as P;
    let principals: Vec<Principal<'_>> = vec![
        (
            "allied partner",
            identity.as_partner("mall-b"),
            not_for_the_mall,
            vec![
                P::GetPartner,
                P::ListPartners,
                P::ListAlliances,
                P::EnrollMember,
                P::CheckConsent,
                P::BatchCheckConsent,
                P::ListConsentsGranted,
                P::WatchConsentEvents,
                P::ListAccessRecords,
                P::OwnGetMember,
                P::OwnListConsents,
                P::OwnExport,
                P::OwnAccessRecords,
            ],
            vec![mall_a.clone(), mall_z.clone()],
        ),
        (
            "unallied partner",
            identity.as_partner("brand-c"),
            not_for_outsiders.clone(),
            vec![
                P::ListPartners,
                P::ListAlliances,
                P::EnrollMember,
                P::CheckConsent,
                P::BatchCheckConsent,
                P::ListConsentsGranted,
                P::WatchConsentEvents,
                P::ListAccessRecords,
                P::OwnGetMember,
                P::OwnListConsents,
                P::OwnExport,
                P::OwnAccessRecords,
            ],
            vec![outsider_a, outsider_z],
        ),
        (
            // The owner's own partner narrowed to store two: the partner's members are its
            // own, but nothing partner-wide and nothing of store one.
            OWN_STORE,
            identity.as_store("brand-a", "two"),
            Vec::new(),
            vec![
                P::GetPartner,
                P::ListPartners,
                P::ListStores,
                P::EnrollMember,
                P::ResolveMember,
                P::GetMember,
                P::LinkIdentifier,
                P::UnlinkIdentifier,
                P::WithdrawConsent,
                P::ExportMemberData,
                P::CheckConsent,
                P::BatchCheckConsent,
                P::ListConsentsOfMember,
                P::ListConsentsGranted,
                P::WatchConsentEvents,
                P::ListAccessRecordsOfMember,
                P::ListAccessRecords,
                P::OwnGetMember,
                P::OwnListConsents,
                P::OwnExport,
                P::OwnAccessRecords,
            ],
            vec![member_a.clone(), member_z.clone()],
        ),
        (
            // The operator runs the mesh (partners, their credentials) and never reads members.
            OPERATOR,
            identity.operator(),
            not_for_outsiders.clone(),
            vec![
                P::GetPartner,
                P::ListPartners,
                P::ListAlliances,
                P::CreateCredential,
                P::RotateCredential,
                P::RevokeCredential,
                P::ListCredentials,
                P::EnrollMember,
                P::CheckConsent,
                P::BatchCheckConsent,
                P::ListConsentsGranted,
                P::WatchConsentEvents,
                P::ListAccessRecords,
                P::CheckAccessLog,
                P::OwnGetMember,
                P::OwnListConsents,
                P::OwnExport,
                P::OwnAccessRecords,
            ],
            Vec::new(),
        ),
        (
            "suspended partner",
            identity.as_partner("brand-s"),
            not_for_outsiders,
            Vec::new(),
            vec![suspended_a],
        ),
    ];

    let mut before = snapshot(&identity, &mut owner, &t).await;
    let mut n = 0;
    for (who, mut client, canaries, allowed, own) in principals {
        if who == OPERATOR {
            // Before the operator (who may rotate it): no partner rotated or revoked the
            // owner's credential, so it still opens.
            identity
                .public_auth()
                .issue_token(pb::IssueTokenRequest {
                    client_id: created.credential.clone().unwrap().client_id,
                    client_secret: created.client_secret.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        for probe in ALL {
            n += 1;
            let answer = run(&mut client, probe, &t, &own, n).await;
            match &answer {
                Ok(_) => assert!(allowed.contains(&probe), "{who}: {probe:?} was allowed"),
                Err(status) => {
                    assert!(
                        !allowed.contains(&probe),
                        "{who}: {probe:?} refused: {status:?}"
                    );
                    assert!(
                        matches!(
                            status.code(),
                            Code::NotFound
                                | Code::PermissionDenied
                                | Code::InvalidArgument
                                | Code::FailedPrecondition
                        ),
                        "{who}: {probe:?}: {status:?}"
                    );
                    if who == "suspended partner" {
                        assert_eq!(status.code(), Code::PermissionDenied, "{probe:?}");
                    }
                }
            }
            if let Some(canary) = leaked(&answer, &canaries) {
                panic!("{who}: {probe:?} revealed {canary:?}");
            }
            let after = snapshot(&identity, &mut owner, &t).await;
            if (who == OWN_STORE || who == OPERATOR) && answer.is_ok() {
                // The owner's own partner, at its counter, may change its own members; the
                // operator administers partners' credentials. Neither is another partner.
                before = after;
            } else {
                assert_eq!(
                    before, after,
                    "{who}: {probe:?} changed the owner's records"
                );
            }
        }
    }
}
