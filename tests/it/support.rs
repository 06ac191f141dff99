//! What the services' first RPC tests share: identity (for the partners and their alliance)
//! beside the service under test, and reading a table back where it lives.

use lianyu_kit::testing::TestServer;
use sea_orm::{ConnectionTrait, Statement};

/// Starts identity and one service (`mount`, its crate's `mount`) on fresh databases, with
/// two allied partners and an outsider; `configure` (optional) adjusts the config first.
macro_rules! with_identity {
    ($test:expr, $service:expr, $mount:path) => {
        $crate::support::with_identity!($test, $service, $mount, |_| {})
    };
    ($test:expr, $service:expr, $mount:path, $configure:expr) => {
        lianyu_kit::testing::TestServer::start(
            $test,
            &["identity", $service],
            $configure,
            |config, listener| {
                lianyu_kit::server::run_service(
                    config,
                    listener,
                    std::future::pending(),
                    async |ctx, mount| {
                        lianyu_identity::mount(ctx, mount).await?;
                        $mount(ctx, mount).await
                    },
                )
            },
        )
        .await
        .with_partners()
        .await
    };
}
pub(crate) use with_identity;

/// A second instance of one service (`$mount`, its crate's `mount`) on `$server`'s database
/// for it, using `$server`'s identity, as a second replica of a Deployment: a channel to it.
macro_rules! second_instance {
    ($server:expr, $mount:path) => {{
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second = format!("http://{}", listener.local_addr().unwrap());
        let mut config = $server.config.clone();
        config.set_peer_url("identity", $server.address.clone());
        tokio::spawn(lianyu_kit::server::run_service(
            config,
            listener,
            std::future::pending(),
            async |ctx, mount| $mount(ctx, mount).await,
        ));
        lianyu_kit::testing::connect(&second).await
    }};
}
pub(crate) use second_instance;

/// How many rows `table` of `service`'s database holds: a refused call must leave it as it was.
pub(crate) async fn rows(server: &TestServer, service: &str, table: &str) -> i64 {
    let db = server.database(service).await;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

/// The sequences of the events in `service`'s stored feed (every copy: each partner's and the
/// whole one the mesh's services read) whose payload holds `text`.
pub(crate) async fn stored_events_holding(s: &TestServer, service: &str, text: &str) -> Vec<i64> {
    let db = s.database(service).await;
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT seq, payload FROM kit_outbox_events ORDER BY seq".to_owned(),
    ))
    .await
    .unwrap()
    .into_iter()
    .filter_map(|row| {
        let payload: Vec<u8> = row.try_get("", "payload").unwrap();
        let holds = payload.windows(text.len()).any(|w| w == text.as_bytes());
        holds.then(|| row.try_get::<i64>("", "seq").unwrap())
    })
    .collect()
}

/// Whether `partner`'s stored reply to `request_id` in `service` was purged by an erasure:
/// (marked erased, its response empty).
pub(crate) async fn stored_reply(
    s: &TestServer,
    service: &str,
    partner: &str,
    request_id: &str,
) -> (bool, bool) {
    let db = s.database(service).await;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT erased_at, response FROM kit_idempotency_keys \
                 WHERE partner_id = '{partner}' AND request_id = '{request_id}'"
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    let erased: Option<i64> = row.try_get("", "erased_at").unwrap();
    let response: Vec<u8> = row.try_get("", "response").unwrap();
    (erased.is_some(), response.is_empty())
}
