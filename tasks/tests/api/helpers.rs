//! Spawns the task service on port 0 with a fresh database and gives tests a gRPC client.
use std::time::Duration;

use taskboard_proto::v1::{self, task_service_client::TaskServiceClient};
use taskboard_tasks::testing::{self, TasksHandle};
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestTasks {
    pub handle: TasksHandle,
    pub client: TaskServiceClient<Channel>,
}

pub async fn spawn() -> TestTasks {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tune: impl FnOnce(&mut taskboard_tasks::Config)) -> TestTasks {
    let mut c = testing::test_config().await;
    tune(&mut c);
    let handle = testing::spawn_tasks(c).await;
    let client = connect(&handle).await;
    TestTasks { handle, client }
}

pub async fn connect(handle: &TasksHandle) -> TaskServiceClient<Channel> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TaskServiceClient::connect(format!("http://{}", handle.addr)).await {
            Ok(c) => return c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("task service did not come up: {e}"),
        }
    }
}

impl TestTasks {
    pub async fn create(&mut self, board: i64, title: &str) -> (v1::Task, i64) {
        let r = self
            .client
            .create_task(v1::CreateTaskRequest {
                board_id: board,
                title: title.into(),
                description: String::new(),
                created_by: 1,
                idempotency_key: None,
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        (r.task.expect("task"), r.seq)
    }

    /// A direct connection to the test database.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.handle.database_url, tokio_postgres::NoTls)
            .await
            .expect("db");
        tokio::spawn(conn);
        c
    }
}
