//! SessionService: schedule, read, list, change and move sessions through their states.

use lianyu_kit::{
    Call, KitError, call::unary, ids::PartnerId, mask, page::Page, time::now_millis,
    time::required_millis, validate::Violations,
};
use lianyu_proto::live::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Api, Role, refuse_non_host, session_proto};
use crate::{
    domain::{
        Fields, GuideDraft, LiveError, ProfileDraft, Session, SessionDraft, SessionState,
        Transition, future, stream_url,
    },
    store,
};

/// The fields UpdateSession changes.
const UPDATABLE: &[&str] = &[
    "title",
    "stream_url",
    "scheduled_start_time",
    "presenters",
    "assistants",
    "guides",
    "revenue_shares",
];

fn profile_draft(s: &pb::Session) -> ProfileDraft<'_> {
    ProfileDraft {
        presenters: &s.presenters,
        assistants: &s.assistants,
        guides: s
            .guides
            .iter()
            .map(|g| GuideDraft {
                guide_id: &g.guide_id,
                display_name: &g.display_name,
                partner: &g.partner,
                store: &g.store,
            })
            .collect(),
        revenue_shares: s
            .revenue_shares
            .iter()
            .map(|r| (r.partner.as_str(), r.share_bps))
            .collect(),
    }
}

/// The mesh operator hosts nothing (it never reads members, and viewers are members), and a
/// store token schedules only in its own store.
fn may_host(call: &Call, session: &Session) -> Result<(), KitError> {
    if call.who.operator {
        return Err(KitError::Denied(
            "OPERATOR_HOSTS_NOTHING",
            "the mesh operator does not host livestreams",
        ));
    }
    if let Some(own) = &call.who.store
        && session.store_name().as_deref() != Some(own.as_str())
    {
        return Err(KitError::Denied(
            "STORE_TOKEN_NOT_ALLOWED",
            "a store token schedules sessions only in its own store",
        ));
    }
    Ok(())
}

impl Api {
    /// Moves a session through `to` for a co-host, telling its viewers and the feed.
    async fn transition(
        &self,
        call: &Call,
        request_id: &str,
        request: &impl prost::Message,
        (name, etag): (&str, &str),
        to: Transition,
    ) -> Result<pb::Session, LiveError> {
        self.mutations
            .run_writing(call, request_id, request, async |txn, writes| {
                let (mut session, role) = self.session_locked(txn, call, name, "name").await?;
                if !etag.is_empty()
                    && matches!(role, Role::Host | Role::Invited)
                    && etag != session_proto(&session, role).etag
                {
                    return Err(LiveError::EtagMismatch);
                }
                match role {
                    Role::Host => {}
                    // An invited host starts (and so accepts) or cancels (and so declines);
                    // a session it has not accepted is never LIVE, so it ends nothing.
                    Role::Invited => {
                        if to == Transition::Start {
                            session.accept(call.partner_id());
                            store::set_pending(txn, &session).await?;
                        }
                    }
                    _ => return Err(refuse_non_host(call, &session).into()),
                }
                let was = session.state;
                let now = now_millis();
                session.transition(to, now)?;
                if !store::save_session(txn, &session, was).await? {
                    let current = store::load_session(txn, &session.id)
                        .await?
                        .ok_or(LiveError::SessionNotFound)?;
                    return Err(current.state.refuse("another change came first").into());
                }
                if to == Transition::End {
                    store::close_sales(txn, &session.id, now).await?;
                    store::close_drops(txn, &session.id, now).await?;
                }
                self.tell_viewers(
                    writes,
                    &session.id,
                    pb::join_session_response::Update::Session(session_proto(
                        &session,
                        Role::Public,
                    )),
                );
                let full = session_proto(&session, Role::Host);
                self.tell_hosts(
                    writes,
                    &session,
                    pb::watch_live_events_response::Event::Session(full.clone()),
                    now,
                );
                Ok(full)
            })
            .await
    }
}

#[tonic::async_trait]
impl pb::session_service_server::SessionService for Api {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        unary(request, async |call, r| {
            let given = r.session.clone().unwrap_or_default();
            let session = Session::schedule(
                &PartnerId::new(call.partner_id()),
                &SessionDraft {
                    title: &given.title,
                    hosts: &given.hosts,
                    store: &given.store,
                    stream_url: &given.stream_url,
                    scheduled_start: required_millis(given.scheduled_start_time.as_ref()),
                    profile: profile_draft(&given),
                },
                now_millis(),
            )?;
            may_host(&call, &session)?;
            // Shown from, and selling through, stores that exist and are open.
            let guides: Vec<String> = session
                .profile
                .guides
                .iter()
                .filter(|g| !g.store.is_empty())
                .map(crate::domain::Guide::store_name)
                .collect();
            let hosting = session.store_name();
            self.stores_open(hosting.iter().chain(&guides).map(String::as_str))
                .await?;
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    store::insert_session(txn, &session, now_millis()).await?;
                    Ok(session_proto(&session, Role::Host))
                })
                .await
        })
        .await
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        unary(request, async |call, r| {
            let (session, role) = self.read_session(&call, &r.name, "name").await?;
            Ok::<_, LiveError>(session_proto(&session, role))
        })
        .await
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        unary(request, async |call, r| {
            let only = match pb::SessionState::try_from(r.state) {
                Ok(pb::SessionState::Unspecified) => None,
                Ok(pb::SessionState::Scheduled) => Some(SessionState::Scheduled),
                Ok(pb::SessionState::Live) => Some(SessionState::Live),
                Ok(pb::SessionState::Ended) => Some(SessionState::Ended),
                Ok(pb::SessionState::Cancelled) => Some(SessionState::Cancelled),
                Err(_) => return Err(KitError::invalid("state", "not a session state").into()),
            };
            let state = r.state.to_string();
            let store = call.who.store.clone().unwrap_or_default();
            let page = Page::parse(
                r.page_size,
                &r.page_token,
                &[call.partner_id(), &store, &state],
            )?;
            let (sessions, next_page_token) = store::list_sessions(
                &self.read,
                call.partner_id(),
                call.who.store.as_deref(),
                only,
                &page,
            )
            .await?;
            Ok::<_, LiveError>(pb::ListSessionsResponse {
                sessions: sessions
                    .iter()
                    .map(|s| session_proto(s, Role::Host))
                    .collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn update_session(
        &self,
        request: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        unary(request, async |call, r| {
            let paths = mask::paths(r.update_mask.as_ref(), UPDATABLE)?;
            let given = r.session.clone().unwrap_or_default();
            if paths.contains("guides") {
                // A co-host's new guides sell through stores that exist and are open (asked
                // only of a co-host, before the transaction).
                let (session, role) = self
                    .read_session(&call, &given.name, "session.name")
                    .await?;
                super::as_host(&call, &session, role)?;
                self.stores_open(given.guides.iter().map(|g| g.store.as_str()))
                    .await?;
            }
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let (mut session, role) = self
                        .session_locked(txn, &call, &given.name, "session.name")
                        .await?;
                    super::as_host(&call, &session, role)?;
                    let was = session.state;
                    if matches!(was, SessionState::Ended | SessionState::Cancelled) {
                        return Err(was.refuse("a session that has not ended").into());
                    }
                    let mut v = Violations::default();
                    if paths.contains("title")
                        && let Some(t) = v.check(
                            "session.title",
                            lianyu_kit::validate::text(&given.title, true, 100),
                        )
                    {
                        session.title = t;
                    }
                    if paths.contains("stream_url")
                        && let Some(u) =
                            v.check("session.stream_url", stream_url(&given.stream_url))
                    {
                        session.stream_url = u;
                    }
                    if paths.contains("scheduled_start_time") {
                        if was != SessionState::Scheduled {
                            return Err(was
                                .refuse("only a SCHEDULED session is rescheduled")
                                .into());
                        }
                        if let Some(at) = v.check(
                            "session.scheduled_start_time",
                            future(
                                required_millis(given.scheduled_start_time.as_ref()),
                                now_millis(),
                            ),
                        ) {
                            session.scheduled_start_millis = at;
                        }
                    }
                    let fields = Fields {
                        presenters: paths.contains("presenters"),
                        assistants: paths.contains("assistants"),
                        guides: paths.contains("guides"),
                        revenue_shares: paths.contains("revenue_shares"),
                    };
                    let mut profile = session.check_profile(&mut v, &profile_draft(&given), fields);
                    v.finish()?;
                    let shares = std::mem::take(&mut profile.revenue_shares);
                    profile.revenue_shares = session.profile.revenue_shares.clone();
                    session.profile = profile;
                    if session.reshare(call.partner_id(), shares)? {
                        store::set_pending(txn, &session).await?;
                    }
                    if !store::save_session(txn, &session, was).await? {
                        return Err(KitError::Precondition(
                            "SESSION_STATE",
                            "the session changed state meanwhile; read it and retry".into(),
                        )
                        .into());
                    }
                    Ok(session_proto(&session, Role::Host))
                })
                .await
        })
        .await
    }

    async fn start_session(
        &self,
        request: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        unary(request, async |call, r| {
            self.transition(
                &call,
                &r.request_id,
                &r,
                (&r.name, &r.etag),
                Transition::Start,
            )
            .await
        })
        .await
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        unary(request, async |call, r| {
            self.transition(&call, &r.request_id, &r, (&r.name, ""), Transition::End)
                .await
        })
        .await
    }

    async fn accept_session(
        &self,
        request: Request<pb::AcceptSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        unary(request, async |call, r| {
            self.mutations
                .run_writing(&call, &r.request_id, &r, async |txn, writes| {
                    let (mut session, role) =
                        self.session_locked(txn, &call, &r.name, "name").await?;
                    match role {
                        Role::Host => return Ok(session_proto(&session, role)),
                        Role::Invited if session.state == SessionState::Scheduled => {
                            if !r.etag.is_empty() && r.etag != session_proto(&session, role).etag {
                                return Err(LiveError::EtagMismatch);
                            }
                        }
                        Role::Invited => {
                            return Err(session.state.refuse("a SCHEDULED session").into());
                        }
                        _ => return Err(refuse_non_host(&call, &session).into()),
                    }
                    session.accept(call.partner_id());
                    store::set_pending(txn, &session).await?;
                    let full = session_proto(&session, Role::Host);
                    self.tell_hosts(
                        writes,
                        &session,
                        pb::watch_live_events_response::Event::Session(full.clone()),
                        now_millis(),
                    );
                    Ok(full)
                })
                .await
        })
        .await
    }

    async fn cancel_session(
        &self,
        request: Request<pb::CancelSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        unary(request, async |call, r| {
            self.transition(&call, &r.request_id, &r, (&r.name, ""), Transition::Cancel)
                .await
        })
        .await
    }
}
