//! Lianyu identity: who a partner is, who a member is across partners, what the member
//! allowed, and who read what.
//!
//! `run` serves it alone; `mount` adds it to a shared server (`lianyu up`).

mod api;
pub mod domain;
mod store;

use std::{future::Future, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use lianyu_kit::{Config, ConfigError, Mount, ServerContext, StartError, config::Mode, feed::Feed};
use tokio::net::TcpListener;

use crate::domain::secrets::Secrets;

/// The service's name: its database, its schema, its config prefix.
pub const NAME: &str = "identity";

/// Opens the service's database (migrating it) and adds its gRPC services to `mount`.
/// Boxed, so that its body is compiled here once ([`lianyu_kit::server::Running`]).
pub fn mount<'a>(ctx: &'a ServerContext, mount: &'a mut Mount) -> lianyu_kit::server::Running<'a> {
    Box::pin(mount_body(ctx, mount))
}

async fn mount_body(ctx: &ServerContext, mount: &mut Mount) -> Result<(), StartError> {
    let db = ctx.open_database::<store::Migrator>(NAME).await?;
    let read = lianyu_kit::storage::open_reader(&ctx.config, NAME, &db).await?;
    let secrets = Arc::new(Secrets::from_master(&master_key(&ctx.config)?));
    // The feed only reads (appends go through the writer's transactions): the read pool.
    let feed = Feed::new(read.clone(), ctx.stopping.clone())
        .listening(&ctx.config.database_url(NAME), NAME)
        .with_poll_interval(ctx.config.limits.feed_poll);
    let alliances = store::alliances::AllianceCache::default();
    // Mesh events after this are applied to the verifier; the lists below are read after it.
    let refusals = store::refusals::Refusals::from_head(ctx.verifier.clone(), &feed)
        .await
        .map_err(|e| StartError::Auth(format!("mesh feed: {e}")))?;
    let store = store::Store {
        db,
        read,
        secrets,
        feed,
        alliances,
        consent_index: store::consent_index::ConsentIndex::default(),
        refusals,
        sweep_wake: Arc::default(),
    };
    store.consent_index.catch_up(&store.feed).await;
    tokio::spawn(
        store
            .consent_index
            .clone()
            .follow(store.feed.clone(), ctx.stopping.clone()),
    );
    // Tokens of credentials revoked before this start stay refused.
    let revoked = store
        .recently_revoked(lianyu_kit::storage::now_millis() - api::REVOKED_FOR_MILLIS)
        .await
        .map_err(|e| StartError::Auth(format!("revoked credentials: {e}")))?;
    ctx.verifier.set_revoked(revoked);
    // So are suspended partners' tokens.
    let suspended = store::Store::suspended_partners(&store.read)
        .await
        .map_err(|e| StartError::Auth(format!("suspended partners: {e}")))?;
    ctx.verifier.set_suspended(suspended);
    // And tokens narrowed to closed stores.
    let closed = store::Store::closed_stores(&store.read)
        .await
        .map_err(|e| StartError::Auth(format!("closed stores: {e}")))?;
    ctx.verifier
        .replace_closed_stores_as_of(ctx.verifier.changes(), closed);
    tokio::spawn(
        store
            .refusals
            .clone()
            .follow(store.feed.clone(), ctx.stopping.clone()),
    );
    tokio::spawn(store::sweep::expire_consents(
        store.clone(),
        ctx.stopping.clone(),
    ));
    api::register(
        mount,
        store,
        api::Tokens::new(
            ctx.signer.clone(),
            ctx.config.auth.clone(),
            ctx.static_keys.clone(),
            ctx.verifier.clone(),
        ),
    );
    Ok(())
}

/// Why a token for `partner` (narrowed to `store`, a "partners/{partner}/stores/{store}" name,
/// when given) must not be minted outside `IssueToken` (`lianyu token`): the reason, as
/// IssueToken would refuse it, or `None` when the partner is registered and active and the
/// store is one of its open stores. `db` is identity's database.
pub async fn token_refusal(
    db: &sea_orm::DatabaseConnection,
    partner: &str,
    store: Option<&str>,
) -> Result<Option<String>, domain::IdentityError> {
    use domain::partner::PartnerStatus;
    let Some(found) = store::Store::partner(db, partner).await? else {
        return Ok(Some(format!(
            "no partner {partner:?} is registered in this mesh (PartnerService.CreatePartner registers one; `lianyu up`'s demo registers aurora-shoes and jade-plaza)"
        )));
    };
    if found.status == PartnerStatus::Suspended {
        return Ok(Some(format!(
            "partner {partner:?} is suspended: every service refuses its tokens"
        )));
    }
    let Some(store) = store else {
        return Ok(None);
    };
    let Ok([owner, id]) = lianyu_kit::names::parse(store, "partners/{partner}/stores/{store}")
    else {
        return Ok(Some(format!(
            "--store {store:?} is not a store's name (partners/{{partner}}/stores/{{store}})"
        )));
    };
    if owner != partner {
        return Ok(Some(format!(
            "--store {store:?} is not a store of partner {partner:?}"
        )));
    }
    Ok(match store::Store::store(db, partner, id).await? {
        None => Some(format!("partner {partner:?} has no store {id:?}")),
        Some(s) if !s.active => Some(format!(
            "store {store:?} is closed: it issues no store tokens"
        )),
        Some(_) => None,
    })
}

/// Serves the service alone on `listener` until `shutdown` completes.
/// `--migrate-only`: brings identity's schema up to date; how many migrations ran.
pub async fn migrate(config: Config) -> Result<usize, StartError> {
    Ok(lianyu_kit::storage::migrate_only::<store::Migrator>(&config, NAME).await?)
}

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    lianyu_kit::server::run_mounted(config, listener, Box::pin(shutdown), mount).await
}

/// The master key identifiers are hashed and sealed with: `LIANYU_IDENTITY_KEY`, or in local
/// mode a key generated once in the data directory.
fn master_key(config: &Config) -> Result<[u8; 32], StartError> {
    const VAR: &str = "LIANYU_IDENTITY_KEY";
    match (config.secret(VAR), config.mode) {
        (Some(secret), _) => URL_SAFE_NO_PAD
            .decode(secret.expose().trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
            .ok_or_else(|| {
                ConfigError {
                    var: VAR.into(),
                    message: "expected 32 bytes, base64url without padding".into(),
                }
                .into()
            }),
        (None, Mode::Local) => Ok(lianyu_kit::auth::load_or_create_local_secret(
            &config.data_dir,
            "identity-master.key",
        )?),
        (None, Mode::Production) => Err(ConfigError {
            var: VAR.into(),
            message: "required in production mode".into(),
        }
        .into()),
    }
}
