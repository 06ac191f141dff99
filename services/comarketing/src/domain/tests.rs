use super::*;

fn cny(minor: i64) -> Result<Money, String> {
    Money::positive("CNY", minor)
}

#[test]
fn the_proposer_takes_part_has_accepted_and_shares_belong_to_participants() {
    let mall = PartnerId::new("mall-b");
    let partners = ["partners/brand-a".to_owned()];
    let d = CampaignDraft {
        display_name: "Double 12",
        partners: &partners,
        budget: vec![
            ("partners/mall-b", cny(600_000)),
            ("partners/brand-a", cny(400_000)),
        ],
        start: Ok(10),
        end: Ok(20),
        alliance: "",
        channels: &[],
        benefits: &[],
        sessions: &[],
    };
    let c = Campaign::propose(&mall, &d, 1).unwrap();
    assert_eq!(c.partners, [mall.clone(), PartnerId::new("brand-a")]);
    assert_eq!(c.accepted_by, [mall]);
    assert_eq!(c.state, CampaignState::Draft);
    assert!(c.includes("brand-a") && !c.includes("brand-c"));
}

#[test]
fn a_share_for_an_outsider_or_in_another_currency_is_refused() {
    let mall = PartnerId::new("mall-b");
    let partners = ["partners/brand-a".to_owned()];
    let d = CampaignDraft {
        display_name: "Double 12",
        partners: &partners,
        budget: vec![
            ("partners/mall-b", cny(600_000)),
            ("partners/brand-c", cny(1)),
            ("partners/brand-a", Money::positive("USD", 5)),
        ],
        start: Ok(10),
        end: Ok(20),
        alliance: "",
        channels: &[],
        benefits: &[],
        sessions: &[],
    };
    let e = Campaign::propose(&mall, &d, 1).unwrap_err();
    let fields: Vec<_> = lianyu_kit::ServiceError::field_violations(&e)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        ["campaign.budget[1].partner", "campaign.budget[2].amount"]
    );
}

fn double_12() -> Campaign {
    let partners = ["partners/brand-a".to_owned()];
    let d = CampaignDraft {
        display_name: "Double 12",
        partners: &partners,
        budget: vec![
            ("partners/mall-b", cny(600_000)),
            ("partners/brand-a", cny(400_000)),
        ],
        start: Ok(10),
        end: Ok(20),
        alliance: "alliances/a1",
        channels: &[1, 4, 1],
        benefits: &["benefits/b1".to_owned()],
        sessions: &["sessions/s1".to_owned()],
    };
    Campaign::propose(&PartnerId::new("mall-b"), &d, 1).unwrap()
}

#[test]
fn every_participant_accepts_before_it_runs() {
    let brand = PartnerId::new("brand-a");
    let mut c = double_12();
    assert_eq!(c.channels, [1, 4]);
    let e = c.clone().launch(2).unwrap_err();
    assert_eq!(
        lianyu_kit::ServiceError::reason(&e),
        "CAMPAIGN_NOT_ACCEPTED"
    );
    assert!(e.to_string().contains("partners/brand-a"), "{e}");
    c.accept(&brand, 2).unwrap();
    assert_eq!(c.state, CampaignState::Scheduled);
    c.accept(&brand, 3).unwrap();
    c.launch(3).unwrap();
    assert_eq!(c.state, CampaignState::Running);
    let e = c.clone().launch(4).unwrap_err();
    assert_eq!(lianyu_kit::ServiceError::reason(&e), "CAMPAIGN_STATE");
    c.end(4).unwrap();
    assert!(c.end(5).is_err());
    assert!(c.accept(&brand, 5).is_err());
}

#[test]
fn a_revision_withdraws_the_others_acceptance() {
    let brand = PartnerId::new("brand-a");
    let mall = PartnerId::new("mall-b");
    let mut c = double_12();
    c.accept(&brand, 2).unwrap();
    assert_eq!(c.state, CampaignState::Scheduled);
    let changed = double_12();
    assert!(
        c.revise(&brand, changed.clone(), 3).is_err(),
        "SCHEDULED is not changed"
    );
    let mut c = double_12();
    let id = c.id.clone();
    c.revise(&brand, changed, 3).unwrap();
    assert_eq!(c.id, id);
    assert_eq!(c.accepted_by, [brand]);
    assert_eq!(c.waiting_for(), [&mall]);
}

#[test]
fn each_participant_bears_its_share_of_the_spend() {
    let c = double_12();
    let (brand, mall) = (PartnerId::new("brand-a"), PartnerId::new("mall-b"));
    assert_eq!(
        c.share_bps(),
        [(mall.clone(), 6_000), (brand.clone(), 4_000)]
    );
    // The brand funded all 10,000 of coupons: the mall owes it its 60 %.
    assert_eq!(
        c.settlement(&[(brand.clone(), 10_000)]),
        [(mall.clone(), brand.clone(), 6_000)]
    );
    // Each paid exactly its share: nobody owes anybody.
    assert!(c.settlement(&[(brand, 4_000), (mall, 6_000)]).is_empty());
}

#[test]
fn a_share_that_does_not_divide_evenly_is_rounded_down_and_the_last_bears_the_rest() {
    let mut c = double_12();
    let (brand, mall) = (PartnerId::new("brand-a"), PartnerId::new("mall-b"));
    // ¥500 from the mall and ¥1,000 from the brand (the contract's example): a third and two.
    c.budget = vec![
        (mall.clone(), cny(50_000).unwrap()),
        (brand.clone(), cny(100_000).unwrap()),
    ];
    // The brand funded all ¥50.00: the mall's third is 1,666.67 minor units, rounded down;
    // the brand, listed last, bears the other 3,334, so the shares sum to the spend exactly.
    assert_eq!(
        c.settlement(&[(brand.clone(), 5_000)]),
        [(mall.clone(), brand.clone(), 1_666)]
    );
    // Whatever the spend, nothing is lost or made by rounding: what the debtors pay is what
    // the funders paid beyond their shares.
    for spent in [1, 2, 3, 7, 99, 10_001, 123_457] {
        let paid: i64 = c
            .settlement(&[(brand.clone(), spent)])
            .iter()
            .map(|(debtor, creditor, amount)| {
                assert_eq!((debtor, creditor), (&mall, &brand));
                amount
            })
            .sum();
        assert_eq!(paid, spent / 3, "spent {spent}");
    }
}
