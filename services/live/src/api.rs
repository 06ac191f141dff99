//! gRPC handlers: decode, call the domain and the store, encode; errors map to statuses once,
//! in [`unary`]. Every RPC the live issue has not implemented yet answers UNIMPLEMENTED (the
//! generated default), after the kit has authenticated the caller.

use lianyu_kit::{
    Call, KitError, Mount,
    call::unary,
    ids::PartnerId,
    mutation::Mutations,
    names,
    time::{now_millis, required_millis, timestamp},
};
use lianyu_proto::live::v1 as pb;
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::{
    domain::{LiveError, Session, SessionDraft, SessionState},
    store,
};

/// The service's handlers; they share the service's database.
#[derive(Clone)]
pub(crate) struct Api {
    db: DatabaseConnection,
    mutations: Mutations<LiveError>,
}

pub(crate) fn register(
    _ctx: &lianyu_kit::server::ServerContext,
    mount: &mut Mount,
    db: DatabaseConnection,
    _read: DatabaseConnection,
    _directory: Option<lianyu_kit::directory::Directory>,
) -> Option<lianyu_kit::directory::MeshHook> {
    let api = Api {
        mutations: Mutations::new(db.clone()),
        db,
    };
    lianyu_kit::mount!(
        mount,
        pb::session_service_server::SessionServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::showcase_service_server::ShowcaseServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::viewer_service_server::ViewerServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::order_service_server::OrderServiceServer::new(api.clone())
    );
    lianyu_kit::mount!(
        mount,
        pb::stats_service_server::StatsServiceServer::new(api.clone())
    );
    None
}

lianyu_kit::service_error!(LiveError, "lianyu.live", {
    SessionNotFound => (NotFound, "SESSION_NOT_FOUND"),
});

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
                },
                now_millis(),
            )?;
            may_host(&call, &session)?;
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    store::insert_session(txn, &session, now_millis()).await?;
                    Ok(to_proto(&session))
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
            let [id] = names::parse(&r.name, "sessions/{session}")
                .map_err(|e| KitError::invalid("name", e))?;
            let session = store::session_for_host(&self.db, call.partner_id(), id)
                .await?
                .filter(|s| s.visible_to(call.partner_id(), call.who.store.as_deref()))
                .ok_or(LiveError::SessionNotFound)?;
            Ok::<_, LiveError>(to_proto(&session))
        })
        .await
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

fn to_proto(s: &Session) -> pb::Session {
    pb::Session {
        name: format!("sessions/{}", s.id),
        title: s.title.clone(),
        hosts: s.hosts.iter().map(|h| format!("partners/{h}")).collect(),
        store: s.store_name().unwrap_or_default(),
        stream_url: s.stream_url.clone(),
        scheduled_start_time: timestamp(s.scheduled_start_millis),
        state: match s.state {
            SessionState::Scheduled => pb::SessionState::Scheduled,
            SessionState::Live => pb::SessionState::Live,
            SessionState::Ended => pb::SessionState::Ended,
            SessionState::Cancelled => pb::SessionState::Cancelled,
        } as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl pb::showcase_service_server::ShowcaseService for Api {}

#[tonic::async_trait]
impl pb::viewer_service_server::ViewerService for Api {}

#[tonic::async_trait]
impl pb::order_service_server::OrderService for Api {}

#[tonic::async_trait]
impl pb::stats_service_server::StatsService for Api {}
