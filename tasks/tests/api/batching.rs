//! Group commit: changes that arrive while a commit is in flight share the next transaction, and
//! one change's error never fails the others.
use std::collections::HashMap;
use std::time::Duration;

use taskboard_proto::v1;
use tonic::Code;

use crate::helpers::*;

fn create(board: i64, title: String) -> v1::CreateTaskRequest {
    v1::CreateTaskRequest {
        board_id: board,
        title,
        description: String::new(),
        created_by: 1,
        idempotency_key: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn changes_queued_behind_a_commit_share_the_next_one() {
    let mut t = spawn().await;
    t.create(1, "first").await;
    let blocker = t.hold_board(1).await;
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let mut c = t.client.clone();
            tokio::spawn(async move { c.create_task(create(1, format!("t{i}"))).await })
        })
        .collect();
    // The first waits for the lock inside its commit; the rest queue behind it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let mut seqs = Vec::new();
    for c in calls {
        seqs.push(c.await.unwrap().expect("create").into_inner().seq);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (2..=31).collect::<Vec<i64>>(),
        "gap-free, one seq each"
    );

    // Events of one transaction share its start time: most of the 30 committed together.
    let db = t.db().await;
    let mut per_commit: HashMap<String, usize> = HashMap::new();
    for r in db
        .query(
            "SELECT created_at::text FROM events WHERE board_id = 1 AND seq > 1",
            &[],
        )
        .await
        .unwrap()
    {
        *per_commit.entry(r.get(0)).or_default() += 1;
    }
    let largest = per_commit.values().max().copied().unwrap_or(0);
    assert!(
        largest >= 20,
        "30 queued creates took {} commits (largest {largest})",
        per_commit.len()
    );
}

#[tokio::test]
async fn one_change_failing_in_a_batch_fails_only_itself() {
    let mut t = spawn().await;
    let (doomed, _) = t.create(1, "version at the top of its range").await;
    let db = t.db().await;
    // Its next update overflows `version`: an SQL error inside the shared transaction.
    db.execute(
        "UPDATE tasks SET version = 9223372036854775807 WHERE id = $1",
        &[&doomed.id],
    )
    .await
    .unwrap();
    let blocker = t.hold_board(1).await;
    let spawn_create = |i: i32| {
        let mut c = t.client.clone();
        tokio::spawn(async move { c.create_task(create(1, format!("ok{i}"))).await })
    };
    let mut creates: Vec<_> = (0..5).map(spawn_create).collect();
    let mut c = t.client.clone();
    let id = doomed.id;
    let overflow = tokio::spawn(async move {
        c.update_task(v1::UpdateTaskRequest {
            id,
            title: Some("overflows".into()),
            description: None,
            completed: None,
            expected_version: None,
            ..Default::default()
        })
        .await
    });
    let mut c = t.client.clone();
    let missing = tokio::spawn(async move {
        c.delete_task(v1::DeleteTaskRequest {
            id: 999_999,
            expected_version: None,
        })
        .await
    });
    creates.extend((5..10).map(spawn_create));
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.batch_execute("COMMIT").await.unwrap();

    let mut seqs = Vec::new();
    for c in creates {
        seqs.push(c.await.unwrap().expect("create").into_inner().seq);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (2..=11).collect::<Vec<i64>>(),
        "every create committed"
    );
    let e = overflow
        .await
        .unwrap()
        .expect_err("the overflowing update fails");
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    let e = missing.await.unwrap().expect_err("no such task");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let r = db
        .query_one(
            "SELECT title, version FROM tasks WHERE id = $1",
            &[&doomed.id],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "version at the top of its range");
    let events: i64 = db
        .query_one(
            "SELECT count(*) FROM events WHERE task_id = $1",
            &[&doomed.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 1, "only its creation");
}

#[tokio::test]
async fn with_write_batch_max_1_every_change_commits_alone() {
    // The setting that turns group commit off, and the check the first test relies on.
    let mut t = spawn_with(|c| c.write_batch_max = 1).await;
    t.create(1, "first").await;
    let blocker = t.hold_board(1).await;
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let mut c = t.client.clone();
            tokio::spawn(async move { c.create_task(create(1, format!("t{i}"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    for c in calls {
        c.await.unwrap().expect("create");
    }
    let commits: i64 = t
        .db()
        .await
        .query_one(
            "SELECT count(DISTINCT created_at) FROM events WHERE board_id = 1 AND seq > 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(commits, 5);
}

#[tokio::test]
async fn creates_on_boards_new_to_the_log_share_a_commit_and_start_at_seq_1() {
    // Without authentication a board exists once something is created on it; a batch's one
    // statement starts each new board's log at 1, numbered in arrival order.
    let mut t = spawn().await;
    t.create(1, "first").await;
    let blocker = t.hold_board(1).await;
    let lead = {
        let mut c = t.client.clone();
        tokio::spawn(async move { c.create_task(create(1, "lead".into())).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls: Vec<_> = (0..9)
        .map(|i| {
            let mut c = t.client.clone();
            let board = 50 + i64::from(i % 3);
            tokio::spawn(async move {
                let r = c.create_task(create(board, format!("t{i}"))).await;
                (board, r.map(|r| r.into_inner().seq))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    lead.await.unwrap().expect("lead");
    let mut seqs: HashMap<i64, Vec<i64>> = HashMap::new();
    for c in calls {
        let (board, seq) = c.await.unwrap();
        seqs.entry(board).or_default().push(seq.expect("create"));
    }
    for b in 50..53 {
        let s = seqs.get_mut(&b).unwrap();
        s.sort_unstable();
        assert_eq!(*s, vec![1, 2, 3], "board {b}");
    }
    let heads: Vec<i64> = t
        .db()
        .await
        .query(
            "SELECT last_seq FROM boards WHERE id BETWEEN 50 AND 52 ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(heads, vec![3, 3, 3]);
}
