//! The gRPC client of the task service: one lazily connected channel (the gateway starts before the
//! task service is up) per replica (`replicas`), a deadline on every call, and a readiness probe.
use std::time::Duration;

use taskboard_proto::v1::{self, task_service_client::TaskServiceClient};
use tonic::transport::Endpoint;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use taskboard_telemetry::{GrpcMetrics, GrpcMetricsLayer, Side};

use crate::auth::Principal;
use crate::upstream::breaker::{Breaker, BreakerLayer, Breaking};
use crate::upstream::replicas::Replicas;
use crate::Error;

type Metadata = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// A cheap-to-clone handle on the task service.
#[derive(Clone)]
pub struct TasksClient {
    channel: Replicas,
    timeout: Duration,
    /// `Bearer <SERVICE_TOKEN>`, sent on every call.
    token: Option<Metadata>,
    /// Fails calls fast while the task service does not answer (none: every call is made).
    breaker: BreakerLayer,
}

impl TasksClient {
    /// Builds the client without connecting; every call carries `service_token`.
    ///
    /// # Errors
    /// The URI does not parse, or the token is not a valid header value.
    pub fn new(uri: &str, timeout: Duration, service_token: Option<&str>) -> Result<Self, Error> {
        let token = service_token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<Metadata>()
                    .map_err(|_| Error::Config("SERVICE_TOKEN must be printable ASCII".into()))
            })
            .transpose()?;
        let endpoints = uri
            .split(',')
            .map(|u| {
                Ok(Endpoint::from_shared(u.to_owned())
                    .map_err(|e| Error::Config(format!("invalid TASK_SERVICE_ADDR {u:?}: {e}")))?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // A lazily connected channel per replica; calls take turns over those not left out.
        let channel = Replicas::new(endpoints.iter().map(Endpoint::connect_lazy).collect());
        Ok(TasksClient {
            channel,
            timeout,
            token,
            breaker: BreakerLayer(None),
        })
    }

    /// The same client behind `breaker` (shared by its clones).
    #[must_use]
    pub fn with_breaker(mut self, breaker: std::sync::Arc<Breaker>) -> Self {
        self.breaker = BreakerLayer(Some(breaker));
        self
    }

    /// A client whose every call passes the breaker, then is counted and timed by method and code
    /// (a call the breaker refuses is not a call: it is counted by the breaker).
    fn client(&self) -> TaskServiceClient<Breaking<GrpcMetrics<Replicas>>> {
        let metered = tower::Layer::layer(
            &GrpcMetricsLayer::new(Side::Client, taskboard_proto::method_of),
            self.channel.clone(),
        );
        TaskServiceClient::new(tower::Layer::layer(&self.breaker, metered))
            .max_decoding_message_size(taskboard_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(taskboard_proto::MAX_MESSAGE_BYTES)
    }

    /// A request carrying the deadline (sent as `grpc-timeout`, so the server sees it too), the
    /// service token, and the user it is made for (`None`: the gateway itself, e.g. the intake).
    fn req<T>(&self, msg: T, who: Option<&Principal>) -> tonic::Request<T> {
        use taskboard_proto::auth::{ROLE_HEADER, SERVICE_ROLE, USER_HEADER};
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        let md = r.metadata_mut();
        if let Some(t) = &self.token {
            md.insert("authorization", t.clone());
        }
        taskboard_telemetry::otel::inject(md);
        if let Some(p) = who {
            md.insert(USER_HEADER, Metadata::from(p.user));
            if p.service {
                md.insert(ROLE_HEADER, Metadata::from_static(SERVICE_ROLE));
            }
        }
        r
    }

    /// Creates a task in a CreateTask call of its own; `true` when the answer is a retry's
    /// replay of an idempotent create. (Gathered creates: [`crate::upstream::gather::Creates`].)
    pub async fn create(
        &self,
        m: v1::CreateTaskRequest,
        who: Option<&Principal>,
    ) -> Result<(v1::CreateTaskResponse, bool), tonic::Status> {
        let r = self.client().create_task(self.req(m, who)).await?;
        Ok(created(r))
    }

    /// A gathered create sent alone: CreateTask for the item's user, continuing the item's trace,
    /// with what is left of the deadline after `waited`.
    pub(crate) async fn create_item(
        &self,
        item: v1::CreateTasksItem,
        waited: Duration,
    ) -> Result<(v1::CreateTaskResponse, bool), tonic::Status> {
        use taskboard_proto::auth::{ROLE_HEADER, SERVICE_ROLE, USER_HEADER};
        let mut r = self.req(item.request.unwrap_or_default(), None);
        r.set_timeout(self.timeout.saturating_sub(waited));
        let md = r.metadata_mut();
        if item.user > 0 {
            md.insert(USER_HEADER, Metadata::from(item.user));
        }
        if item.service_role {
            md.insert(ROLE_HEADER, Metadata::from_static(SERVICE_ROLE));
        }
        match item.traceparent.parse::<Metadata>() {
            Ok(tp) if !item.traceparent.is_empty() => {
                md.insert("traceparent", tp);
            }
            _ => {}
        }
        let r = self.client().create_task(r).await?;
        Ok(created(r))
    }

    /// Several creates in one CreateTasks call (made by the gateway itself, which vouches for
    /// each item's user), with what is left of the deadline after `waited`: one result per item.
    pub(crate) async fn create_many(
        &self,
        items: Vec<v1::CreateTasksItem>,
        waited: Duration,
    ) -> Result<Vec<v1::CreateTasksResult>, tonic::Status> {
        let mut r = self.req(v1::CreateTasksRequest { items }, None);
        r.set_timeout(self.timeout.saturating_sub(waited));
        Ok(self.client().create_tasks(r).await?.into_inner().results)
    }

    pub async fn get(
        &self,
        id: i64,
        who: Option<&Principal>,
    ) -> Result<v1::GetTaskResponse, tonic::Status> {
        Ok(self
            .client()
            .get_task(self.req(v1::GetTaskRequest { id }, who))
            .await?
            .into_inner())
    }

    pub async fn list(
        &self,
        m: v1::ListTasksRequest,
        who: Option<&Principal>,
    ) -> Result<v1::ListTasksResponse, tonic::Status> {
        Ok(self
            .client()
            .list_tasks(self.req(m, who))
            .await?
            .into_inner())
    }

    pub async fn update(
        &self,
        m: v1::UpdateTaskRequest,
        who: Option<&Principal>,
    ) -> Result<v1::UpdateTaskResponse, tonic::Status> {
        Ok(self
            .client()
            .update_task(self.req(m, who))
            .await?
            .into_inner())
    }

    pub async fn delete(
        &self,
        m: v1::DeleteTaskRequest,
        who: Option<&Principal>,
    ) -> Result<v1::DeleteTaskResponse, tonic::Status> {
        Ok(self
            .client()
            .delete_task(self.req(m, who))
            .await?
            .into_inner())
    }

    pub async fn create_board(
        &self,
        m: v1::CreateBoardRequest,
        who: Option<&Principal>,
    ) -> Result<v1::Board, tonic::Status> {
        let r = self.client().create_board(self.req(m, who)).await?;
        r.into_inner().board.ok_or_else(missing)
    }

    pub async fn update_board(
        &self,
        m: v1::UpdateBoardRequest,
        who: Option<&Principal>,
    ) -> Result<v1::UpdateBoardResponse, tonic::Status> {
        Ok(self
            .client()
            .update_board(self.req(m, who))
            .await?
            .into_inner())
    }

    /// Deletes a board; the seq of its final event.
    pub async fn delete_board(
        &self,
        id: i64,
        who: Option<&Principal>,
    ) -> Result<i64, tonic::Status> {
        Ok(self
            .client()
            .delete_board(self.req(v1::DeleteBoardRequest { id }, who))
            .await?
            .into_inner()
            .seq)
    }

    pub async fn get_board(
        &self,
        id: i64,
        who: Option<&Principal>,
    ) -> Result<v1::Board, tonic::Status> {
        let r = self
            .client()
            .get_board(self.req(v1::GetBoardRequest { id }, who))
            .await?;
        r.into_inner().board.ok_or_else(missing)
    }

    /// My boards (also the archived ones with `archived`).
    pub async fn list_boards(
        &self,
        archived: bool,
        who: Option<&Principal>,
    ) -> Result<Vec<v1::Board>, tonic::Status> {
        let m = v1::ListBoardsRequest {
            include_archived: archived,
        };
        Ok(self
            .client()
            .list_boards(self.req(m, who))
            .await?
            .into_inner()
            .boards)
    }

    pub async fn list_members(
        &self,
        board_id: i64,
        who: Option<&Principal>,
    ) -> Result<Vec<v1::Member>, tonic::Status> {
        Ok(self
            .client()
            .list_members(self.req(v1::ListMembersRequest { board_id }, who))
            .await?
            .into_inner()
            .members)
    }

    pub async fn set_member(
        &self,
        m: v1::SetMemberRequest,
        who: Option<&Principal>,
    ) -> Result<v1::Member, tonic::Status> {
        let r = self.client().set_member(self.req(m, who)).await?;
        r.into_inner().member.ok_or_else(missing)
    }

    /// The user id of an identity provider's string subject (made on first sight).
    pub async fn resolve_user(&self, issuer: &str, subject: &str) -> Result<i64, tonic::Status> {
        let m = v1::ResolveUserRequest {
            issuer: issuer.into(),
            subject: subject.into(),
        };
        Ok(self
            .client()
            .resolve_user(self.req(m, None))
            .await?
            .into_inner()
            .user_id)
    }

    pub async fn remove_member(
        &self,
        board_id: i64,
        user_id: i64,
        who: Option<&Principal>,
    ) -> Result<(), tonic::Status> {
        self.client()
            .remove_member(self.req(v1::RemoveMemberRequest { board_id, user_id }, who))
            .await?;
        Ok(())
    }

    pub async fn search(
        &self,
        m: v1::SearchTasksRequest,
        who: Option<&Principal>,
    ) -> Result<v1::SearchTasksResponse, tonic::Status> {
        Ok(self
            .client()
            .search_tasks(self.req(m, who))
            .await?
            .into_inner())
    }

    /// A page of a board's (or a task's) events, read for a user (REST history).
    pub async fn history(
        &self,
        m: v1::ListEventsRequest,
        who: Option<&Principal>,
    ) -> Result<v1::ListEventsResponse, tonic::Status> {
        Ok(self
            .client()
            .list_events(self.req(m, who))
            .await?
            .into_inner())
    }

    /// A page of a board's events after `after_seq` (at most `limit` events and `max_bytes` of
    /// payload; 0 = the service's maximum), read by the gateway itself (sessions were
    /// authorized when they subscribed).
    pub async fn list_events(
        &self,
        board_id: i64,
        after_seq: i64,
        limit: i32,
        max_bytes: i32,
    ) -> Result<v1::ListEventsResponse, tonic::Status> {
        Ok(self
            .client()
            .list_events(self.req(
                v1::ListEventsRequest {
                    board_id,
                    after_seq,
                    limit,
                    max_bytes,
                    task_id: 0,
                },
                None,
            ))
            .await?
            .into_inner())
    }

    /// The latest seq of each of `boards` (at most 1000), in one call; for a user, PERMISSION_DENIED
    /// unless they may read every one of them.
    pub async fn board_heads(
        &self,
        boards: Vec<i64>,
        who: Option<&Principal>,
    ) -> Result<std::collections::HashMap<i64, i64>, tonic::Status> {
        Ok(self
            .client()
            .board_heads(self.req(v1::BoardHeadsRequest { board_ids: boards }, who))
            .await?
            .into_inner()
            .heads)
    }

    /// Whether the task service answers its health check with SERVING (within `deadline`). A
    /// service without the health service (the Go original's) counts as ready when it answers a
    /// cheap call at all.
    pub async fn ready(&self, deadline: Duration) -> Result<(), String> {
        let mut h = HealthClient::new(self.channel.clone());
        let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: "task.v1.TaskService".into(),
        });
        req.set_timeout(deadline);
        match tokio::time::timeout(deadline, h.check(req)).await {
            Err(_) => Err("task service: health check timed out".into()),
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => self.answers(deadline).await,
            Ok(Err(s)) => Err(format!("task service: {}", s.code().description())),
            Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(_)) => Err("task service: not serving".into()),
        }
    }

    /// Readiness without a health service: `GetTask(0)` touches nothing, and any answer but
    /// UNAVAILABLE or a timeout means the service is up.
    async fn answers(&self, deadline: Duration) -> Result<(), String> {
        let mut req = self.req(v1::GetTaskRequest { id: 0 }, None);
        req.set_timeout(deadline);
        match tokio::time::timeout(deadline, self.client().get_task(req)).await {
            Err(_) => Err("task service: timed out".into()),
            Ok(Err(s))
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                Err(format!("task service: {}", s.code().description()))
            }
            Ok(Err(s)) if s.code() == tonic::Code::Unauthenticated => {
                Err("task service refuses this gateway's SERVICE_TOKEN".into())
            }
            Ok(_) => Ok(()),
        }
    }

    /// Whether the task service accepts this gateway's service token (a cheap call that touches
    /// nothing): `/ready` reports a mismatch instead of every request failing.
    pub async fn accepts_us(&self, deadline: Duration) -> Result<(), String> {
        self.answers(deadline).await
    }
}

/// A CreateTask answer and whether it replays an idempotent create.
fn created(r: tonic::Response<v1::CreateTaskResponse>) -> (v1::CreateTaskResponse, bool) {
    let replayed = r
        .metadata()
        .get(taskboard_proto::REPLAYED_METADATA)
        .is_some_and(|v| v == "true");
    (r.into_inner(), replayed)
}

fn missing() -> tonic::Status {
    tonic::Status::internal("task service answered without the object")
}
