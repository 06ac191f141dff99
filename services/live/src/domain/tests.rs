use super::*;

fn draft<'a>(hosts: &'a [String], store: &'a str, start: i64) -> SessionDraft<'a> {
    SessionDraft {
        title: "Double 12 at the flagship",
        hosts,
        store,
        stream_url: "https://cdn.example/live/1.m3u8",
        scheduled_start: Ok(start),
        profile: ProfileDraft::default(),
    }
}

fn fields(e: &KitError) -> Vec<String> {
    lianyu_kit::ServiceError::field_violations(e)
        .into_iter()
        .map(|v| v.field)
        .collect()
}

fn session() -> Session {
    let hosts = ["partners/mall-b".to_owned()];
    Session::schedule(
        &PartnerId::new("brand-a"),
        &draft(&hosts, "partners/mall-b/stores/sh01", 10),
        1,
    )
    .unwrap()
}

fn guide<'a>(id: &'a str, partner: &'a str, store: &'a str) -> GuideDraft<'a> {
    GuideDraft {
        guide_id: id,
        display_name: "Lin",
        partner,
        store,
    }
}

#[test]
fn the_creator_is_always_a_host_and_a_store_belongs_to_a_host() {
    let me = PartnerId::new("brand-a");
    let s = session();
    assert_eq!(s.hosts, [me.clone(), PartnerId::new("mall-b")]);
    assert_eq!(s.state, SessionState::Scheduled);
    assert!(s.hosted_by("mall-b") && !s.hosted_by("brand-x"));
    // With no revenue shares given, all of it goes to the creator.
    assert_eq!(s.profile.revenue_shares, [(me.clone(), WHOLE_BPS)]);
    let hosts = ["partners/mall-b".to_owned()];
    let e =
        Session::schedule(&me, &draft(&hosts, "partners/brand-x/stores/sh01", 10), 1).unwrap_err();
    assert_eq!(fields(&e), ["session.store"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let me = PartnerId::new("brand-a");
    let hosts = ["mall-b".to_owned()];
    let presenters = [String::new()];
    let mut d = draft(&hosts, "", 1);
    d.title = "";
    d.stream_url = "ftp://x";
    d.profile.presenters = &presenters;
    d.profile.revenue_shares = vec![("partners/brand-a", 20_000)];
    let e = Session::schedule(&me, &d, 5).unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "session.title",
            "session.hosts[0]",
            "session.stream_url",
            "session.scheduled_start_time",
            "session.presenters[0]",
            "session.revenue_shares[0].share_bps",
        ]
    );
}

#[test]
fn only_the_allowed_transitions_happen_and_a_refusal_names_the_state() {
    let mut s = session();
    s.accept("mall-b");
    let e = s.transition(Transition::End, 20).unwrap_err();
    assert_eq!(lianyu_kit::ServiceError::metadata(&e)["state"], "SCHEDULED");
    s.transition(Transition::Start, 20).unwrap();
    assert_eq!((s.state, s.started_at), (SessionState::Live, Some(20)));
    for refused in [Transition::Start, Transition::Cancel] {
        let e = s.transition(refused, 21).unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "SESSION_STATE");
        assert_eq!(lianyu_kit::ServiceError::metadata(&e)["state"], "LIVE");
    }
    s.transition(Transition::End, 30).unwrap();
    assert_eq!((s.state, s.ended_at), (SessionState::Ended, Some(30)));
    let e = s.transition(Transition::Start, 31).unwrap_err();
    assert_eq!(lianyu_kit::ServiceError::metadata(&e)["state"], "ENDED");

    let mut c = session();
    c.transition(Transition::Cancel, 5).unwrap();
    assert_eq!(c.state, SessionState::Cancelled);
    let e = c.transition(Transition::Start, 6).unwrap_err();
    assert_eq!(lianyu_kit::ServiceError::metadata(&e)["state"], "CANCELLED");
}

#[test]
fn a_session_goes_live_only_once_every_invited_host_accepted() {
    let hosts = ["partners/mall-b".to_owned(), "partners/brand-c".to_owned()];
    let mut s = Session::schedule(
        &PartnerId::new("brand-a"),
        &draft(&hosts, "partners/mall-b/stores/sh01", 10),
        1,
    )
    .unwrap();
    assert!(
        !s.awaits("brand-a"),
        "the creator has accepted by scheduling"
    );
    assert!(s.awaits("mall-b") && s.awaits("brand-c"));
    assert!(!s.announced);
    s.accept("mall-b");
    assert!(!s.announced, "one host is still to accept");
    let e = s.transition(Transition::Start, 20).unwrap_err();
    assert_eq!(lianyu_kit::ServiceError::reason(&e), "HOSTS_NOT_ACCEPTED");
    assert_eq!(lianyu_kit::ServiceError::metadata(&e)["state"], "SCHEDULED");
    assert!(e.to_string().contains("partners/brand-c"), "{e}");
    assert!(!e.to_string().contains("partners/mall-b"), "{e}");
    assert_eq!(s.state, SessionState::Scheduled, "nothing moved");
    s.accept("brand-c");
    assert!(s.announced);
    s.transition(Transition::Start, 21).unwrap();
    assert_eq!(s.state, SessionState::Live);
    // Cancelling needs no acceptance: an invited host declines that way.
    let mut d = session();
    d.transition(Transition::Cancel, 5).unwrap();
    assert_eq!(d.state, SessionState::Cancelled);
}

#[test]
fn new_revenue_shares_are_every_other_hosts_to_accept_again_and_fixed_once_live() {
    let (brand, mall) = (PartnerId::new("brand-a"), PartnerId::new("mall-b"));
    let mut s = session();
    s.accept("mall-b");
    let same = s.profile.revenue_shares.clone();
    assert!(
        !s.reshare("mall-b", same).unwrap(),
        "the same shares are no change"
    );
    assert!(s.pending.is_empty());
    let shares = vec![(mall.clone(), 9_000), (brand.clone(), 1_000)];
    assert!(s.reshare("mall-b", shares.clone()).unwrap());
    assert_eq!(s.profile.revenue_shares, shares);
    assert_eq!(
        s.pending,
        std::slice::from_ref(&brand),
        "the creator accepts the mall's terms again"
    );
    assert!(s.announced, "what every host agreed to show stays shown");
    let reordered = vec![(brand.clone(), 1_000), (mall.clone(), 9_000)];
    assert!(!s.reshare("brand-a", reordered).unwrap());
    s.accept("brand-a");
    s.transition(Transition::Start, 20).unwrap();
    let e = s
        .reshare("brand-a", vec![(brand.clone(), WHOLE_BPS)])
        .unwrap_err();
    assert_eq!(lianyu_kit::ServiceError::metadata(&e)["state"], "LIVE");
    assert_eq!(s.profile.revenue_shares, shares, "nothing changed");
}

#[test]
fn revenue_shares_cover_hosts_only_and_sum_to_the_whole() {
    let s = session();
    let mut v = Violations::default();
    let shares = s.check_shares(
        &mut v,
        &[("partners/brand-a", 6_000), ("partners/mall-b", 3_000)],
    );
    assert_eq!(shares.len(), 2);
    let e = v.finish().unwrap_err();
    assert_eq!(fields(&e), ["session.revenue_shares"]);
    let mut v = Violations::default();
    s.check_shares(
        &mut v,
        &[("partners/brand-x", 10_000), ("partners/brand-a", 0)],
    );
    assert_eq!(
        fields(&v.finish().unwrap_err()),
        ["session.revenue_shares[0].partner"]
    );
    let mut v = Violations::default();
    let mut ok = s.clone();
    ok.profile.revenue_shares = s.check_shares(
        &mut v,
        &[("partners/brand-a", 3_333), ("partners/mall-b", 6_667)],
    );
    v.finish().unwrap();
    // The parts always add up to the gross, the remainder going to the first line.
    let parts = ok.split(1_000);
    assert_eq!(parts[0].1 + parts[1].1, 1_000);
    assert_eq!(parts[1].1, 666);
}

#[test]
fn guides_get_distinct_codes_kept_while_they_stay_and_orders_credit_them() {
    let mut s = session();
    let mut v = Violations::default();
    let drafts = ProfileDraft {
        guides: vec![
            guide("lin", "partners/mall-b", ""),
            guide("wu", "partners/brand-a", "partners/brand-a/stores/c1"),
        ],
        ..ProfileDraft::default()
    };
    s.profile = s.check_profile(&mut v, &drafts, Fields::all());
    v.finish().unwrap();
    let (lin, wu) = (s.profile.guides[0].clone(), s.profile.guides[1].clone());
    assert_ne!(lin.share_code, wu.share_code);
    assert_eq!(lin.share_code.len(), 8);
    // The mall's guide works at the session's store; the brand's names its own counter.
    assert_eq!(lin.store_name(), "partners/mall-b/stores/sh01");
    assert_eq!(
        s.attribute(&wu.share_code).unwrap(),
        (
            "partners/brand-a/stores/c1".to_owned(),
            format!("sessions/{}/guides/brand-a:wu", s.id)
        )
    );
    assert_eq!(
        s.attribute("").unwrap().0,
        "partners/mall-b/stores/sh01".to_owned()
    );
    assert!(s.attribute("NOPE2345").is_err());
    // Replacing the guides keeps a staying guide's code.
    let mut v = Violations::default();
    let only_lin = ProfileDraft {
        guides: vec![guide("lin", "partners/mall-b", "")],
        ..ProfileDraft::default()
    };
    let kept = s.check_profile(
        &mut v,
        &only_lin,
        Fields {
            guides: true,
            ..Fields::default()
        },
    );
    v.finish().unwrap();
    assert_eq!(kept.guides, [lin]);
    // A guide of a non-host, or a brand guide without a store, is refused by field.
    let mut v = Violations::default();
    let bad = ProfileDraft {
        guides: vec![
            guide("x", "partners/brand-x", ""),
            guide("y", "partners/brand-a", ""),
            guide("bad id", "partners/mall-b", ""),
        ],
        ..ProfileDraft::default()
    };
    s.check_profile(&mut v, &bad, Fields::all());
    assert_eq!(
        fields(&v.finish().unwrap_err()),
        [
            "session.guides[0].partner",
            "session.guides[1].store",
            "session.guides[2].guide_id"
        ]
    );
}

#[test]
fn pseudonyms_are_stable_in_a_session_and_unlinkable_across_sessions() {
    let (a, b) = (session(), session());
    assert_eq!(a.pseudonym("m1"), a.pseudonym("m1"));
    assert_ne!(a.pseudonym("m1"), a.pseudonym("m2"));
    assert_ne!(a.pseudonym("m1"), b.pseudonym("m1"));
    assert!(!a.pseudonym("m1").contains("m1"));
}

#[test]
fn a_flash_sale_checks_its_price_stock_limit_and_window() {
    let s = session();
    let product = Product::new(
        &s,
        &PartnerId::new("brand-a"),
        &ProductDraft {
            sku: "LIP-01",
            title: "Lipstick",
            price: Some(("CNY", 29_900)),
            seller: "",
            category: "cosmetics",
        },
    )
    .unwrap();
    let bad = FlashSaleDraft {
        price: Some(("USD".into(), 100)),
        total_stock: 0,
        per_member_limit: 101,
        start: None,
        end: Ok(50),
    };
    let e = FlashSale::new(&product, &bad, 100).unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "flash_sale.sale_price",
            "flash_sale.total_stock",
            "flash_sale.per_member_limit",
            "flash_sale.end_time"
        ]
    );
    let sale = FlashSale::new(
        &product,
        &FlashSaleDraft {
            price: Some(("CNY".into(), 19_900)),
            total_stock: 10,
            per_member_limit: 2,
            start: Some(Ok(200)),
            end: Ok(300),
        },
        100,
    )
    .unwrap();
    assert_eq!(sale.remaining_stock, 10);
    let state = |now| {
        sale.window
            .open_at(now, "SALE_NOT_OPEN")
            .map_err(|e| lianyu_kit::ServiceError::metadata(&e)["state"].clone())
    };
    assert_eq!(state(150), Err("NOT_STARTED".to_owned()));
    assert_eq!(state(250), Ok(()));
    assert_eq!(state(300), Err("CLOSED".to_owned()));
}

#[test]
fn a_window_ended_early_is_closed_from_then_on_and_ends_only_once() {
    let window = SaleWindow {
        start: 200,
        end: 300,
    };
    let open = window.ended_at(250, "SALE_NOT_OPEN").unwrap();
    assert_eq!(
        open,
        SaleWindow {
            start: 200,
            end: 250
        }
    );
    assert!(open.open_at(249, "SALE_NOT_OPEN").is_ok());
    assert!(open.open_at(250, "SALE_NOT_OPEN").is_err());
    // Ended before it opened: empty, it never opens.
    let never = window.ended_at(150, "SALE_NOT_OPEN").unwrap();
    assert_eq!(
        never,
        SaleWindow {
            start: 150,
            end: 150
        }
    );
    assert!((100..400).all(|now| never.open_at(now, "SALE_NOT_OPEN").is_err()));
    // Already closed, by its time or early: refused, naming the state.
    for (closed, now) in [(window, 300), (open, 260)] {
        let e = closed.ended_at(now, "DROP_NOT_OPEN").unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "DROP_NOT_OPEN");
        assert_eq!(lianyu_kit::ServiceError::metadata(&e)["state"], "CLOSED");
    }
}

#[test]
fn a_product_is_sold_by_a_host() {
    let s = session();
    let e = Product::new(
        &s,
        &PartnerId::new("brand-a"),
        &ProductDraft {
            sku: "",
            title: "x",
            price: Some(("CNY", 0)),
            seller: "partners/brand-x",
            category: "Bad Category",
        },
    )
    .unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "product.sku",
            "product.price",
            "product.seller",
            "product.category"
        ]
    );
}
