//! Against a real OpenID provider library nobody here wrote (npm's oauth2-mock-server, started
//! with node by the test): OIDC discovery, keys fetched over HTTP, a key rotation, a flood of
//! unknown `kid`s, the provider down, string subjects, a removed member's socket on a second
//! gateway, an in-band token refresh, and the key cache following the provider's Cache-Control.
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method as M;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::access::{event_then_close, me, second_gateway_with};
use crate::auth::{board_socket, call, create_as, new_board, SERVICE_TOKEN};
use crate::helpers::*;

/// The provider process; killed when dropped.
struct Provider {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    url: String,
}

impl Provider {
    async fn start() -> Provider {
        Provider::start_with(&[]).await
    }

    /// The provider with extra environment (`TLS_KEY_FILE` and `TLS_CERT_FILE`: over HTTPS).
    async fn start_with(env: &[(&str, &std::path::Path)]) -> Provider {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/idp");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/oauth2-mock-server")
                .exists(),
            "the provider is not installed: run `npm ci` in {dir} (scripts/test.sh does)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg("provider.mjs")
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the provider starts")
            .unwrap()
            .unwrap();
        let url = serde_json::from_str::<Value>(&first).unwrap()["url"]
            .as_str()
            .unwrap()
            .to_owned();
        Provider {
            child,
            stdin,
            lines,
            url,
        }
    }

    async fn cmd(&mut self, c: Value) -> Value {
        self.stdin
            .write_all(format!("{c}\n").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        v
    }

    async fn token(&mut self, sub: &str, kid: &str, expires_in: u64) -> String {
        let v = self
            .cmd(json!({"cmd": "token", "sub": sub, "kid": kid, "expires_in": expires_in}))
            .await;
        v["token"].as_str().unwrap().to_owned()
    }

    async fn jwks_hits(&mut self) -> u64 {
        self.cmd(json!({"cmd": "hits"})).await["jwks"]
            .as_u64()
            .unwrap()
    }
}

/// The gateway settings for the provider at `url`: its issuer alone, so keys come by discovery.
fn use_provider(g: &mut taskboard_gateway::Config, url: &str) {
    g.auth = "on".into();
    g.jwt_secret = None;
    g.jwt_issuer = Some(url.to_owned());
    g.jwt_leeway_secs = 0;
    g.service_token = Some(SERVICE_TOKEN.into());
}

/// `token` with its header swapped for one naming `kid` (its signature no longer matches).
fn with_kid(token: &str, kid: &str) -> String {
    let header = match kid {
        // base64url of {"alg":"RS256","kid":"nope"} and of {"alg":"RS256","kid":"k1"}.
        "nope" => "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vcGUifQ",
        "k1" => "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0",
        _ => unreachable!("no header for {kid}"),
    };
    let (_, rest) = token.split_once('.').unwrap();
    format!("{header}.{rest}")
}

async fn status(app: &TestApp, token: &str) -> (u16, Value) {
    call(app, M::GET, "/api/me", Some(token), None).await
}

#[tokio::test]
async fn tokens_of_a_real_provider_work_through_discovery_rotation_and_its_outage() {
    let mut idp = Provider::start().await;
    let url = idp.url.clone();
    let app = spawn_app_with(
        |t| {
            t.auth = "on".into();
            t.service_token = Some(SERVICE_TOKEN.into());
        },
        |g| use_provider(g, &url),
    )
    .await;
    let hits = idp.cmd(json!({"cmd": "hits"})).await;
    assert_eq!(
        (hits["discovery"].as_u64(), hits["jwks"].as_u64()),
        (Some(1), Some(1)),
        "{hits}"
    );

    // A string subject signed with the provider's RS256 key.
    let alice = idp.token("2c6f1d8a-alice", "k1", 3600).await;
    let a = me(&app, &alice).await;
    assert!(a >= 1_000_000_000_000, "{a}");

    // Rotation: new keys (ES256 and EdDSA) mid-run; their tokens are accepted after one refetch
    // caused by the unknown kid, and the old key's tokens still are.
    for (alg, kid) in [("ES256", "k2"), ("EdDSA", "k3")] {
        idp.cmd(json!({"cmd": "add_key", "alg": alg, "kid": kid}))
            .await;
    }
    let bob = idp.token("bob@example.com", "k2", 3600).await;
    let carol = idp.token("carol@example.com", "k3", 3600).await;
    let b = me(&app, &bob).await;
    assert_ne!(b, a);
    me(&app, &carol).await;
    assert_eq!(idp.jwks_hits().await, 2, "one refetch for the new kids");
    let short = idp.token("2c6f1d8a-alice", "k1", 2).await;
    assert_eq!(me(&app, &short).await, a, "the old key still verifies");

    // A flood of made-up kids: all refused, and the provider is not asked again (rate limit).
    for _ in 0..25 {
        let (s, e) = status(&app, &with_kid(&alice, "nope")).await;
        assert_eq!(s, 401, "{e}");
        assert!(
            e["message"].as_str().unwrap_or_default().contains("kid"),
            "{e}"
        );
    }
    assert_eq!(idp.jwks_hits().await, 2, "no fetch per bad kid");

    // A second gateway with the same provider: a removed member's socket closes there.
    let other = second_gateway_with(&app, |g| use_provider(g, &url)).await;
    let board = new_board(&app, &alice).await;
    let (s, body) = call(
        &app,
        M::PUT,
        &format!("/api/boards/{board}/members/{b}"),
        Some(&alice),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let mut ws = board_socket(other.addr, board, &bob).await;
    let t = Instant::now();
    let (s, _) = call(
        &app,
        M::DELETE,
        &format!("/api/boards/{board}/members/{b}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (code, reason) = event_then_close(&mut ws, "member_changed", t).await;
    assert_eq!(code, 4003, "{reason}");

    // A socket opened with a short RS256 token, refreshed in-band with an ES256 one for the
    // same string subject: it outlives the first token (checked after the outage below).
    let first = idp.token("2c6f1d8a-alice", "k1", 2).await;
    let mut mine = board_socket(other.addr, board, &first).await;
    let fresh = idp.token("2c6f1d8a-alice", "k2", 3600).await;
    let ok = mine.refresh(&fresh).await.unwrap();
    assert_eq!(ok["type"], "auth_ok", "{ok}");

    // The provider goes down: the keys held keep working; the short token expires and is refused.
    idp.child.kill().await.unwrap();
    assert_eq!(me(&app, &alice).await, a);
    assert_eq!(me(&other, &carol).await, me(&app, &carol).await);
    // exp is whole seconds and checked as "now > exp": one more second than the lifetime.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (s, e) = status(&app, &short).await;
    assert_eq!(s, 401, "{e}");
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
    create_as(&app, &alice, board, "still here").await;
    let e = mine.event().await.unwrap();
    assert_eq!(
        e["title"], "still here",
        "the refreshed socket is open: {e}"
    );
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_at_start_is_said_so_and_tokens_wait_for_it() {
    let mut cfg = taskboard_gateway::Config::for_addrs("127.0.0.1:1", "nats://127.0.0.1:1");
    use_provider(&mut cfg, "not a url");
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("JWT_ISSUER") && e.contains("not a url"), "{e}");
    cfg.jwt_jwks_url = Some("ftp://id.example/jwks".into());
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("JWT_JWKS_URL") && e.contains("http"), "{e}");

    // A provider that is down at start: the gateway runs, and says why tokens are refused.
    let app = spawn_app_with(
        |t| {
            t.auth = "on".into();
            t.service_token = Some(SERVICE_TOKEN.into());
        },
        |g| use_provider(g, "http://127.0.0.1:9"),
    )
    .await;
    let (s, e) = call(&app, M::GET, "/api/me", Some("a.b.c"), None).await;
    assert_eq!(s, 401, "{e}");
    let (s, e) = status(&app, &with_kid("eyJ.eyJzdWIiOiIxIn0.x", "k1")).await;
    assert_eq!(s, 401);
    assert!(
        e["message"].as_str().unwrap().contains("not loaded yet"),
        "{e}"
    );
    let m = scrape(app.metrics_addr).await;
    assert!(
        sample(
            &m,
            "taskboard_jwks_refreshes_total",
            &[("outcome", "error"), ("cause", "startup")]
        )
        .is_some_and(|n| n >= 1.0),
        "the failed fetch is counted"
    );
}

#[tokio::test]
async fn the_key_cache_follows_the_provider_s_cache_control() {
    let mut idp = Provider::start().await;
    idp.cmd(json!({"cmd": "cache_control", "value": "public, max-age=2"}))
        .await;
    let url = idp.url.clone();
    let app = spawn_app_with(
        |t| {
            t.auth = "on".into();
            t.service_token = Some(SERVICE_TOKEN.into());
        },
        |g| {
            use_provider(g, &url);
            g.jwt_jwks_min_fresh_secs = 1;
        },
    )
    .await;
    let old = idp.token("dave@example.com", "k1", 3600).await;
    let dave = me(&app, &old).await;

    // The provider rotates: k2 published, k1 withdrawn, and from now on its answers say
    // max-age=3600. No token names an unknown kid, so only the 2-second freshness of the keys
    // held brings the change.
    idp.cmd(json!({"cmd": "add_key", "alg": "ES256", "kid": "k2"}))
        .await;
    idp.cmd(json!({"cmd": "retire_key", "kid": "k1"})).await;
    idp.cmd(json!({"cmd": "cache_control", "value": "max-age=3600"}))
        .await;
    let t = Instant::now();
    let withdrawn = eventually(Duration::from_secs(6), || {
        let (app, old) = (&app, &old);
        async move { status(app, old).await.0 == 401 }
    })
    .await;
    assert!(
        withdrawn,
        "k1 still accepted {:?} after it was withdrawn",
        t.elapsed()
    );
    let new = idp.token("dave@example.com", "k2", 3600).await;
    assert_eq!(me(&app, &new).await, dave, "the same user, by the new key");

    // The set fetched said max-age=3600: nothing is fetched on schedule 3 s on.
    let hits = idp.jwks_hits().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        idp.jwks_hits().await,
        hits,
        "refetched despite max-age=3600"
    );
    assert_eq!(me(&app, &new).await, dave);
}

/// A private CA and a server certificate for 127.0.0.1 it signed, made with the openssl command
/// line in `dir`: (the server's key, its certificate, the CA's certificate).
fn private_ca(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &str| {
        let out = std::process::Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1";
    openssl(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -subj /CN=TestCA"
    ));
    openssl(&format!(
        "req {ec} -keyout key.pem -out server.csr -subj /CN=127.0.0.1"
    ));
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
         -extfile ext.cnf -out cert.pem",
    );
    ["key.pem", "cert.pem", "ca.pem"].map(|n| dir.join(n))
}

#[tokio::test]
async fn a_provider_over_https_is_trusted_through_its_ca_file_and_never_without_it() {
    let dir = std::env::temp_dir().join(format!("taskboard-idp-tls-{}", std::process::id()));
    let [key, cert, ca] = private_ca(&dir);
    let mut idp = Provider::start_with(&[("TLS_KEY_FILE", &key), ("TLS_CERT_FILE", &cert)]).await;
    assert!(idp.url.starts_with("https://127.0.0.1:"), "{}", idp.url);
    let url = idp.url.clone();
    let app = spawn_app_with(
        |t| {
            t.auth = "on".into();
            t.service_token = Some(SERVICE_TOKEN.into());
        },
        |g| {
            use_provider(g, &url);
            g.jwt_jwks_ca_file = Some(ca.clone());
        },
    )
    .await;
    let erin = idp.token("erin@example.com", "k1", 3600).await;
    assert!(me(&app, &erin).await >= 1_000_000_000_000);

    // Without the CA the certificate is not trusted: no keys, tokens refused, the failure counted.
    let other = second_gateway_with(&app, |g| use_provider(g, &url)).await;
    let (s, e) = status(&other, &erin).await;
    assert_eq!(s, 401, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("not loaded yet"),
        "{e}"
    );
    let failed = sample(
        &scrape(other.metrics_addr).await,
        "taskboard_jwks_refreshes_total",
        &[("outcome", "error"), ("cause", "startup")],
    );
    assert_eq!(failed, Some(1.0));

    // A CA file that holds no certificate is a configuration error.
    let mut cfg = taskboard_gateway::Config::for_addrs("127.0.0.1:1", "nats://127.0.0.1:1");
    use_provider(&mut cfg, &url);
    cfg.jwt_jwks_ca_file = Some(key.clone());
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("JWT_JWKS_CA_FILE"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
