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

    /// Holds board `board`'s row lock in a transaction of its own, so the writer's next commit
    /// waits and everything sent meanwhile queues behind it; released by `COMMIT` on the returned
    /// client.
    pub async fn hold_board(&self, board: i64) -> tokio_postgres::Client {
        let blocker = self.db().await;
        blocker
            .batch_execute(&format!(
                "BEGIN; SELECT last_seq FROM boards WHERE id = {board} FOR UPDATE"
            ))
            .await
            .unwrap();
        blocker
    }
}

/// The value of the unlabelled series `name` on the service's own /metrics (0 when absent).
pub async fn metric(t: &TestTasks, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(t.handle.metrics_addr)
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
