//! In-band token refresh: a client sends `{"type":"auth","token":"<jwt>"}` on its open socket
//! and, when the token checks out and names the same principal, the socket lives on until the new
//! token's `exp` instead of closing with 1008 at the old one.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::frame::text_frame;
use crate::auth::subjects::Subjects;
use crate::auth::{Principal, Verifier};

/// Longest a refresh may take (a key refetch for a new `kid`, a subject lookup) before it is
/// refused; the session delivers nothing meanwhile.
const VERIFY_DEADLINE: Duration = Duration::from_secs(2);
/// Least time between two refreshes checked on one socket (each costs a signature check).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What a socket needs to check a refresh: the keys, the subject mapping, and whom it was
/// opened for.
pub struct Reauth {
    pub verifier: Arc<Verifier>,
    pub subjects: Arc<Subjects>,
    /// A refresh must name this user with this role.
    pub principal: Principal,
    /// When the last refresh was checked.
    last: Option<Instant>,
}

/// A client message this module answers.
#[derive(Deserialize)]
struct Message {
    #[serde(rename = "type")]
    kind: String,
    token: Option<String>,
}

/// What the gateway answers (a text message on the socket).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply<'a> {
    /// The new token is in force: the socket is closed (1008) when `expires_at` passes.
    AuthOk { expires_at: u64 },
    /// The token was not taken; the socket keeps its current expiry.
    AuthError { message: &'a str },
}

/// The outcome of a client's text message.
#[derive(Debug)]
pub enum Outcome {
    /// Not an `auth` message: ignored, as every other client message is.
    Ignored,
    /// Accepted: the session now ends at `exp` (seconds since the epoch); `reply` says so.
    Renewed { expires_at: u64, reply: Bytes },
    /// Refused: `reply` says why; the session keeps its deadline.
    Refused(Bytes),
    /// The token names someone else (or another role): the session is closed with 1008.
    OtherPrincipal(&'static str),
}

impl Reauth {
    pub fn new(verifier: Arc<Verifier>, subjects: Arc<Subjects>, principal: Principal) -> Self {
        Reauth {
            verifier,
            subjects,
            principal,
            last: None,
        }
    }
}

/// Answers a text message from the client, received at `now`; `reauth` is `None` when the
/// gateway checks no tokens (AUTH=off).
pub async fn handle(reauth: Option<&mut Reauth>, text: &[u8], now: Instant) -> Outcome {
    let token = match serde_json::from_slice::<Message>(text) {
        Ok(m) if m.kind == "auth" => m.token,
        _ => return Outcome::Ignored,
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return refused(
            "refused",
            "an auth message needs a token: {\"type\":\"auth\",\"token\":\"<jwt>\"}",
        );
    };
    let Some(r) = reauth else {
        return refused(
            "refused",
            "this gateway does not check tokens (AUTH=off); the socket does not expire",
        );
    };
    if r.last.is_some_and(|t| now < t + MIN_INTERVAL) {
        return refused("throttled", "at most one token refresh per second");
    }
    r.last = Some(now);
    let checked = tokio::time::timeout(
        VERIFY_DEADLINE,
        r.subjects.principal_of(&r.verifier, &token),
    )
    .await;
    let who = match checked {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let why = e.message.as_deref().unwrap_or(&e.error);
            return refused("refused", &format!("token refused: {why}"));
        }
        Err(_) => return refused(
            "refused",
            "the token could not be checked in time; the socket keeps its current expiry, retry",
        ),
    };
    if who.user != r.principal.user {
        crate::metrics::token_refresh("other_principal");
        return Outcome::OtherPrincipal("the refreshed token names another user");
    }
    if who.service != r.principal.service {
        crate::metrics::token_refresh("other_principal");
        return Outcome::OtherPrincipal("the refreshed token has another role");
    }
    crate::metrics::token_refresh("ok");
    r.principal.expires_at = who.expires_at;
    Outcome::Renewed {
        expires_at: who.expires_at,
        reply: reply(&Reply::AuthOk {
            expires_at: who.expires_at,
        }),
    }
}

/// The instant a token's `exp` (seconds since the epoch) passes.
pub fn deadline(exp: u64) -> Instant {
    let left = exp.saturating_sub(crate::auth::now());
    Instant::now() + Duration::from_secs(left)
}

fn refused(outcome: &'static str, message: &str) -> Outcome {
    crate::metrics::token_refresh(outcome);
    Outcome::Refused(reply(&Reply::AuthError { message }))
}

fn reply(r: &Reply<'_>) -> Bytes {
    // Serializing these two plain shapes cannot fail.
    text_frame(&serde_json::to_vec(r).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{mint_hs256, Claims, KeySource};

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

    fn token(sub: &str, exp: u64, roles: Vec<String>) -> String {
        let claims = Claims {
            sub: sub.into(),
            exp,
            nbf: None,
            iat: None,
            aud: Some("taskboard".into()),
            iss: None,
            roles,
        };
        mint_hs256(SECRET, &claims).unwrap()
    }

    fn reauth(user: i64, service: bool) -> Reauth {
        let verifier =
            Verifier::new(&KeySource::Secret(SECRET.into()), "taskboard", None, 0).unwrap();
        // Numeric subjects never reach the task service: a client of nothing will do.
        let tasks = crate::upstream::client::TasksClient::new(
            "http://127.0.0.1:1",
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        Reauth::new(
            verifier,
            Arc::new(Subjects::new(tasks)),
            Principal {
                user,
                service,
                expires_at: crate::auth::now() + 5,
            },
        )
    }

    fn text(o: &Outcome) -> String {
        let f = match o {
            Outcome::Renewed { reply, .. } | Outcome::Refused(reply) => reply,
            other => panic!("no reply: {other:?}"),
        };
        String::from_utf8(super::super::frame::payload(f).to_vec()).unwrap()
    }

    fn auth(t: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"type": "auth", "token": t})).unwrap()
    }

    #[tokio::test]
    async fn a_fresh_token_for_the_same_user_extends_the_socket() {
        let mut r = reauth(7, false);
        let exp = crate::auth::now() + 3600;
        let o = handle(
            Some(&mut r),
            &auth(&token("7", exp, vec![])),
            Instant::now(),
        )
        .await;
        assert!(matches!(o, Outcome::Renewed { expires_at, .. } if expires_at == exp));
        assert_eq!(
            text(&o),
            format!("{{\"type\":\"auth_ok\",\"expires_at\":{exp}}}")
        );
        assert_eq!(r.principal.expires_at, exp);
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_and_other_principals_end_the_socket() {
        let mut r = reauth(7, false);
        let exp = crate::auth::now() + 3600;
        let mut at = Instant::now();
        let o = handle(Some(&mut r), &auth("not.a.jwt"), at).await;
        assert!(
            text(&o).starts_with("{\"type\":\"auth_error\",\"message\":\"token refused: "),
            "{}",
            text(&o)
        );
        // A second attempt within the second is not even checked.
        let good = auth(&token("7", exp, vec![]));
        let o = handle(Some(&mut r), &good, at + MIN_INTERVAL / 2).await;
        assert!(
            text(&o).contains("at most one token refresh per second"),
            "{}",
            text(&o)
        );
        let mut later = || {
            at += MIN_INTERVAL;
            at
        };
        let expired = token("7", crate::auth::now() - 10, vec![]);
        let o = handle(Some(&mut r), &auth(&expired), later()).await;
        assert!(text(&o).contains("expired"), "{}", text(&o));
        let o = handle(Some(&mut r), &auth(&token("8", exp, vec![])), later()).await;
        assert!(matches!(o, Outcome::OtherPrincipal(m) if m.contains("another user")));
        let service = vec![taskboard_proto::auth::SERVICE_ROLE.to_owned()];
        let o = handle(Some(&mut r), &auth(&token("7", exp, service)), later()).await;
        assert!(matches!(o, Outcome::OtherPrincipal(m) if m.contains("another role")));
        assert!(r.principal.expires_at < exp, "nothing refused extended it");
        let o = handle(Some(&mut r), &good, later()).await;
        assert!(matches!(o, Outcome::Renewed { .. }), "{o:?}");
    }

    #[tokio::test]
    async fn other_messages_are_ignored_and_malformed_auth_is_explained() {
        let mut r = reauth(7, false);
        for m in [
            &b"hello"[..],
            b"{\"type\":\"ping\"}",
            b"[1,2]",
            b"{\"token\":\"x\"}",
        ] {
            let o = handle(Some(&mut r), m, Instant::now()).await;
            assert!(matches!(o, Outcome::Ignored));
        }
        let o = handle(Some(&mut r), b"{\"type\":\"auth\"}", Instant::now()).await;
        assert!(text(&o).contains("needs a token"), "{}", text(&o));
        let o = handle(None, &auth("x"), Instant::now()).await;
        assert!(text(&o).contains("AUTH=off"), "{}", text(&o));
    }
}
