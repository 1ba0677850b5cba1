//! AUTH=on: the service token, and per-board authorization of every RPC.
use taskboard_proto::v1::{self, task_service_client::TaskServiceClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::helpers::*;

const TOKEN: &str = "test-service-token-0123456789";

/// Adds the test's metadata to every call.
type AddMetadata = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type Client = TaskServiceClient<InterceptedService<Channel, AddMetadata>>;

async fn spawn_auth() -> TestTasks {
    spawn_with(|c| {
        c.auth = "on".into();
        c.service_token = Some(TOKEN.into());
    })
    .await
}

/// A client sending `token` and, when given, the user (and the service role).
fn client(t: &TestTasks, token: Option<&str>, user: Option<i64>, service: bool) -> Client {
    let channel = Channel::from_shared(format!("http://{}", t.handle.addr))
        .unwrap()
        .connect_lazy();
    let token = token.map(|t| format!("Bearer {t}"));
    let f: AddMetadata = Box::new(move |mut r| {
        let md = r.metadata_mut();
        if let Some(t) = &token {
            md.insert("authorization", t.parse().unwrap());
        }
        if let Some(u) = user {
            md.insert("x-taskboard-user", u.to_string().parse().unwrap());
        }
        if service {
            md.insert("x-taskboard-role", "service".parse().unwrap());
        }
        Ok(r)
    });
    TaskServiceClient::with_interceptor(channel, f)
}

fn user(t: &TestTasks, id: i64) -> Client {
    client(t, Some(TOKEN), Some(id), false)
}

async fn new_board(c: &mut Client, name: &str) -> v1::Board {
    c.create_board(v1::CreateBoardRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .expect("create board")
    .into_inner()
    .board
    .expect("board")
}

fn create_req(board: i64) -> v1::CreateTaskRequest {
    v1::CreateTaskRequest {
        board_id: board,
        title: "t".into(),
        description: String::new(),
        created_by: 999,
        idempotency_key: None,
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> (Code, String) {
    let s = r.expect_err("the call must be refused");
    (s.code(), s.message().to_owned())
}

#[tokio::test]
async fn without_the_service_token_only_health_answers() {
    let t = spawn_auth().await;
    for token in [None, Some("wrong-token-0123456789")] {
        let mut c = client(&t, token, None, false);
        let (c1, m) = code(c.create_task(create_req(1)).await);
        assert_eq!(c1, Code::Unauthenticated, "{token:?}: {m}");
        let (c2, _) = code(c.list_boards(v1::ListBoardsRequest::default()).await);
        assert_eq!(c2, Code::Unauthenticated);
    }
    // Reflection is closed too.
    let channel = Channel::from_shared(format!("http://{}", t.handle.addr))
        .unwrap()
        .connect_lazy();
    let mut refl = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
        channel.clone(),
    );
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let r = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await;
    assert_eq!(
        r.expect_err("reflection needs the token").code(),
        Code::Unauthenticated
    );
    // Health does not (probes carry no token).
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .expect("health answers without a token");
}

#[tokio::test]
async fn a_non_member_can_neither_read_nor_change_a_board() {
    let t = spawn_auth().await;
    let mut alice = user(&t, 1);
    let mut mallory = user(&t, 2);
    let b = new_board(&mut alice, "Alice's").await;
    assert_eq!((b.role.as_str(), b.created_by), ("owner", 1));
    let task = alice
        .create_task(create_req(b.id))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.created_by, 1, "the author is the caller, not the body");

    let denied = |r: (Code, String)| {
        assert_eq!(r.0, Code::PermissionDenied, "{}", r.1);
        assert!(r.1.contains("not a member"), "{}", r.1);
    };
    denied(code(mallory.create_task(create_req(b.id)).await));
    denied(code(
        mallory
            .list_tasks(v1::ListTasksRequest {
                board_id: b.id,
                ..Default::default()
            })
            .await,
    ));
    denied(code(
        mallory
            .list_events(v1::ListEventsRequest {
                board_id: b.id,
                after_seq: 0,
                limit: 10,
                ..Default::default()
            })
            .await,
    ));
    denied(code(
        mallory
            .board_heads(v1::BoardHeadsRequest {
                board_ids: vec![b.id],
            })
            .await,
    ));
    denied(code(
        mallory
            .watch_events(v1::WatchEventsRequest {
                board_id: b.id,
                since_seq: 0,
            })
            .await,
    ));
    denied(code(
        mallory
            .watch_tasks(v1::ListTasksRequest {
                board_id: b.id,
                ..Default::default()
            })
            .await,
    ));
    denied(code(
        mallory.get_board(v1::GetBoardRequest { id: b.id }).await,
    ));
    // Tasks of other boards do not exist for the caller.
    for r in [
        code(mallory.get_task(v1::GetTaskRequest { id: task.id }).await),
        code(
            mallory
                .update_task(v1::UpdateTaskRequest {
                    id: task.id,
                    title: Some("pwned".into()),
                    ..Default::default()
                })
                .await,
        ),
        code(
            mallory
                .delete_task(v1::DeleteTaskRequest {
                    id: task.id,
                    expected_version: None,
                })
                .await,
        ),
    ] {
        assert_eq!(r.0, Code::NotFound, "{}", r.1);
    }
    let boards = mallory
        .list_boards(v1::ListBoardsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .boards;
    assert!(boards.is_empty(), "{boards:?}");
    // Nothing changed.
    let still = alice
        .get_task(v1::GetTaskRequest { id: task.id })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(still.title, "t");
}

#[tokio::test]
async fn viewers_read_editors_write_owners_manage_members() {
    let t = spawn_auth().await;
    let mut owner = user(&t, 10);
    let mut bob = user(&t, 11);
    let b = new_board(&mut owner, "Team").await;
    let set = |board, user_id, role: &str| v1::SetMemberRequest {
        board_id: board,
        user_id,
        role: role.into(),
    };
    owner.set_member(set(b.id, 11, "viewer")).await.unwrap();
    let page = bob
        .list_tasks(v1::ListTasksRequest {
            board_id: b.id,
            ..Default::default()
        })
        .await
        .expect("a viewer reads");
    assert_eq!(page.into_inner().total_count, 0);
    let (c, m) = code(bob.create_task(create_req(b.id)).await);
    assert_eq!(c, Code::PermissionDenied);
    assert!(m.contains("viewer"), "{m}");
    let (c, _) = code(bob.set_member(set(b.id, 12, "viewer")).await);
    assert_eq!(c, Code::PermissionDenied, "only owners manage members");

    owner.set_member(set(b.id, 11, "editor")).await.unwrap();
    let created = bob
        .create_task(create_req(b.id))
        .await
        .expect("an editor writes");
    assert_eq!(created.into_inner().task.unwrap().created_by, 11);

    let members = owner
        .list_members(v1::ListMembersRequest { board_id: b.id })
        .await
        .unwrap()
        .into_inner()
        .members;
    let got: Vec<(i64, &str)> = members
        .iter()
        .map(|m| (m.user_id, m.role.as_str()))
        .collect();
    assert_eq!(got, vec![(10, "owner"), (11, "editor")]);

    // The last owner stays.
    let (c, m) = code(owner.set_member(set(b.id, 10, "editor")).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    let (c, _) = code(
        owner
            .remove_member(v1::RemoveMemberRequest {
                board_id: b.id,
                user_id: 10,
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    // Bad input says what is wrong.
    let (c, m) = code(owner.set_member(set(b.id, 12, "admin")).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let (c, _) = code(owner.set_member(set(b.id + 1000, 12, "viewer")).await);
    assert_eq!(c, Code::NotFound);

    // A member may leave; then they read nothing.
    bob.remove_member(v1::RemoveMemberRequest {
        board_id: b.id,
        user_id: 11,
    })
    .await
    .expect("leave");
    let (c, _) = code(
        bob.list_tasks(v1::ListTasksRequest {
            board_id: b.id,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c, Code::PermissionDenied);
}

#[tokio::test]
async fn the_service_role_and_the_gateway_itself_see_every_board() {
    let t = spawn_auth().await;
    let mut alice = user(&t, 1);
    let b = new_board(&mut alice, "A").await;
    alice.create_task(create_req(b.id)).await.unwrap();
    for (head, mut c) in [1, 2].into_iter().zip([
        client(&t, Some(TOKEN), Some(50), true),
        client(&t, Some(TOKEN), None, false),
    ]) {
        let heads = c
            .board_heads(v1::BoardHeadsRequest {
                board_ids: vec![b.id],
            })
            .await
            .unwrap()
            .into_inner()
            .heads;
        assert_eq!(heads.get(&b.id), Some(&head));
        c.create_task(create_req(b.id))
            .await
            .expect("writes anywhere");
    }
}

#[tokio::test]
async fn a_watch_stream_ends_when_its_reader_leaves_the_board() {
    let t = spawn_auth().await;
    let mut owner = user(&t, 1);
    let mut eve = user(&t, 2);
    let b = new_board(&mut owner, "W").await;
    owner
        .set_member(v1::SetMemberRequest {
            board_id: b.id,
            user_id: 2,
            role: "viewer".into(),
        })
        .await
        .unwrap();
    let mut stream = eve
        .watch_events(v1::WatchEventsRequest {
            board_id: b.id,
            since_seq: 0,
        })
        .await
        .expect("a viewer watches")
        .into_inner();
    owner.create_task(create_req(b.id)).await.unwrap();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.seq, 1);
    owner
        .remove_member(v1::RemoveMemberRequest {
            board_id: b.id,
            user_id: 2,
        })
        .await
        .unwrap();
    owner.create_task(create_req(b.id)).await.unwrap();
    // The removal itself may still come (it is the last event the member was entitled to); the
    // task created after it never does.
    let end = loop {
        match tokio::time::timeout(WAIT, stream.message()).await.unwrap() {
            // 1: the member added, 2: a task, 3: the removal; 4 (the task after it) never comes.
            Ok(Some(e)) => assert!(e.seq <= 3, "seq {} ({}) after the removal", e.seq, e.kind),
            other => break other,
        }
    };
    assert_eq!(
        end.expect_err("no more events for a non-member").code(),
        Code::PermissionDenied
    );
}

/// Every event names who made the change; a task's history is its own events, readable by the
/// board's members only.
#[tokio::test]
async fn events_carry_their_actor_and_a_task_has_its_own_history() {
    let t = spawn_auth().await;
    let mut owner = user(&t, 20);
    let mut bob = user(&t, 21);
    let mut eve = user(&t, 22);
    let b = new_board(&mut owner, "History").await;
    owner
        .set_member(v1::SetMemberRequest {
            board_id: b.id,
            user_id: 21,
            role: "editor".into(),
        })
        .await
        .unwrap();
    let task = |r: tonic::Response<v1::CreateTaskResponse>| r.into_inner().task.unwrap();
    let a = task(owner.create_task(create_req(b.id)).await.unwrap());
    let other = task(bob.create_task(create_req(b.id)).await.unwrap());
    bob.update_task(v1::UpdateTaskRequest {
        id: a.id,
        title: Some("renamed by bob".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    owner
        .delete_task(v1::DeleteTaskRequest {
            id: a.id,
            expected_version: None,
        })
        .await
        .unwrap();

    let all = owner
        .list_events(v1::ListEventsRequest {
            board_id: b.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i64, &str, i64, i64)> = all
        .events
        .iter()
        .map(|e| (e.seq, e.kind.as_str(), e.task_id, e.actor))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "member_changed", 0, 20),
            (2, "created", a.id, 20),
            (3, "created", other.id, 21),
            (4, "updated", a.id, 21),
            (5, "deleted", a.id, 20)
        ]
    );

    // The deleted task's history, by task id alone, in pages.
    let history = |after_seq, limit| v1::ListEventsRequest {
        board_id: 0,
        task_id: a.id,
        after_seq,
        limit,
        max_bytes: 0,
    };
    let page = bob.list_events(history(0, 2)).await.unwrap().into_inner();
    let seqs: Vec<i64> = page.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![2, 4]);
    assert_eq!(page.head_seq, 5);
    assert!(!page.reset);
    let page = bob.list_events(history(4, 2)).await.unwrap().into_inner();
    let got: Vec<(i64, &str, i64)> = page
        .events
        .iter()
        .map(|e| (e.seq, e.kind.as_str(), e.actor))
        .collect();
    assert_eq!(got, vec![(5, "deleted", 20)]);

    // Outsiders learn nothing, not even that the task exists; a board id that is not the task's
    // finds nothing either.
    let (c, _) = code(eve.list_events(history(0, 10)).await);
    assert_eq!(c, Code::NotFound);
    let mut wrong_board = history(0, 10);
    wrong_board.board_id = b.id + 1000;
    let (c, _) = code(owner.list_events(wrong_board).await);
    assert_eq!(c, Code::NotFound);
    let mut none = history(0, 10);
    none.task_id = 987_654;
    let (c, m) = code(owner.list_events(none).await);
    assert_eq!(c, Code::NotFound);
    assert!(m.starts_with("Task "), "{m}");
}

/// Full-text search: stemmed, ranked (title above description), highlighted, paged, on one board
/// or across the caller's boards, never on boards the caller may not read.
#[tokio::test]
async fn search_finds_ranked_highlighted_tasks_on_my_boards_only() {
    let t = spawn_auth().await;
    let mut me = user(&t, 40);
    let mut other = user(&t, 41);
    let mine = new_board(&mut me, "Home").await.id;
    let also_mine = new_board(&mut me, "Work").await.id;
    let theirs = new_board(&mut other, "Farm").await.id;
    let add = |board_id: i64, title: &str, description: &str| v1::CreateTaskRequest {
        board_id,
        title: title.into(),
        description: description.into(),
        created_by: 0,
        idempotency_key: None,
        ..Default::default()
    };
    let a = add(
        mine,
        "Buy milk and bread",
        "from the corner shop: semi-skimmed milk",
    );
    let b = add(mine, "Groceries", "eggs, cheese, milk");
    let c = add(
        also_mine,
        "Plan the sprint",
        "a planning session with the team",
    );
    let d = add(theirs, "Milk the cows", "");
    let mut ids = Vec::new();
    for r in [a, b, c] {
        ids.push(
            me.create_task(r)
                .await
                .unwrap()
                .into_inner()
                .task
                .unwrap()
                .id,
        );
    }
    other.create_task(d).await.unwrap();
    let search =
        |query: &str, board_id: i64, page_size: i32, page_number: i32| v1::SearchTasksRequest {
            query: query.into(),
            board_id,
            page_size,
            page_number,
        };
    let titles = |r: &v1::SearchTasksResponse| -> Vec<String> {
        r.hits
            .iter()
            .map(|h| h.task.as_ref().unwrap().title.clone())
            .collect()
    };

    // Across my boards: the farm's cows are not mine; the title match ranks first.
    let r = me
        .search_tasks(search("milk", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(titles(&r), vec!["Buy milk and bread", "Groceries"]);
    assert_eq!((r.total_count, r.page_number, r.page_size), (2, 1, 20));
    assert!(r.hits[0].rank > r.hits[1].rank);
    let pieces = |f: &[v1::Fragment]| -> Vec<(String, bool)> {
        f.iter().map(|f| (f.text.clone(), f.r#match)).collect()
    };
    assert_eq!(
        pieces(&r.hits[0].title),
        vec![
            ("Buy ".to_owned(), false),
            ("milk".to_owned(), true),
            (" and bread".to_owned(), false)
        ]
    );
    assert!(r.hits[0]
        .snippet
        .iter()
        .any(|f| f.r#match && f.text == "milk"));
    assert!(
        r.hits[1].title.iter().all(|f| !f.r#match),
        "matched in the description only"
    );

    // English stemming; web-search syntax; one board; pages.
    let r = me
        .search_tasks(search("plans", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(titles(&r), vec!["Plan the sprint"]);
    let r = me
        .search_tasks(search("milk -bread", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(titles(&r), vec!["Groceries"]);
    let r = me
        .search_tasks(search("milk", also_mine, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(r.hits.is_empty() && r.total_count == 0);
    let r = me
        .search_tasks(search("milk", mine, 1, 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (titles(&r), r.total_count),
        (vec!["Groceries".to_owned()], 2)
    );

    // Changes are searchable at once; deleted tasks are gone.
    me.update_task(v1::UpdateTaskRequest {
        id: ids[2],
        title: Some("Retrospective".into()),
        description: Some(String::new()),
        ..Default::default()
    })
    .await
    .unwrap();
    let r = me
        .search_tasks(search("retrospectives", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(titles(&r), vec!["Retrospective"]);
    me.delete_task(v1::DeleteTaskRequest {
        id: ids[1],
        expected_version: None,
    })
    .await
    .unwrap();
    let r = me
        .search_tasks(search("cheese", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(r.hits.is_empty());

    // Someone else's board, and bad input.
    let (c, _) = code(me.search_tasks(search("milk", theirs, 0, 0)).await);
    assert_eq!(c, Code::PermissionDenied);
    let (c, m) = code(me.search_tasks(search("  ", 0, 0, 0)).await);
    assert_eq!((c, m.contains("required")), (Code::InvalidArgument, true));
    let (c, _) = code(me.search_tasks(search(&"x".repeat(501), 0, 0, 0)).await);
    assert_eq!(c, Code::InvalidArgument);
    // Text that looks like markup comes back as written.
    let markup = v1::CreateTaskRequest {
        board_id: mine,
        title: "<b>Fix</b> the a<b & c &amp; parser".into(),
        description: "x <script>fix</script> y".into(),
        created_by: 0,
        idempotency_key: None,
        ..Default::default()
    };
    me.create_task(markup).await.unwrap();
    let r = me
        .search_tasks(search("fix", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    let joined = |f: &[v1::Fragment]| f.iter().map(|f| f.text.as_str()).collect::<String>();
    assert_eq!(
        joined(&r.hits[0].title),
        "<b>Fix</b> the a<b & c &amp; parser"
    );
    assert_eq!(joined(&r.hits[0].snippet), "x <script>fix</script> y");
    // Stop words only, or punctuation: no matches, no error.
    let r = me
        .search_tasks(search("the", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(r.hits.is_empty());
    let r = me
        .search_tasks(search("\"'&|!():*", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(r.hits.is_empty());
}

/// Rename, archive (read-only, hidden by default), unarchive and delete, each an event on the
/// board's own seq; deleting takes the tasks, events and members along and publishes a final
/// event at once.
#[tokio::test]
async fn boards_are_renamed_archived_and_deleted_with_events_on_their_seq() {
    let t = spawn_auth().await;
    let nats = async_nats::connect(taskboard_tasks::testing::nats_url())
        .await
        .unwrap();
    let mut sub = nats
        .subscribe(taskboard_proto::nats::all_boards(&t.handle.subject_prefix))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let (mut owner, mut editor, mut viewer) = (user(&t, 60), user(&t, 61), user(&t, 62));
    let mut gateway = client(&t, Some(TOKEN), None, false);
    let b = owner
        .create_board(v1::CreateBoardRequest {
            name: "Q3".into(),
            description: "the quarter".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .board
        .unwrap();
    assert_eq!(
        (b.description.as_str(), b.archived_at),
        ("the quarter", None)
    );
    for (u, role) in [(61, "editor"), (62, "viewer")] {
        owner
            .set_member(v1::SetMemberRequest {
                board_id: b.id,
                user_id: u,
                role: role.into(),
            })
            .await
            .unwrap();
    }
    let change = |name: Option<&str>, archived: Option<bool>| v1::UpdateBoardRequest {
        id: b.id,
        name: name.map(str::to_owned),
        description: None,
        archived,
    };

    // An editor renames; the event says so on the board's seq.
    let r = editor
        .update_board(change(Some("Q3 plan"), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.board.as_ref().unwrap().name.as_str(), r.seq),
        ("Q3 plan", 3)
    );
    let (subject, body) = next_event(&mut sub).await;
    assert!(subject.ends_with(".board_updated"), "{subject}");
    assert_eq!(body["seq"], 3);
    assert_eq!(body["board"]["name"], "Q3 plan");
    assert_eq!(body["board"]["description"], "the quarter");
    assert_eq!(body["board"]["archived"], false);
    let (c, _) = code(viewer.update_board(change(Some("x"), None)).await);
    assert_eq!(c, Code::PermissionDenied);
    let (c, m) = code(editor.update_board(change(None, Some(true))).await);
    assert_eq!(c, Code::PermissionDenied, "archiving is the owner's: {m}");
    let (c, _) = code(owner.update_board(change(Some(""), None)).await);
    assert_eq!(c, Code::InvalidArgument);

    let task = editor
        .create_task(create_req(b.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.seq, 4);
    let task = task.task.unwrap();
    next_event(&mut sub).await;

    // Archived: read-only and hidden unless asked for.
    let r = owner
        .update_board(change(None, Some(true)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.board.unwrap().archived_at.is_some());
    assert_eq!(next_event(&mut sub).await.1["board"]["archived"], true);
    let listed = |archived: bool| v1::ListBoardsRequest {
        include_archived: archived,
    };
    let ids = |r: v1::ListBoardsResponse| r.boards.iter().map(|b| b.id).collect::<Vec<_>>();
    assert!(ids(owner.list_boards(listed(false)).await.unwrap().into_inner()).is_empty());
    assert_eq!(
        ids(owner.list_boards(listed(true)).await.unwrap().into_inner()),
        vec![b.id]
    );
    let (c, m) = code(editor.create_task(create_req(b.id)).await);
    assert_eq!(c, Code::FailedPrecondition);
    assert!(m.contains("archived"), "{m}");
    let (c, _) = code(
        editor
            .update_task(v1::UpdateTaskRequest {
                id: task.id,
                completed: Some(true),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    let (c, m) = code(owner.update_board(change(Some("renamed"), None)).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    // Concurrent creates share commits: those on the archived board fail alone.
    let open = new_board(&mut owner, "Open").await;
    let mut calls = Vec::new();
    for i in 0..12 {
        let mut c = user(&t, 60);
        let board = if i % 2 == 0 { b.id } else { open.id };
        calls.push(tokio::spawn(async move {
            (
                board,
                c.create_task(create_req(board))
                    .await
                    .map(|r| r.into_inner().seq),
            )
        }));
    }
    let mut open_seqs = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            (board, Err(s)) => assert_eq!((board, s.code()), (b.id, Code::FailedPrecondition)),
            (board, Ok(seq)) => {
                assert_eq!(board, open.id);
                open_seqs.push(seq);
            }
        }
    }
    open_seqs.sort_unstable();
    assert_eq!(
        open_seqs,
        (1..=6).collect::<Vec<i64>>(),
        "gap-free on the open board"
    );
    let head = |h: v1::BoardHeadsResponse| h.heads[&b.id];
    let heads = gateway
        .board_heads(v1::BoardHeadsRequest {
            board_ids: vec![b.id],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(head(heads), 5, "nothing committed on the archived board");

    owner.update_board(change(None, Some(false))).await.unwrap();
    editor
        .create_task(create_req(b.id))
        .await
        .expect("writable again");

    // Deleted: owners only; everything goes; the final event is published.
    let (c, _) = code(
        editor
            .delete_board(v1::DeleteBoardRequest { id: b.id })
            .await,
    );
    assert_eq!(c, Code::PermissionDenied);
    let seq = owner
        .delete_board(v1::DeleteBoardRequest { id: b.id })
        .await
        .unwrap()
        .into_inner()
        .seq;
    assert_eq!(seq, 8);
    let last = loop {
        let (subject, body) = next_event(&mut sub).await;
        if body["board_id"] == b.id && subject.ends_with(".board_deleted") {
            break body;
        }
    };
    assert_eq!(
        (last["seq"].as_i64(), last["type"].as_str()),
        (Some(8), Some("board_deleted"))
    );
    let (c, _) = code(owner.get_board(v1::GetBoardRequest { id: b.id }).await);
    assert_eq!(c, Code::NotFound);
    let (c, _) = code(owner.get_task(v1::GetTaskRequest { id: task.id }).await);
    assert_eq!(c, Code::NotFound);
    let events = gateway
        .list_events(v1::ListEventsRequest {
            board_id: b.id,
            after_seq: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<(i64, &str, i64)> = events
        .events
        .iter()
        .map(|e| (e.seq, e.kind.as_str(), e.actor))
        .collect();
    assert_eq!(kinds, vec![(8, "board_deleted", 60)]);
    let db = t.db().await;
    for table in ["tasks", "events WHERE seq < 8 AND", "board_members"] {
        let sql = if table.ends_with("AND") {
            format!("SELECT count(*) FROM {table} board_id = $1")
        } else {
            format!("SELECT count(*) FROM {table} WHERE board_id = $1")
        };
        let n: i64 = db.query_one(&sql, &[&b.id]).await.unwrap().get(0);
        assert_eq!(n, 0, "{table}");
    }
    // Nothing left to publish; the id is not reused and takes no task.
    assert!(
        taskboard_tasks::testing::eventually(WAIT, || async {
            db.query_one(
                "SELECT published_seq FROM outbox_cursor WHERE board_id = $1",
                &[&b.id],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 8)
            .unwrap_or(false)
        })
        .await
    );
    let (c, _) = code(gateway.create_task(create_req(b.id)).await);
    assert_eq!(c, Code::FailedPrecondition);
    let (c, _) = code(
        owner
            .delete_board(v1::DeleteBoardRequest { id: b.id })
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let fresh = new_board(&mut owner, "After").await;
    assert!(fresh.id > open.id);
}

/// The next message on `sub` other than a member change: its subject and JSON body.
async fn next_event(sub: &mut async_nats::Subscriber) -> (String, serde_json::Value) {
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("published in time")
            .unwrap();
        if !m.subject.ends_with(".member_changed") {
            let body = serde_json::from_slice(&m.payload).unwrap();
            return (m.subject.to_string(), body);
        }
    }
}

/// Assignee (a member), due date and manual position: set on create, changed by one update (one
/// event each), filtered and sorted on; bad values are refused with a reason.
#[tokio::test]
async fn tasks_have_an_assignee_a_due_date_and_a_manual_order() {
    use prost_types::Timestamp;
    let t = spawn_auth().await;
    let mut owner = user(&t, 80);
    let b = new_board(&mut owner, "Sprint").await.id;
    owner
        .set_member(v1::SetMemberRequest {
            board_id: b,
            user_id: 81,
            role: "editor".into(),
        })
        .await
        .unwrap();
    let day = |d: i64| Timestamp {
        seconds: 1_800_000_000 + d * 86_400,
        nanos: 0,
    };
    let create = |title: &str, assignee: i64, due: Option<Timestamp>| v1::CreateTaskRequest {
        board_id: b,
        title: title.into(),
        assignee,
        due_at: due,
        ..Default::default()
    };
    let mut made = Vec::new();
    for (title, assignee, due) in [
        ("a", 81, Some(day(3))),
        ("b", 0, Some(day(1))),
        ("c", 80, None),
    ] {
        let r = owner
            .create_task(create(title, assignee, due))
            .await
            .unwrap()
            .into_inner();
        made.push(r.task.unwrap());
    }
    assert_eq!((made[0].assignee, made[1].assignee), (81, 0));
    assert_eq!(made[0].due_at, Some(day(3)));
    assert!(
        made[2].position < made[1].position && made[1].position < made[0].position,
        "new tasks go on top: {:?}",
        made.iter().map(|t| t.position).collect::<Vec<_>>()
    );
    let (c, m) = code(owner.create_task(create("x", 99, None)).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("not a member"), "{m}");

    let list =
        |sort: &str, assignee: Option<i64>, due_before: Option<Timestamp>| v1::ListTasksRequest {
            board_id: b,
            sort: sort.into(),
            assignee,
            due_before,
            ..Default::default()
        };
    let titles = |r: v1::ListTasksResponse| -> Vec<String> {
        r.tasks.into_iter().map(|t| t.title).collect()
    };
    let ask = |req| {
        let mut c = user(&t, 80);
        async move { titles(c.list_tasks(req).await.unwrap().into_inner()) }
    };
    assert_eq!(ask(list("position", None, None)).await, ["c", "b", "a"]);
    assert_eq!(ask(list("due", None, None)).await, ["b", "a", "c"]);
    assert_eq!(ask(list("", Some(81), None)).await, ["a"]);
    assert_eq!(ask(list("", Some(0), None)).await, ["b"]);
    assert_eq!(ask(list("due", None, Some(day(2)))).await, ["b"]);

    // A move is one update and one event; so is unassigning and clearing the due date.
    let (first, second) = (made[2].position, made[1].position);
    let moved = owner
        .update_task(v1::UpdateTaskRequest {
            id: made[0].id,
            position: Some((first + second) / 2.0),
            assignee: Some(0),
            clear_due_at: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let task = moved.task.unwrap();
    assert_eq!((task.assignee, task.due_at, task.version), (0, None, 2));
    assert_eq!(ask(list("position", None, None)).await, ["c", "a", "b"]);
    let events = owner
        .list_events(v1::ListEventsRequest {
            board_id: b,
            after_seq: moved.seq - 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&events[0].payload).unwrap();
    assert_eq!(body["task"]["assignee"], serde_json::Value::Null);
    assert_eq!(body["task"]["due_at"], serde_json::Value::Null);
    assert_eq!(body["task"]["position"], (first + second) / 2.0);
    let set_due = owner
        .update_task(v1::UpdateTaskRequest {
            id: made[2].id,
            due_at: Some(day(5)),
            assignee: Some(81),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!((set_due.due_at, set_due.assignee), (Some(day(5)), 81));

    // Bad input.
    let bad = [
        v1::UpdateTaskRequest {
            id: made[0].id,
            due_at: Some(day(1)),
            clear_due_at: true,
            ..Default::default()
        },
        v1::UpdateTaskRequest {
            id: made[0].id,
            position: Some(f64::NAN),
            ..Default::default()
        },
        v1::UpdateTaskRequest {
            id: made[0].id,
            assignee: Some(-3),
            ..Default::default()
        },
        v1::UpdateTaskRequest {
            id: made[0].id,
            assignee: Some(99),
            ..Default::default()
        },
        v1::UpdateTaskRequest {
            id: made[0].id,
            due_at: Some(Timestamp {
                seconds: -70_000_000_000,
                nanos: 0,
            }),
            ..Default::default()
        },
    ];
    for req in bad {
        let what = format!("{req:?}");
        let (c, _) = code(owner.update_task(req).await);
        assert_eq!(c, Code::InvalidArgument, "{what}");
    }
    let (c, m) = code(owner.list_tasks(list("priority", None, None)).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
}

/// A group commit's plain creates run as one statement: each answer is its own task and event (as
/// a lone create would answer), every board's seqs stay gap-free, a create its caller may not
/// make is refused alone, and the rest of the batch (an idempotent create, an update) commits in
/// the same transaction.
#[tokio::test]
async fn creates_sharing_a_commit_each_get_their_own_task_and_event() {
    use std::time::Duration;
    let t = spawn_auth().await;
    let mut owner = user(&t, 70);
    let a = new_board(&mut owner, "A").await;
    let b = new_board(&mut owner, "B").await;
    let c = new_board(&mut user(&t, 71), "C").await;
    let first = owner
        .create_task(create_req(a.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.seq, 1);
    let before = metric(&t, "taskboard_write_multi_row_creates_total").await;

    let blocker = t.hold_board(a.id).await;
    // The first create waits for the lock alone inside its commit; the rest queue behind it.
    let send = |r: v1::CreateTaskRequest| {
        let mut c = user(&t, 70);
        tokio::spawn(async move { c.create_task(r).await.map(|r| r.into_inner()) })
    };
    let lead = send(create_req(a.id));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let due = prost_types::Timestamp {
        seconds: 1_900_000_000,
        nanos: 0,
    };
    let requests: Vec<v1::CreateTaskRequest> = (0..10)
        .map(|i| v1::CreateTaskRequest {
            board_id: if i % 2 == 0 { a.id } else { b.id },
            title: format!("task {i}"),
            description: format!("about {i} & <more>"),
            due_at: (i % 3 == 0).then_some(due),
            position: (i % 4 == 0).then_some(f64::from(i) + 0.5),
            assignee: if i % 5 == 0 { 70 } else { 0 },
            ..create_req(0)
        })
        .collect();
    let mut calls: Vec<_> = requests.iter().take(5).cloned().map(send).collect();
    let refused: Vec<_> = (0..2).map(|_| send(create_req(c.id))).collect();
    let keyed = send(v1::CreateTaskRequest {
        idempotency_key: Some("k1".into()),
        ..create_req(b.id)
    });
    let mut u = user(&t, 70);
    let update = tokio::spawn(async move {
        u.update_task(v1::UpdateTaskRequest {
            id: first.task.unwrap().id,
            title: Some("renamed".into()),
            ..Default::default()
        })
        .await
    });
    calls.extend(requests.iter().skip(5).cloned().map(send));
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.batch_execute("COMMIT").await.unwrap();

    assert_eq!(lead.await.unwrap().expect("lead").seq, 2);
    for r in refused {
        let e = r.await.unwrap().expect_err("not a member of C");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let keyed = keyed.await.unwrap().expect("idempotent create");
    let updated = update.await.unwrap().expect("update").into_inner();
    let db = t.db().await;
    let mut seqs = std::collections::HashMap::<i64, Vec<i64>>::new();
    seqs.entry(b.id).or_default().push(keyed.seq);
    seqs.entry(a.id).or_default().push(updated.seq);
    for (req, call) in requests.iter().zip(calls) {
        let r = call.await.unwrap().expect("create");
        let task = r.task.clone().unwrap();
        let wanted = (
            req.board_id,
            req.title.as_str(),
            req.description.as_str(),
            req.due_at,
            req.position,
            req.assignee,
            task.created_by,
        );
        assert_eq!(
            (
                task.board_id,
                task.title.as_str(),
                task.description.as_str(),
                task.due_at,
                req.position.map(|_| task.position),
                task.assignee,
                70
            ),
            wanted
        );
        let stored = owner
            .get_task(v1::GetTaskRequest { id: task.id })
            .await
            .unwrap()
            .into_inner()
            .task;
        assert_eq!(stored.as_ref(), Some(&task), "the answer is the stored row");
        let e = db
            .query_one(
                "SELECT board_id, seq, actor, payload FROM events WHERE task_id = $1",
                &[&task.id],
            )
            .await
            .unwrap();
        assert_eq!(
            (e.get::<_, i64>(0), e.get::<_, i64>(1), e.get::<_, i64>(2)),
            (task.board_id, r.seq, 70),
            "its own event"
        );
        let payload: serde_json::Value = serde_json::from_str(e.get(3)).unwrap();
        assert_eq!(payload["seq"], r.seq);
        assert_eq!(payload["task"]["id"], task.id);
        assert_eq!(payload["task"]["title"], req.title);
        assert_eq!(payload["task"]["description"], req.description);
        assert_eq!(payload["task"]["position"], task.position);
        assert_eq!(
            payload["task"]["due_at"],
            if req.due_at.is_some() {
                serde_json::json!("2030-03-17T17:46:40.000000Z")
            } else {
                serde_json::Value::Null
            }
        );
        seqs.entry(task.board_id).or_default().push(r.seq);
    }
    for s in seqs.values_mut() {
        s.sort_unstable();
    }
    // A: after the first create and the lead, five creates and the update; B: five creates and
    // the keyed one.
    assert_eq!(seqs[&a.id], (3..=8).collect::<Vec<_>>());
    assert_eq!(seqs[&b.id], (1..=6).collect::<Vec<_>>());
    let commits: i64 = db
        .query_one(
            "SELECT count(DISTINCT created_at) FROM events \
             WHERE (board_id = $1 AND seq > 2) OR board_id = $2",
            &[&a.id, &b.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        commits, 1,
        "everything queued behind the lead committed together"
    );
    assert_eq!(
        metric(&t, "taskboard_write_multi_row_creates_total").await - before,
        10.0,
        "the ten plain creates went as one statement"
    );
}

/// An item of CreateTasks made for `user`.
fn item(board: i64, title: &str, user: i64, key: Option<&str>) -> v1::CreateTasksItem {
    v1::CreateTasksItem {
        request: Some(v1::CreateTaskRequest {
            board_id: board,
            title: title.into(),
            created_by: 99,
            idempotency_key: key.map(str::to_owned),
            ..Default::default()
        }),
        user,
        ..Default::default()
    }
}

/// An item's outcome: the created task and whether it was replayed, or the error.
fn outcome(r: &v1::CreateTasksResult) -> Result<(&v1::CreateTaskResponse, bool), (Code, &str)> {
    match r.outcome.as_ref().expect("every item has an outcome") {
        v1::create_tasks_result::Outcome::Created(c) => Ok((c, r.replayed)),
        v1::create_tasks_result::Outcome::Error(e) => Err((Code::from_i32(e.code), &e.message)),
    }
}

#[tokio::test]
async fn create_tasks_answers_each_item_as_create_task_would_for_its_user() {
    let t = spawn_auth().await;
    let mut alice = user(&t, 1);
    let mut gateway = client(&t, Some(TOKEN), None, false);
    let b = new_board(&mut alice, "Alice's").await;
    // What the single call answers a non-member, for comparison.
    let single = code(user(&t, 2).create_task(create_req(b.id)).await);

    let mut service = item(b.id, "by the service role", 2, None);
    service.service_role = true;
    let items = vec![
        item(b.id, "first", 1, None),
        item(b.id, "", 1, None),
        item(b.id, "by a non-member", 2, None),
        item(b.id, "keyed", 1, Some("key-1")),
        service,
        item(b.id, "negative user", -1, None),
        item(b.id, "by the token holder", 0, None),
        v1::CreateTasksItem::default(),
    ];
    let results = gateway
        .create_tasks(v1::CreateTasksRequest { items })
        .await
        .expect("create tasks")
        .into_inner()
        .results;
    assert_eq!(results.len(), 8, "one result per item");
    let ok: Vec<_> = results.iter().map(outcome).collect();
    let mut seqs = Vec::new();
    for (i, author) in [(0, 1), (3, 1), (4, 2), (6, 0)] {
        let (c, replayed) = ok[i].as_ref().unwrap_or_else(|e| panic!("item {i}: {e:?}"));
        let task = c.task.as_ref().expect("task");
        assert!(!replayed, "item {i}");
        assert_eq!(task.board_id, b.id);
        // The author is the item's user (the body's created_by only without one).
        assert_eq!(
            task.created_by,
            if author == 0 { 99 } else { author },
            "item {i}"
        );
        seqs.push(c.seq);
    }
    let titles: Vec<_> = [0, 3, 4, 6]
        .iter()
        .map(|i| {
            ok[*i]
                .as_ref()
                .unwrap()
                .0
                .task
                .as_ref()
                .unwrap()
                .title
                .clone()
        })
        .collect();
    assert_eq!(
        titles,
        [
            "first",
            "keyed",
            "by the service role",
            "by the token holder"
        ]
    );
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3, 4], "gap-free, one seq each");
    assert_eq!(ok[1].unwrap_err().0, Code::InvalidArgument, "empty title");
    let (c, m) = ok[2].unwrap_err();
    assert_eq!((c, m.to_owned()), single, "as the single call answers");
    assert_eq!(ok[5].unwrap_err().0, Code::InvalidArgument, "{:?}", ok[5]);
    assert_eq!(ok[7].unwrap_err().0, Code::InvalidArgument, "no request");

    // A retry of the keyed item: the same task, replayed; the key with another title: refused.
    let keyed = ok[3].unwrap().0.clone();
    let again = gateway
        .create_tasks(v1::CreateTasksRequest {
            items: vec![
                item(b.id, "keyed", 1, Some("key-1")),
                item(b.id, "another", 1, Some("key-1")),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let (c, replayed) = outcome(&again[0]).unwrap();
    assert!(replayed);
    assert_eq!(c, &keyed);
    assert_eq!(outcome(&again[1]).unwrap_err().0, Code::AlreadyExists);

    // Only the token holder calling for itself may vouch for users.
    for mut c in [user(&t, 1), client(&t, Some(TOKEN), Some(1), true)] {
        let (refused, m) = code(
            c.create_tasks(v1::CreateTasksRequest {
                items: vec![item(b.id, "x", 1, None)],
            })
            .await,
        );
        assert_eq!(refused, Code::PermissionDenied, "{m}");
    }
    let (refused, _) = code(
        client(&t, None, None, false)
            .create_tasks(v1::CreateTasksRequest {
                items: vec![item(b.id, "x", 1, None)],
            })
            .await,
    );
    assert_eq!(refused, Code::Unauthenticated);
    let (refused, m) = code(
        gateway
            .create_tasks(v1::CreateTasksRequest {
                items: vec![item(b.id, "x", 1, None); 1001],
            })
            .await,
    );
    assert_eq!(refused, Code::InvalidArgument, "{m}");
    let head = gateway
        .board_heads(v1::BoardHeadsRequest {
            board_ids: vec![b.id],
        })
        .await
        .unwrap()
        .into_inner()
        .heads[&b.id];
    assert_eq!(head, 4, "refused calls made nothing");
}

/// An identity provider's string subject gets one user id per (issuer, subject), made on first
/// sight, above every numeric subject; only the token holder may ask, and bad input is refused.
#[tokio::test]
async fn string_subjects_map_to_one_user_id_per_issuer() {
    let t = spawn_auth().await;
    let mut gateway = client(&t, Some(TOKEN), None, false);
    let resolve = |issuer: &str, subject: &str| v1::ResolveUserRequest {
        issuer: issuer.into(),
        subject: subject.into(),
    };
    let kc = "https://id.example/realms/acme";
    let first = gateway
        .resolve_user(resolve(kc, "a4f1c2e0-alice"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    assert!(first.user_id >= 1_000_000_000_000, "{}", first.user_id);
    let again = gateway
        .resolve_user(resolve(kc, "a4f1c2e0-alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.user_id, again.created), (first.user_id, false));
    let other_issuer = gateway
        .resolve_user(resolve("https://other.example", "a4f1c2e0-alice"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(other_issuer.user_id, first.user_id);
    // Concurrent first sights of one subject agree on its id.
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut c = client(&t, Some(TOKEN), None, false);
        calls.push(tokio::spawn(async move {
            c.resolve_user(v1::ResolveUserRequest {
                issuer: "https://race.example".into(),
                subject: "bob@example.com".into(),
            })
            .await
            .unwrap()
            .into_inner()
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for c in calls {
        let r = c.await.unwrap();
        ids.push(r.user_id);
        created += usize::from(r.created);
    }
    ids.dedup();
    assert_eq!((ids.len(), created), (1, 1), "{ids:?}");

    let (c, m) = code(user(&t, 5).resolve_user(resolve(kc, "x")).await);
    assert_eq!(c, Code::PermissionDenied, "{m}");
    let (c, m) = code(gateway.resolve_user(resolve(kc, "")).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let (c, _) = code(gateway.resolve_user(resolve(kc, &"x".repeat(1001))).await);
    assert_eq!(c, Code::InvalidArgument);
}
