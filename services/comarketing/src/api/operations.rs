//! Long-running operations (AIP-151): segment computations run as tasks beside the request
//! that started them, their progress and outcome in the `operations` table, so any replica
//! answers GetOperation and a cancellation reaches the task wherever it runs.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lianyu_kit::{
    Call, KitError,
    call::unary,
    mutation::Mutations,
    names,
    page::Page,
    time::{now_millis, timestamp},
};
use lianyu_proto::{comarketing::v1 as pb, common::v1 as common};
use prost::Message;
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::Api;
use crate::{
    domain::{ComarketingError, operations::OperationFilter, rule::Rule},
    store::{self, StoredOperation, StoredSegment},
};

/// google.rpc.Status, as an operation's error carries it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn any(type_name: &str, m: &impl Message) -> Option<prost_types::Any> {
    Some(prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: m.encode_to_vec(),
    })
}

/// A computation still running after this long (milliseconds) was abandoned by a replica
/// that stopped: a million members compute in seconds.
const ABANDONED_AFTER: i64 = 10 * 60_000;

/// The segment computations this process runs.
#[derive(Clone)]
pub(crate) struct Jobs {
    db: DatabaseConnection,
    read: DatabaseConnection,
    stopping: CancellationToken,
}

impl Jobs {
    pub(crate) fn new(
        db: DatabaseConnection,
        read: DatabaseConnection,
        stopping: CancellationToken,
    ) -> Self {
        Self { db, read, stopping }
    }

    /// Starts computing `segment` by `rule` as the caller's mutation (a retry with the same
    /// request id returns the same operation and starts nothing).
    pub(crate) async fn compute(
        &self,
        mutations: &Mutations<ComarketingError>,
        call: &Call,
        r: &pb::ComputeSegmentRequest,
        segment: StoredSegment,
        rule: Rule,
    ) -> Result<common::Operation, ComarketingError> {
        let now = now_millis();
        let op = StoredOperation {
            id: uuid::Uuid::now_v7().simple().to_string(),
            partner: call.partner_id().to_owned(),
            target: r.name.clone(),
            state: "running".into(),
            scanned: 0,
            total: 0,
            error: String::new(),
            created_at: now,
        };
        let started = Arc::new(AtomicBool::new(false));
        let reply = mutations
            .run(call, &r.request_id, r, async |txn| {
                // A computation whose replica stopped (its operation still "running" long
                // after any computation ends) is given up, so the segment is never stuck.
                if let Some(current) = &segment.computing
                    && let Some(o) = store::operation(txn, &segment.owner, current).await?
                    && o.created_at < now - ABANDONED_AFTER
                {
                    let note = "abandoned: the replica computing it stopped; compute again";
                    store::update_operation(txn, current, "failed", 0, 0, note, now).await?;
                    store::finish_computation(txn, &segment.id, None).await?;
                }
                if !store::claim_computation(txn, &segment.id, &op.id).await? {
                    return Err(KitError::Precondition(
                        "SEGMENT_COMPUTING",
                        format!(
                            "operations/{} is computing this segment",
                            segment.computing.clone().unwrap_or_default()
                        ),
                    )
                    .into());
                }
                store::insert_operation(txn, &op).await?;
                started.store(true, Ordering::SeqCst);
                Ok(operation_proto(&op, None))
            })
            .await?;
        if started.load(Ordering::SeqCst) && reply.name == format!("operations/{}", op.id) {
            let jobs = self.clone();
            tokio::spawn(async move { jobs.run(op.id, segment, rule).await });
        }
        Ok(reply)
    }

    async fn run(self, op: String, segment: StoredSegment, rule: Rule) {
        let outcome = self.evaluate(&op, &segment.owner, &rule).await;
        let now = now_millis();
        let (state, error, result) = match &outcome {
            Ok(Some((bitmap, total))) => ("done", String::new(), Some((bitmap, *total))),
            Ok(None) => ("cancelled", String::new(), None),
            Err(e) => ("failed", e.to_string(), None),
        };
        // The outcome and the result commit together: a reader never sees a finished
        // operation whose segment lacks its result.
        let finish = async {
            use sea_orm::TransactionTrait;
            let txn = self.db.begin().await.map_err(store::storage)?;
            let (scanned, total) = result.map_or((0, 0), |(_, t)| {
                let t = i64::try_from(t).unwrap_or(i64::MAX);
                (t, t)
            });
            // Not moved: cancelled meanwhile, and the segment keeps its previous result.
            let moved =
                store::update_operation(&txn, &op, state, scanned, total, &error, now).await?;
            let stored = result.filter(|_| moved).map(|(bitmap, _)| (bitmap, now));
            store::finish_computation(&txn, &segment.id, stored).await?;
            txn.commit().await.map_err(store::storage)?;
            Ok::<_, KitError>(())
        };
        if let Err(e) = finish.await {
            tracing::error!(error = %e, operation = %op, "a segment computation could not record its end");
        }
    }

    /// The segment's members as its owner may see them ([`store::Sight`]), or `None` when the
    /// operation was cancelled.
    async fn evaluate(
        &self,
        op: &str,
        owner: &str,
        rule: &Rule,
    ) -> Result<Option<(roaring::RoaringBitmap, u64)>, KitError> {
        let now = now_millis();
        let universe = store::all_members(&self.read).await?;
        let total = universe.len();
        let sight = store::Sight::of(owner);
        let conditions = rule.conditions();
        let count = conditions.len().max(1) as u64;
        let mut sets = BTreeMap::new();
        for (done, c) in conditions.into_iter().enumerate() {
            if self.stopping.is_cancelled() {
                return Err(KitError::Unavailable(
                    "SHUTTING_DOWN",
                    "the server stopped; compute again".into(),
                ));
            }
            let members =
                store::condition_members(&self.read, &c, now, (&sight, &universe)).await?;
            sets.insert(c, members);
            let scanned = i64::try_from(total * (done as u64 + 1) / count).unwrap_or(i64::MAX);
            let total = i64::try_from(total).unwrap_or(i64::MAX);
            if !store::update_operation(&self.db, op, "running", scanned, total, "", now).await? {
                return Ok(None);
            }
        }
        Ok(Some((rule.evaluate(&universe, &sets), total)))
    }
}

/// An operation as the contract shows it; `segment` is the finished computation's segment.
fn operation_proto(o: &StoredOperation, segment: Option<&StoredSegment>) -> common::Operation {
    let percent = if o.total == 0 {
        if o.state == "done" { 100 } else { 0 }
    } else {
        i32::try_from(o.scanned * 100 / o.total).unwrap_or(100)
    };
    let metadata = pb::ComputeSegmentMetadata {
        segment: o.target.clone(),
        members_scanned: o.scanned,
        members_total: o.total,
        progress_percent: percent,
    };
    let error = match o.state.as_str() {
        "failed" => any(
            "google.rpc.Status",
            &RpcStatus {
                code: tonic::Code::Internal as i32,
                message: o.error.clone(),
            },
        ),
        "cancelled" => any(
            "google.rpc.Status",
            &RpcStatus {
                code: tonic::Code::Cancelled as i32,
                message: "cancelled".into(),
            },
        ),
        _ => None,
    };
    common::Operation {
        name: format!("operations/{}", o.id),
        done: o.state != "running",
        error,
        response: segment.filter(|_| o.state == "done").and_then(|s| {
            any(
                "lianyu.comarketing.v1.Segment",
                &super::audience::segment_proto(s),
            )
        }),
        metadata: any("lianyu.comarketing.v1.ComputeSegmentMetadata", &metadata),
        create_time: timestamp(o.created_at),
    }
}

impl Api {
    async fn operation(
        &self,
        call: &Call,
        name: &str,
    ) -> Result<common::Operation, ComarketingError> {
        let [id] = names::parse(name, "operations/{operation}")
            .map_err(|e| KitError::invalid("name", e))?;
        let o = store::operation(&self.read, call.partner_id(), id)
            .await?
            .ok_or(ComarketingError::OperationNotFound)?;
        let segment = if o.state == "done" {
            match names::parse::<2>(&o.target, "campaigns/{campaign}/segments/{segment}") {
                Ok([c, s]) => store::segment(&self.read, c, s).await?,
                Err(_) => None,
            }
        } else {
            None
        };
        Ok(operation_proto(&o, segment.as_ref()))
    }
}

#[tonic::async_trait]
impl pb::operations_service_server::OperationsService for Api {
    async fn get_operation(
        &self,
        request: Request<pb::GetOperationRequest>,
    ) -> Result<Response<common::Operation>, Status> {
        unary(request, async |call, r| {
            self.operation(&call, &r.name).await
        })
        .await
    }

    async fn list_operations(
        &self,
        request: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        unary(request, async |call, r| {
            let filter = OperationFilter::parse(&r.filter)?;
            let mut page =
                Page::parse(r.page_size, &r.page_token, &[call.partner_id(), &r.filter])?;
            page.size = page.size.min(500);
            let (ops, next_page_token) =
                store::list_operations(&self.read, call.partner_id(), &filter, &page).await?;
            Ok::<_, ComarketingError>(pb::ListOperationsResponse {
                operations: ops.iter().map(|o| operation_proto(o, None)).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn cancel_operation(
        &self,
        request: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<common::Operation>, Status> {
        unary(request, async |call, r| {
            let current = self.operation(&call, &r.name).await?;
            if !current.done {
                let [id] = names::parse(&r.name, "operations/{operation}")
                    .map_err(|e| KitError::invalid("name", e))?;
                store::update_operation(&self.db, id, "cancelled", 0, 0, "", now_millis()).await?;
            }
            self.operation(&call, &r.name).await
        })
        .await
    }

    async fn wait_operation(
        &self,
        request: Request<pb::WaitOperationRequest>,
    ) -> Result<Response<common::Operation>, Status> {
        unary(request, async |call, r| {
            let timeout = match r.timeout_millis {
                0 => 10_000,
                t if (1..=60_000).contains(&t) => t,
                _ => return Err(KitError::invalid("timeout_millis", "1 to 60000").into()),
            };
            let until = tokio::time::Instant::now()
                + Duration::from_millis(u64::try_from(timeout).unwrap_or(10_000));
            let mut delay = Duration::from_millis(20);
            loop {
                let o = self.operation(&call, &r.name).await?;
                if o.done || tokio::time::Instant::now() >= until {
                    return Ok::<_, ComarketingError>(o);
                }
                tokio::time::sleep(delay.min(until - tokio::time::Instant::now())).await;
                delay = (delay * 2).min(Duration::from_millis(250));
            }
        })
        .await
    }
}
