//! The gRPC contract: codes, validation, atomic updates, stable listing, events, health, reflection.
use std::collections::BTreeSet;

use taskboard_proto::v1;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn missing_tasks_are_not_found_and_bad_ids_invalid_argument() {
    let mut t = spawn().await;
    let c = &mut t.client;
    let e = c
        .get_task(v1::GetTaskRequest { id: 4242 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "Task 4242 not found");
    let e = c
        .update_task(v1::UpdateTaskRequest {
            id: 4242,
            completed: Some(true),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete_task(v1::DeleteTaskRequest {
            id: 4242,
            expected_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    for id in [0, -1] {
        let e = c.get_task(v1::GetTaskRequest { id }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    let e = c
        .create_task(v1::CreateTaskRequest {
            board_id: 1,
            title: "".into(),
            created_by: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "Title is required")
    );
    let e = c
        .list_tasks(v1::ListTasksRequest {
            board_id: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "Board ID is required")
    );
}

#[tokio::test]
async fn concurrent_updates_are_atomic_and_every_one_is_an_event() {
    let mut t = spawn().await;
    let (task, _) = t.create(1, "counter").await;
    let mut joins = Vec::new();
    for i in 0..40 {
        let mut c = t.client.clone();
        joins.push(tokio::spawn(async move {
            let req = if i % 2 == 0 {
                v1::UpdateTaskRequest {
                    id: task.id,
                    completed: Some(i % 4 == 0),
                    ..Default::default()
                }
            } else {
                v1::UpdateTaskRequest {
                    id: task.id,
                    title: Some(format!("title {i}")),
                    ..Default::default()
                }
            };
            c.update_task(req).await.unwrap().into_inner().seq
        }));
    }
    let mut seqs = BTreeSet::new();
    for j in joins {
        seqs.insert(j.await.unwrap());
    }
    assert_eq!(seqs, (2..=41).collect(), "each update got its own seq");
    let now = t
        .client
        .get_task(v1::GetTaskRequest { id: task.id })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(now.version, 41, "no update was lost");
    let events = t
        .client
        .list_events(v1::ListEventsRequest {
            board_id: 1,
            after_seq: 0,
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.head_seq, 41);
    assert_eq!(
        events.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=41).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_empty_update_changes_nothing_and_emits_no_event() {
    let mut t = spawn().await;
    let (task, _) = t.create(1, "same").await;
    let r = t
        .client
        .update_task(v1::UpdateTaskRequest {
            id: task.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.task.unwrap(), task);
    assert_eq!(r.seq, 0);
    let ev = t
        .client
        .list_events(v1::ListEventsRequest {
            board_id: 1,
            after_seq: 0,
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ev.head_seq, 1);
}

#[tokio::test]
async fn listing_is_stable_across_pages_even_with_equal_timestamps() {
    let mut t = spawn().await;
    for i in 0..12 {
        t.create(5, &format!("t{i}")).await;
    }
    // Give every task the same created_at: only the id tiebreak orders them now.
    t.db()
        .await
        .execute("UPDATE tasks SET created_at = '2026-01-01T00:00:00Z'", &[])
        .await
        .unwrap();
    let mut ids = Vec::new();
    for page in 1..=3 {
        let r = t
            .client
            .list_tasks(v1::ListTasksRequest {
                board_id: 5,
                page_size: 5,
                page_number: page,
                completed: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.total_count, 12);
        ids.extend(r.tasks.iter().map(|t| t.id));
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest (highest id) first");
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        12,
        "no task twice, none missing"
    );
}

#[tokio::test]
async fn list_events_pages_and_reports_a_reset_after_pruning() {
    let mut t = spawn().await;
    for i in 0..5 {
        t.create(8, &format!("e{i}")).await;
    }
    let page = t
        .client
        .list_events(v1::ListEventsRequest {
            board_id: 8,
            after_seq: 1,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(page.head_seq, 5);
    assert!(!page.reset);
    let e = &page.events[0];
    assert_eq!(e.kind, "created");
    let payload: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
    assert_eq!(payload["seq"], 2);
    assert_eq!(payload["type"], "created");

    // Retention removed events 1..3: a reader at 1 can no longer be caught up event by event.
    t.db()
        .await
        .execute("DELETE FROM events WHERE board_id = 8 AND seq <= 3", &[])
        .await
        .unwrap();
    let page = t
        .client
        .list_events(v1::ListEventsRequest {
            board_id: 8,
            after_seq: 1,
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.reset);
    assert!(page.events.is_empty());
    let page = t
        .client
        .list_events(v1::ListEventsRequest {
            board_id: 8,
            after_seq: 3,
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.reset);
    assert_eq!(page.events.len(), 2);
}

async fn next(s: &mut tonic::Streaming<v1::Event>) -> v1::Event {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("event in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn watch_events_streams_history_then_live_events() {
    let mut t = spawn().await;
    t.create(3, "old 1").await;
    t.create(3, "old 2").await;
    let mut stream = t
        .client
        .watch_events(v1::WatchEventsRequest {
            board_id: 3,
            since_seq: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut stream).await.seq, 2);
    let (task, _) = t.create(3, "live").await;
    let e = next(&mut stream).await;
    assert_eq!((e.seq, e.kind.as_str(), e.task_id), (3, "created", task.id));
    t.client
        .delete_task(v1::DeleteTaskRequest {
            id: task.id,
            expected_version: None,
        })
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await.kind, "deleted");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let t = spawn().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.handle.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: "task.v1.TaskService".into(),
            })
            .await;
        if let Ok(r) = r {
            if r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut r = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = r
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"task.v1.TaskService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // v1alpha too: Python's grpcio-reflection and older grpcurl speak only that.
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient as AlphaClient,
        server_reflection_request::MessageRequest as AlphaRequest,
        server_reflection_response::MessageResponse as AlphaResponse,
        ServerReflectionRequest as AlphaReflectionRequest,
    };
    let mut r = AlphaClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", t.handle.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let req = AlphaReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let msg = r
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let Some(AlphaResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}")
    };
    assert!(list.service.iter().any(|s| s.name == "task.v1.TaskService"));
}

#[tokio::test]
async fn board_heads_answers_every_board_in_one_call() {
    let mut t = spawn().await;
    t.create(5, "a").await;
    t.create(5, "b").await;
    t.create(6, "c").await;
    let heads = t
        .client
        .board_heads(v1::BoardHeadsRequest {
            board_ids: vec![5, 6, 7],
        })
        .await
        .unwrap()
        .into_inner()
        .heads;
    assert_eq!(
        heads,
        std::collections::HashMap::from([(5, 2), (6, 1), (7, 0)])
    );
    let e = t
        .client
        .board_heads(v1::BoardHeadsRequest { board_ids: vec![0] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = t
        .client
        .board_heads(v1::BoardHeadsRequest {
            board_ids: (1..=1001).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

/// The Go original's own client stubs (generated from its unchanged proto) against this service.
#[tokio::test]
async fn the_originals_own_client_stubs_work_against_this_service() {
    use taskboard_proto::original::{self as orig, task_service_client::TaskServiceClient};
    let t = spawn().await;
    let mut c = TaskServiceClient::connect(format!("http://{}", t.handle.addr))
        .await
        .unwrap();
    // created_by left out, as the original allowed.
    let created = c
        .create_task(orig::CreateTaskRequest {
            board_id: 9,
            title: "from an old client".into(),
            description: "d".into(),
            created_by: 0,
        })
        .await
        .expect("create without created_by")
        .into_inner()
        .task
        .unwrap();
    assert_eq!((created.board_id, created.created_by), (9, 0));
    assert!(created.created_at.is_some());
    let got = c
        .get_task(orig::GetTaskRequest { id: created.id })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(got, created);

    // WatchTasks with the original's signature: the task after each change.
    let mut watch = c
        .watch_tasks(orig::ListTasksRequest {
            board_id: 9,
            completed: None,
            page_size: 0,
            page_number: 0,
        })
        .await
        .expect("WatchTasks is implemented")
        .into_inner();
    let updated = c
        .update_task(orig::UpdateTaskRequest {
            id: created.id,
            title: None,
            description: None,
            completed: Some(true),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let seen = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("a task in time")
        .unwrap()
        .unwrap();
    assert_eq!(seen, updated, "the stream decodes as the original's Task");
    assert!(seen.completed);

    // page_size 0 means 50, as in the original.
    for i in 0..55 {
        c.create_task(orig::CreateTaskRequest {
            board_id: 10,
            title: format!("t{i}"),
            description: String::new(),
            created_by: 1,
        })
        .await
        .unwrap();
    }
    let page = c
        .list_tasks(orig::ListTasksRequest {
            board_id: 10,
            completed: None,
            page_size: 0,
            page_number: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.tasks.len(), page.total_count), (50, 55));

    assert!(
        c.delete_task(orig::DeleteTaskRequest { id: created.id })
            .await
            .unwrap()
            .into_inner()
            .success
    );
    let e = c
        .get_task(orig::GetTaskRequest { id: created.id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_stale_expected_version_fails_with_the_current_one_and_changes_nothing() {
    let mut t = spawn().await;
    let (task, _) = t.create(1, "v1").await;
    let update = |expected: Option<i64>, title: Option<&str>| v1::UpdateTaskRequest {
        id: task.id,
        title: title.map(Into::into),
        description: None,
        completed: None,
        expected_version: expected,
        ..Default::default()
    };
    let r = t
        .client
        .update_task(update(Some(1), Some("v2")))
        .await
        .expect("at version 1")
        .into_inner();
    assert_eq!(r.task.unwrap().version, 2);

    let stale = |e: tonic::Status| {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert_eq!(
            e.metadata().get(taskboard_proto::VERSION_METADATA).unwrap(),
            "2",
            "the current version"
        );
        assert!(e.message().contains("version 2"), "{}", e.message());
    };
    stale(
        t.client
            .update_task(update(Some(1), Some("lost update")))
            .await
            .unwrap_err(),
    );
    stale(
        t.client
            .update_task(update(Some(1), None))
            .await
            .unwrap_err(),
    );
    stale(
        t.client
            .delete_task(v1::DeleteTaskRequest {
                id: task.id,
                expected_version: Some(1),
            })
            .await
            .unwrap_err(),
    );
    let now = t
        .client
        .get_task(v1::GetTaskRequest { id: task.id })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(
        (now.title.as_str(), now.version),
        ("v2", 2),
        "nothing changed"
    );

    // A missing task is still NOT_FOUND, whatever version is expected.
    let e = t
        .client
        .delete_task(v1::DeleteTaskRequest {
            id: 999_999,
            expected_version: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    t.client
        .delete_task(v1::DeleteTaskRequest {
            id: task.id,
            expected_version: Some(2),
        })
        .await
        .expect("at version 2");
}

#[tokio::test]
async fn a_retried_create_with_its_idempotency_key_answers_the_first_result_and_creates_nothing() {
    let mut t = spawn().await;
    let nats = async_nats::connect(taskboard_tasks::testing::nats_url())
        .await
        .unwrap();
    let mut sub = nats
        .subscribe(taskboard_proto::nats::all_boards(&t.handle.subject_prefix))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let req = |title: &str, key: &str| v1::CreateTaskRequest {
        board_id: 8,
        title: title.into(),
        description: "d".into(),
        created_by: 1,
        idempotency_key: Some(key.into()),
        ..Default::default()
    };
    // Six calls with one key at once (a client retrying while its first call is in flight):
    // one creates, the others answer the same task and seq, marked replayed.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut c = t.client.clone();
            let r = req("once", "k-1");
            tokio::spawn(async move { c.create_task(r).await })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        let r = c.await.unwrap().expect("created or replayed");
        let replayed = r
            .metadata()
            .get(taskboard_proto::REPLAYED_METADATA)
            .is_some();
        answers.push((replayed, r.into_inner()));
    }
    assert_eq!(answers.iter().filter(|(r, _)| !r).count(), 1, "one created");
    let first = answers[0].1.clone();
    assert!(answers.iter().all(|(_, a)| *a == first), "the same answer");
    // A retry later: the same.
    let r = t.client.create_task(req("once", "k-1")).await.unwrap();
    assert_eq!(
        r.metadata()
            .get(taskboard_proto::REPLAYED_METADATA)
            .unwrap(),
        "true"
    );
    assert_eq!(r.into_inner(), first);
    let db = t.db().await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM tasks WHERE board_id = 8").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM events WHERE board_id = 8").await,
        1
    );
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.headers.unwrap().get("Taskboard-Seq").unwrap().as_str(),
        "1"
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "a retry publishes nothing"
    );

    // The same key for something else is refused; another key is another task.
    let e = t.client.create_task(req("other", "k-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let second = t
        .client
        .create_task(req("once", "k-2"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.task.unwrap().id, first.task.unwrap().id);
    for bad in ["", "with space", &"x".repeat(256)] {
        let e = t.client.create_task(req("bad", bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
    }

    // Past 24 h a key is forgotten: the same call creates a new task.
    db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
        &[],
    )
    .await
    .unwrap();
    let later = t.client.create_task(req("once", "k-1")).await.unwrap();
    assert!(later
        .metadata()
        .get(taskboard_proto::REPLAYED_METADATA)
        .is_none());
    assert_eq!(later.into_inner().seq, 3);
}
