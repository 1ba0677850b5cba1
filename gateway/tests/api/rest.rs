//! The REST contract: the original's routes, status codes and error strings, and its defects fixed.
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn health_and_ready_answer_get_and_head_and_refuse_other_methods() {
    let app = spawn_app().await;
    for path in ["/health", "/ready"] {
        for m in [
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            let r = app
                .http
                .request(m.clone(), app.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 405, "{m} {path}");
            assert_eq!(r.headers()["allow"], "GET, HEAD");
        }
    }
    for m in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = app
            .http
            .request(m.clone(), app.url("/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{m}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        if m != reqwest::Method::HEAD {
            assert_eq!(r.text().await.unwrap(), "OK");
        }
    }
}

#[tokio::test]
async fn task_crud_round_trip_with_the_original_status_codes() {
    let app = spawn_app().await;
    let r = app
        .http
        .post(app.url("/api/tasks"))
        .json(&json!({"board_id": 1, "title": "My first task", "description": "Testing the API", "created_by": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(r.headers()["taskboard-seq"], "1");
    let t: Value = r.json().await.unwrap();
    for k in [
        "id",
        "board_id",
        "title",
        "description",
        "completed",
        "created_by",
        "created_at",
        "updated_at",
    ] {
        assert!(t.get(k).is_some(), "missing {k} in {t}");
    }
    assert_eq!(t["title"], "My first task");
    assert_eq!(t["completed"], false);
    assert_eq!(t["created_by"], 100);
    let created_at = t["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created_at).is_ok(),
        "{created_at}"
    );
    assert!(created_at.ends_with('Z'));
    let id = t["id"].as_i64().unwrap();

    let got: Value = app
        .http
        .get(app.url(&format!("/api/tasks/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, t);

    let r = app.update(id, json!({"completed": true})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["taskboard-seq"], "2");
    let u: Value = r.json().await.unwrap();
    assert_eq!(u["completed"], true);
    assert_eq!(u["title"], "My first task", "absent fields stay unchanged");
    assert_eq!(u["version"], 2);

    let r = app
        .update(id, json!({"title": "Renamed", "description": null}))
        .await;
    let u: Value = r.json().await.unwrap();
    assert_eq!(u["title"], "Renamed");
    assert_eq!(u["description"], "Testing the API", "null means unchanged");
    assert_eq!(u["completed"], true);

    let r = app.delete(id).await;
    assert_eq!(r.status(), 204);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = app
        .http
        .get(app.url(&format!("/api/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn missing_tasks_are_404_on_get_put_and_delete() {
    let app = spawn_app().await;
    let get = app
        .http
        .get(app.url("/api/tasks/999999"))
        .send()
        .await
        .unwrap();
    let put = app.update(999999, json!({"completed": true})).await;
    let del = app.delete(999999).await;
    for r in [get, put, del] {
        assert_eq!(r.status(), 404);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"], "Task not found");
        assert_eq!(b["code"], "not_found");
    }
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

#[tokio::test]
async fn bad_input_gets_400_with_the_original_error_strings() {
    let app = spawn_app().await;
    let post = |body: String| {
        app.http
            .post(app.url("/api/tasks"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (s, b) = error_of(post("{not json".into()).await.unwrap()).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "Invalid request body")
    );
    assert!(b["message"].is_string());

    let (s, b) = error_of(
        post(r#"{"board_id":1,"title":"","created_by":1}"#.into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "Title is required")
    );

    // Title is checked first, as the original did.
    let (_, b) = error_of(post(r#"{"title":""}"#.into()).await.unwrap()).await;
    assert_eq!(b["error"], "Title is required");

    let (s, b) = error_of(
        post(r#"{"title":"x","created_by":1}"#.into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "Board ID is required")
    );

    let (s, b) = error_of(
        post(r#"{"title":"x","board_id":-4,"created_by":1}"#.into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"], "Board ID must be a positive integer");

    // The original accepts a missing created_by (it becomes 0); a negative one is refused.
    let r = post(r#"{"title":"x","board_id":1}"#.into()).await.unwrap();
    assert_eq!(r.status(), 201, "a missing created_by is accepted");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["created_by"], 0);
    let (s, _) = error_of(
        post(r#"{"title":"x","board_id":1,"created_by":-1}"#.into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400, "a negative created_by is refused");

    let (s, b) = error_of(
        post(r#"{"title":"x","board_id":"one","created_by":1}"#.into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "Invalid request body")
    );

    let long = "x".repeat(501);
    let (s, b) = error_of(
        post(json!({"title": long, "board_id": 1, "created_by": 1}).to_string())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(b["error"]
        .as_str()
        .unwrap()
        .starts_with("Title is too long"));

    for path in [
        "/api/tasks/abc",
        "/api/tasks/0",
        "/api/tasks/-1",
        "/api/tasks/",
    ] {
        let (s, b) = error_of(app.http.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(
            (s, b["error"].as_str().unwrap()),
            (400, "Invalid task ID"),
            "{path}"
        );
    }

    let (s, b) = error_of(app.update(1, json!({"completed": "yes"})).await).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (400, "Invalid request body")
    );
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = spawn_app().await;
    let big = format!(
        r#"{{"board_id":1,"created_by":1,"title":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let r = app
        .http
        .post(app.url("/api/tasks"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"], "Request body too large");
}

/// Sends `head` and `body` on a raw connection, writing everything before reading (as Python's
/// urllib does), then returns what the server answered.
async fn write_all_then_read(app: &TestApp, head: String, body: &[u8]) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A small send buffer: the client is still writing when the server answers.
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_send_buffer_size(16 * 1024)?;
    let mut s = sock.connect(app.addr).await?;
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))??;
    Ok(String::from_utf8_lossy(&out[..n]).into_owned())
}

#[tokio::test]
async fn a_client_that_writes_a_whole_oversized_body_before_reading_gets_the_413() {
    let app = spawn_app().await;
    let body = vec![b'x'; 900 * 1024];
    for framing in ["Content-Length: 921600", "Transfer-Encoding: chunked"] {
        let payload = if framing.starts_with("Transfer") {
            let mut c = format!("{:x}\r\n", body.len()).into_bytes();
            c.extend_from_slice(&body);
            c.extend_from_slice(b"\r\n0\r\n\r\n");
            c
        } else {
            body.clone()
        };
        let head = format!(
            "POST /api/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        );
        let answer = write_all_then_read(&app, head, &payload)
            .await
            .unwrap_or_else(|e| panic!("{framing}: no answer, {e}"));
        assert!(answer.starts_with("HTTP/1.1 413"), "{framing}: {answer}");
    }
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_within_the_body_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|_| {}, |g| g.body_timeout_ms = 500).await;
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /api/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"board",
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut out))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let answer = String::from_utf8_lossy(&out[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[tokio::test]
async fn unknown_paths_and_methods_are_404_and_405() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.http.patch(app.url("/api/tasks")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST, OPTIONS");
    let r = app.http.post(app.url("/api/tasks/1")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn options_is_a_cors_preflight() {
    let app = spawn_app().await;
    for path in ["/api/tasks", "/api/tasks/5"] {
        let r = app
            .http
            .request(reqwest::Method::OPTIONS, app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        assert_eq!(
            r.headers()["access-control-allow-methods"],
            "GET, POST, PUT, DELETE, OPTIONS"
        );
        assert_eq!(
            r.headers()["access-control-allow-headers"],
            "Content-Type, Authorization, If-Match, Idempotency-Key"
        );
        assert_eq!(
            r.headers()["access-control-expose-headers"],
            "ETag, Taskboard-Seq, Idempotent-Replayed"
        );
    }
}

#[tokio::test]
async fn cors_origins_restricts_api_and_websocket_origins() {
    let app = spawn_app_with(|_| {}, |g| g.cors_origins = "https://board.example".into()).await;
    let r = app
        .http
        .get(app.url("/api/tasks?board_id=1"))
        .header("origin", "https://board.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://board.example"
    );
    let r = app
        .http
        .get(app.url("/api/tasks?board_id=1"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = app
        .http
        .get(app.url("/ws"))
        .header("origin", "https://evil.example")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn list_is_newest_first_paged_stable_and_empty_is_an_array() {
    let app = spawn_app().await;
    let r: Value = app
        .http
        .get(app.url("/api/tasks?board_id=77"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"tasks": [], "total_count": 0, "page": 1, "page_size": 10, "head_seq": 0})
    );

    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(
            app.create(77, &format!("t{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    app.create(78, "other board").await;
    let first = ids[0];
    app.update(first, json!({"completed": true})).await;

    let mut seen = Vec::new();
    for page in 1..=3 {
        let r: Value = app
            .http
            .get(app.url(&format!("/api/tasks?board_id=77&page={page}&page_size=10")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["total_count"], 25);
        assert_eq!(r["page"], page);
        assert_eq!(r["head_seq"], 26, "25 creates and one update");
        seen.extend(
            r["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_i64().unwrap()),
        );
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(
        seen, newest_first,
        "pages cover every task once, newest first"
    );

    let r: Value = app
        .http
        .get(app.url("/api/tasks?board_id=77&completed=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["total_count"], 1);
    assert_eq!(r["tasks"][0]["id"], first);

    // Page size is capped at 100 and the answer says what was used.
    let r: Value = app
        .http
        .get(app.url("/api/tasks?board_id=77&page_size=1000&page=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (r["page"].as_i64(), r["page_size"].as_i64()),
        (Some(1), Some(100))
    );

    for q in [
        "board_id=x",
        "board_id=1&page=two",
        "board_id=1&completed=maybe",
        "",
    ] {
        let r = app
            .http
            .get(app.url(&format!("/api/tasks?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
    }
}

#[tokio::test]
async fn a_plain_get_of_ws_is_426() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/ws")).send().await.unwrap();
    assert_eq!(r.status(), 426);
    assert_eq!(r.headers()["upgrade"], "websocket");
}

#[tokio::test]
async fn if_match_with_a_stale_etag_is_412_and_changes_nothing() {
    let app = spawn_app().await;
    let post = app
        .http
        .post(app.url("/api/tasks"))
        .json(&json!({"board_id": 3, "title": "v1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        post.headers()["etag"],
        "\"1\"",
        "the version as a strong tag"
    );
    let task: Value = post.json().await.unwrap();
    let id = task["id"].as_i64().unwrap();
    let item = app.url(&format!("/api/tasks/{id}"));
    let put = |tag: &'static str, title: &'static str| {
        app.http
            .put(&item)
            .header("If-Match", tag)
            .json(&json!({ "title": title }))
            .send()
    };

    let r = put("\"1\"", "v2").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");

    // Someone else's change came first: 412, the current tag, nothing overwritten.
    let r = put("\"1\"", "lost update").await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let (_, body) = error_of(r).await;
    assert_eq!(body["code"], "precondition_failed");
    assert!(
        body["message"].as_str().unwrap().contains("version 2"),
        "{body}"
    );
    let r = app
        .http
        .delete(&item)
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let now = app.http.get(&item).send().await.unwrap();
    assert_eq!(now.headers()["etag"], "\"2\"");
    assert_eq!(now.json::<Value>().await.unwrap()["title"], "v2");

    // A weak tag never matches (strong comparison); nonsense is a 400 that says what to send.
    assert_eq!(put("W/\"2\"", "weak").await.unwrap().status(), 412);
    for bad in ["2", "\"two\"", "\"1\", \"2\"", "\"\""] {
        let r = put(bad, "bad").await.unwrap();
        let (status, body) = error_of(r).await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            body["message"].as_str().unwrap().contains("If-Match"),
            "{body}"
        );
    }
    // `*` (any version) and the current tag go through.
    assert_eq!(put("*", "v3").await.unwrap().status(), 200);
    let r = app
        .http
        .delete(&item)
        .header("If-Match", "\"3\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn a_post_retried_with_its_idempotency_key_gets_the_first_answer() {
    let app = spawn_app().await;
    let post = |title: &'static str, key: &'static str| {
        app.http
            .post(app.url("/api/tasks"))
            .header("Idempotency-Key", key)
            .json(&json!({"board_id": 6, "title": title}))
            .send()
    };
    let first = post("once", "order-17").await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let (seq, etag) = (
        first.headers()["taskboard-seq"].clone(),
        first.headers()["etag"].clone(),
    );
    let body: Value = first.json().await.unwrap();
    let again = post("once", "order-17").await.unwrap();
    assert_eq!(again.status(), 201, "the same status");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["taskboard-seq"], seq);
    assert_eq!(again.headers()["etag"], etag);
    assert_eq!(again.json::<Value>().await.unwrap(), body, "the same body");
    let list: Value = app
        .http
        .get(app.url("/api/tasks?board_id=6"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total_count"], 1, "one task");

    let (status, err) = error_of(post("different", "order-17").await.unwrap()).await;
    assert_eq!(status, 409);
    assert!(
        err["error"].as_str().unwrap().contains("Idempotency-Key"),
        "{err}"
    );
    let (status, err) = error_of(post("bad", "has space").await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().unwrap().contains("Idempotency key"),
        "{err}"
    );
}
