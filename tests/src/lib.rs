//! Helpers for mesh-level tests: start the whole mesh in-process on an ephemeral port with
//! fresh databases and mint tokens for it.

use lianyu_kit::{Config, testing::TestDatabase};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A running mesh; stops when dropped.
pub struct Mesh {
    pub address: String,
    pub config: Config,
    _data: tempfile::TempDir,
    _databases: Vec<TestDatabase>,
    stop: Option<oneshot::Sender<()>>,
}

impl Mesh {
    /// Starts `lianyu up` with a fresh database per service.
    pub async fn start(test: &str) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config::local(data.path());
        let mut databases = Vec::new();
        for service in lianyu::SERVICES {
            let db = TestDatabase::new(&format!("{test}_{service}")).await;
            config.set_database_url(service, db.url.clone());
            databases.push(db);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let run_config = config.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = lianyu::up(run_config, listener, shutdown, |_, _| {
                let _ = ready_tx.send(());
            })
            .await
            {
                eprintln!("mesh stopped with an error: {e}");
            }
        });
        ready_rx.await.expect("mesh started");
        Self {
            address,
            config,
            _data: data,
            _databases: databases,
            stop: Some(stop),
        }
    }

    pub async fn channel(&self) -> Channel {
        lianyu_kit::testing::connect(&self.address).await
    }

    /// A token for `partner` with every scope.
    pub fn token(&self, partner: &str) -> String {
        lianyu_kit::testing::mint(
            &self.config.data_dir,
            &self.config.auth,
            &lianyu_kit::testing::partner_token(partner),
        )
    }

    /// A mesh service's token (role `service`), as `lianyu up` mints for its services.
    pub fn service_token(&self, service: &str) -> String {
        lianyu_kit::testing::mint(
            &self.config.data_dir,
            &self.config.auth,
            &lianyu_kit::auth::TokenRequest::service(service, std::time::Duration::from_secs(600)),
        )
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
