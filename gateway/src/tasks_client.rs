//! The gRPC client of the task service: one lazily connected channel (the gateway starts before the
//! task service is up), a deadline on every call, and a readiness probe.
use std::time::Duration;

use taskboard_proto::v1::{self, task_service_client::TaskServiceClient};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use taskboard_telemetry::{GrpcMetrics, GrpcMetricsLayer, Side};

use crate::Error;

/// A cheap-to-clone handle on the task service.
#[derive(Clone)]
pub struct TasksClient {
    channel: Channel,
    timeout: Duration,
}

impl TasksClient {
    /// Builds the client without connecting.
    ///
    /// # Errors
    /// The URI does not parse.
    pub fn new(uri: &str, timeout: Duration) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(uri.to_owned())
            .map_err(|e| Error::Config(format!("invalid TASK_SERVICE_ADDR {uri:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        Ok(TasksClient {
            channel: endpoint.connect_lazy(),
            timeout,
        })
    }

    /// A client whose every call is counted and timed by method and code.
    fn client(&self) -> TaskServiceClient<GrpcMetrics<Channel>> {
        TaskServiceClient::new(tower::Layer::layer(
            &GrpcMetricsLayer::new(Side::Client, taskboard_proto::method_of),
            self.channel.clone(),
        ))
        .max_decoding_message_size(taskboard_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(taskboard_proto::MAX_MESSAGE_BYTES)
    }

    /// A request carrying the deadline (sent as `grpc-timeout`, so the server sees it too).
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout);
        r
    }

    pub async fn create(
        &self,
        m: v1::CreateTaskRequest,
    ) -> Result<v1::CreateTaskResponse, tonic::Status> {
        async { Ok(self.client().create_task(self.req(m)).await?.into_inner()) }.await
    }

    pub async fn get(&self, id: i64) -> Result<v1::GetTaskResponse, tonic::Status> {
        async {
            Ok(self
                .client()
                .get_task(self.req(v1::GetTaskRequest { id }))
                .await?
                .into_inner())
        }
        .await
    }

    pub async fn list(
        &self,
        m: v1::ListTasksRequest,
    ) -> Result<v1::ListTasksResponse, tonic::Status> {
        async { Ok(self.client().list_tasks(self.req(m)).await?.into_inner()) }.await
    }

    pub async fn update(
        &self,
        m: v1::UpdateTaskRequest,
    ) -> Result<v1::UpdateTaskResponse, tonic::Status> {
        async { Ok(self.client().update_task(self.req(m)).await?.into_inner()) }.await
    }

    pub async fn delete(&self, id: i64) -> Result<v1::DeleteTaskResponse, tonic::Status> {
        async {
            Ok(self
                .client()
                .delete_task(self.req(v1::DeleteTaskRequest { id }))
                .await?
                .into_inner())
        }
        .await
    }

    /// A page of a board's events after `after_seq`.
    pub async fn list_events(
        &self,
        board_id: i64,
        after_seq: i64,
        limit: i32,
    ) -> Result<v1::ListEventsResponse, tonic::Status> {
        async {
            Ok(self
                .client()
                .list_events(self.req(v1::ListEventsRequest {
                    board_id,
                    after_seq,
                    limit,
                }))
                .await?
                .into_inner())
        }
        .await
    }

    /// The latest seq of each of `boards` (at most 1000), in one call.
    pub async fn board_heads(
        &self,
        boards: Vec<i64>,
    ) -> Result<std::collections::HashMap<i64, i64>, tonic::Status> {
        async {
            Ok(self
                .client()
                .board_heads(self.req(v1::BoardHeadsRequest { board_ids: boards }))
                .await?
                .into_inner()
                .heads)
        }
        .await
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
        let mut req = tonic::Request::new(v1::GetTaskRequest { id: 0 });
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
            Ok(_) => Ok(()),
        }
    }
}
