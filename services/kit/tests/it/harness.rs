//! A server running the kit with a test double of `PartnerService` and `ConsentService`.

use std::{sync::Arc, time::Duration};

use lianyu_kit::{
    Config, KitError, Mount, Principal, ServerContext,
    auth::Signer,
    call::unary,
    error::to_status,
    feed::{Feed, NewEvent},
    mutation::Mutations,
    page::Page,
    testing::{TestDatabase, partner_token},
};
use lianyu_proto::{
    common::v1::FeedCursor,
    identity::v1::{
        self as pb, consent_service_server::ConsentService, partner_service_server::PartnerService,
    },
};
use sea_orm::DatabaseConnection;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Request, Response, Status, codegen::InterceptedService, transport::Channel};

type WatchStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::WatchConsentEventsResponse, Status>> + Send>,
>;

/// The test double: each RPC drives one kit helper.
#[derive(Clone)]
pub(crate) struct Probe {
    feed: Feed,
    mutations: Mutations<KitError>,
    /// Signalled when a "sleep/" call has started, so a test orders on it instead of a sleep.
    started: Arc<tokio::sync::Notify>,
}

#[tonic::async_trait]
impl PartnerService for Probe {
    /// `name` "sleep/<ms>" sleeps first; the reply names the caller's partner.
    async fn get_partner(
        &self,
        request: Request<pb::GetPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let partner = Principal::from_request(&request)?.partner_id.clone();
        if let Some(ms) = request.get_ref().name.strip_prefix("sleep/") {
            self.started.notify_one();
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        Ok(Response::new(pb::Partner {
            name: request.get_ref().name.clone(),
            display_name: partner,
            ..Default::default()
        }))
    }

    /// Validates its page, to show the error mapping.
    async fn list_partners(
        &self,
        request: Request<pb::ListPartnersRequest>,
    ) -> Result<Response<pb::ListPartnersResponse>, Status> {
        let r = request.get_ref();
        Page::parse(r.page_size, &r.page_token, &["probe"])
            .map_err(|e| to_status("lianyu.probe", &e))?;
        Ok(Response::new(pb::ListPartnersResponse::default()))
    }

    /// Appends one outbox event under request_id idempotency; the reply carries its sequence.
    async fn create_partner(
        &self,
        request: Request<pb::CreatePartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        // The kit's own pipeline: the method comes from the request, watchers wake after
        // the append commits.
        unary(request, async |call, r| {
            let name = format!("partners/{}", r.partner_id);
            self.mutations
                .run(&call, &r.request_id, &r, async |txn| {
                    let event = NewEvent {
                        kind: "partner.created".into(),
                        partner_id: Some(call.partner_id().to_owned()),
                        payload: name.clone().into_bytes(),
                        subject: None,
                    };
                    let seq = self.feed.append(txn, event).await?;
                    Ok(pb::Partner {
                        name,
                        display_name: format!("seq {seq}"),
                        ..Default::default()
                    })
                })
                .await
        })
        .await
    }
}

#[tonic::async_trait]
impl ConsentService for Probe {
    /// Serves the outbox: each event's payload comes back as `member`.
    async fn watch_consent_events(
        &self,
        request: Request<pb::WatchConsentEventsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let after = request.get_ref().after.as_ref().map_or(0, |c| c.sequence);
        let stream = self.feed.watch(after, None, |event| {
            Some(pb::WatchConsentEventsResponse {
                cursor: Some(FeedCursor {
                    sequence: event.seq,
                }),
                member: String::from_utf8_lossy(&event.payload).into_owned(),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

pub(crate) struct TestServer {
    pub(crate) address: String,
    pub(crate) data_dir: tempfile::TempDir,
    pub(crate) config: Config,
    pub(crate) db: DatabaseConnection,
    /// Completes once a "sleep/" call is inside its handler.
    pub(crate) started: Arc<tokio::sync::Notify>,

    stop: Option<oneshot::Sender<()>>,
    pub(crate) handle: JoinHandle<Result<(), lianyu_kit::StartError>>,
}

impl TestServer {
    pub(crate) async fn start(test: &str) -> Self {
        let db = TestDatabase::new(test).await;
        Self::start_with(
            Config::local(tempfile::tempdir().unwrap().path()),
            db.url.clone(),
            Some(db),
        )
        .await
    }

    pub(crate) async fn start_with(
        mut config: Config,
        db_url: String,
        keep: Option<TestDatabase>,
    ) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        config.data_dir = data_dir.path().to_path_buf();
        config.set_database_url("probe", db_url);
        let ctx = ServerContext::new(config.clone()).unwrap();
        let db = lianyu_kit::storage::open::<Migrator>(&config, "probe")
            .await
            .unwrap();
        let feed = Feed::new(db.clone(), ctx.stopping.clone());
        let mut mount = Mount::new(&ctx);
        let started = Arc::new(tokio::sync::Notify::new());
        let probe = Probe {
            feed: feed.clone(),
            mutations: Mutations::new(db.clone()).publishing(feed.clone(), None),
            started: started.clone(),
        };
        lianyu_kit::mount!(
            mount,
            pb::partner_service_server::PartnerServiceServer::new(probe.clone())
        );
        lianyu_kit::mount!(
            mount,
            pb::consent_service_server::ConsentServiceServer::new(probe)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _keep = keep;
            lianyu_kit::server::serve(&ctx, mount, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            address,
            data_dir,
            config,
            db,
            started,
            stop: Some(stop),
            handle,
        }
    }

    pub(crate) fn token(&self, partner: &str) -> String {
        lianyu_kit::testing::mint(
            self.data_dir.path(),
            &self.config.auth,
            &partner_token(partner),
        )
    }

    pub(crate) fn dev_key(&self) -> Signer {
        Signer::load(self.data_dir.path()).unwrap()
    }

    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(self.address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub(crate) async fn partners(
        &self,
        token: Option<String>,
    ) -> pb::partner_service_client::PartnerServiceClient<InterceptedService<Channel, Bearer>> {
        pb::partner_service_client::PartnerServiceClient::with_interceptor(
            self.channel().await,
            token.as_deref().map_or_else(Bearer::none, Bearer::new),
        )
    }

    pub(crate) async fn consents(
        &self,
        token: Option<String>,
    ) -> pb::consent_service_client::ConsentServiceClient<InterceptedService<Channel, Bearer>> {
        pb::consent_service_client::ConsentServiceClient::with_interceptor(
            self.channel().await,
            token.as_deref().map_or_else(Bearer::none, Bearer::new),
        )
    }

    /// Starts the graceful shutdown.
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) use lianyu_kit::client::Bearer;

pub(crate) struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl sea_orm_migration::MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
        vec![
            Box::new(lianyu_kit::storage::KitTables),
            Box::new(lianyu_kit::storage::KitIndexes),
            Box::new(lianyu_kit::storage::KitFeedSubjects),
        ]
    }
}

pub(crate) use lianyu_kit::testing::reason;
