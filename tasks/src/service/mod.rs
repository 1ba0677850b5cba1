//! The `task.v1.TaskService` gRPC implementation: the shared [`Service`] state and the RPC table
//! (here, each RPC one line), the handlers by resource (`tasks`, `boards`, `events`), the watch
//! loop (`streams`), paging the log (`log`) and why a call is refused (`refusals`).
//!
//! May use `db`, `writer`, `validate`, `access`, `gate` and `error`; nothing outside `lib.rs`
//! imports it but for [`Service`] and [`MAX_BATCH_CREATES`].

mod boards;
mod events;
mod log;
mod refusals;
mod streams;
mod tasks;

use taskboard_proto::v1::{self, task_service_server::TaskService};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::db::{EventRow, Pool};
use crate::gate::DbGate;
use crate::writer::Writer;

/// Most items per CreateTasks call.
pub const MAX_BATCH_CREATES: usize = 1000;

/// Shared state of the service.
#[derive(Clone)]
pub struct Service {
    pub pool: Pool,
    /// Task mutations go through the group committer.
    pub writer: Writer,
    /// Board events go straight to the relay once committed (the relay's scan is the safety net).
    pub committed: mpsc::Sender<Vec<EventRow>>,
    /// Changes whenever an event commits (fed by the relay's LISTEN session).
    pub wake: watch::Receiver<u64>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    /// Closed while the database is known to be down: calls fail fast with UNAVAILABLE.
    pub gate: DbGate,
}

#[tonic::async_trait]
impl TaskService for Service {
    type WatchTasksStream = ReceiverStream<Result<v1::Task, Status>>;
    type WatchEventsStream = ReceiverStream<Result<v1::Event, Status>>;

    async fn create_task(
        &self,
        req: Request<v1::CreateTaskRequest>,
    ) -> Result<Response<v1::CreateTaskResponse>, Status> {
        tasks::create_task(self, req).await
    }

    async fn create_tasks(
        &self,
        req: Request<v1::CreateTasksRequest>,
    ) -> Result<Response<v1::CreateTasksResponse>, Status> {
        tasks::create_tasks(self, req).await
    }

    async fn get_task(
        &self,
        req: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::GetTaskResponse>, Status> {
        tasks::get_task(self, req).await
    }

    async fn list_tasks(
        &self,
        req: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        tasks::list_tasks(self, req).await
    }

    async fn update_task(
        &self,
        req: Request<v1::UpdateTaskRequest>,
    ) -> Result<Response<v1::UpdateTaskResponse>, Status> {
        tasks::update_task(self, req).await
    }

    async fn delete_task(
        &self,
        req: Request<v1::DeleteTaskRequest>,
    ) -> Result<Response<v1::DeleteTaskResponse>, Status> {
        tasks::delete_task(self, req).await
    }

    async fn search_tasks(
        &self,
        req: Request<v1::SearchTasksRequest>,
    ) -> Result<Response<v1::SearchTasksResponse>, Status> {
        tasks::search_tasks(self, req).await
    }

    async fn watch_tasks(
        &self,
        req: Request<v1::ListTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        events::watch_tasks(self, req).await
    }

    async fn watch_events(
        &self,
        req: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        events::watch_events(self, req).await
    }

    async fn board_heads(
        &self,
        req: Request<v1::BoardHeadsRequest>,
    ) -> Result<Response<v1::BoardHeadsResponse>, Status> {
        events::board_heads(self, req).await
    }

    async fn list_events(
        &self,
        req: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        events::list_events(self, req).await
    }

    async fn create_board(
        &self,
        req: Request<v1::CreateBoardRequest>,
    ) -> Result<Response<v1::CreateBoardResponse>, Status> {
        boards::create_board(self, req).await
    }

    async fn get_board(
        &self,
        req: Request<v1::GetBoardRequest>,
    ) -> Result<Response<v1::GetBoardResponse>, Status> {
        boards::get_board(self, req).await
    }

    async fn list_boards(
        &self,
        req: Request<v1::ListBoardsRequest>,
    ) -> Result<Response<v1::ListBoardsResponse>, Status> {
        boards::list_boards(self, req).await
    }

    async fn update_board(
        &self,
        req: Request<v1::UpdateBoardRequest>,
    ) -> Result<Response<v1::UpdateBoardResponse>, Status> {
        boards::update_board(self, req).await
    }

    async fn delete_board(
        &self,
        req: Request<v1::DeleteBoardRequest>,
    ) -> Result<Response<v1::DeleteBoardResponse>, Status> {
        boards::delete_board(self, req).await
    }

    async fn list_members(
        &self,
        req: Request<v1::ListMembersRequest>,
    ) -> Result<Response<v1::ListMembersResponse>, Status> {
        boards::list_members(self, req).await
    }

    async fn set_member(
        &self,
        req: Request<v1::SetMemberRequest>,
    ) -> Result<Response<v1::SetMemberResponse>, Status> {
        boards::set_member(self, req).await
    }

    async fn remove_member(
        &self,
        req: Request<v1::RemoveMemberRequest>,
    ) -> Result<Response<v1::RemoveMemberResponse>, Status> {
        boards::remove_member(self, req).await
    }

    async fn resolve_user(
        &self,
        req: Request<v1::ResolveUserRequest>,
    ) -> Result<Response<v1::ResolveUserResponse>, Status> {
        boards::resolve_user(self, req).await
    }
}

impl Service {
    /// Hands a committed board event to the relay; when its queue is full the relay's scan
    /// publishes it instead.
    fn publish_now(&self, event: EventRow) {
        if self.committed.try_send(vec![event]).is_err() {
            tracing::debug!("relay queue full: the scan publishes the board event");
        }
    }

    /// Runs a call that needs the database: at once UNAVAILABLE while it is known to be down, and
    /// a connection failure closes the gate for the calls that follow.
    async fn db_call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        self.gate.run(f).await
    }
}
