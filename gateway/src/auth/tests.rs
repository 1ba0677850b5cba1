use super::*;

const SECRET: &str = "a-development-secret-of-32-chars!";

fn claims(sub: &str, exp_in: i64) -> Claims {
    Claims {
        sub: sub.into(),
        exp: (now() as i64 + exp_in) as u64,
        nbf: None,
        iat: Some(now()),
        aud: Some("taskboard".into()),
        iss: None,
        roles: Vec::new(),
    }
}

fn verifier() -> Arc<Verifier> {
    Verifier::new(&KeySource::Secret(SECRET.into()), "taskboard", None, 0).unwrap()
}

#[test]
fn a_valid_token_names_its_user_and_roles() {
    let v = verifier();
    let t = mint_hs256(SECRET, &claims("42", 60)).unwrap();
    let p = v.verify(&t).unwrap();
    assert_eq!((p.user, p.service), (42, false));
    let mut c = claims("7", 60);
    c.roles = vec!["service".into()];
    assert!(v.verify(&mint_hs256(SECRET, &c).unwrap()).unwrap().service);
}

#[test]
fn bad_tokens_are_refused_with_the_reason() {
    let v = verifier();
    let expired = mint_hs256(SECRET, &claims("1", -120)).unwrap();
    assert!(v.verify(&expired).unwrap_err().contains("expired"));
    let other = mint_hs256("another-secret-that-is-32-chars-long", &claims("1", 60)).unwrap();
    assert!(v.verify(&other).unwrap_err().contains("signature"));
    let mut c = claims("1", 60);
    c.aud = Some("elsewhere".into());
    assert!(v
        .verify(&mint_hs256(SECRET, &c).unwrap())
        .unwrap_err()
        .contains("audience"));
    c.aud = None;
    assert!(v
        .verify(&mint_hs256(SECRET, &c).unwrap())
        .unwrap_err()
        .contains("aud"));
    let mut c = claims("1", 60);
    c.nbf = Some(now() + 3600);
    assert!(v
        .verify(&mint_hs256(SECRET, &c).unwrap())
        .unwrap_err()
        .contains("nbf"));
    let alice = mint_hs256(SECRET, &claims("alice", 60)).unwrap();
    assert!(v.verify(&alice).unwrap_err().contains("user id"));
    assert!(v.verify("not.a.token").unwrap_err().contains("malformed"));
    // "none" and other algorithms are never accepted for an HMAC key.
    let unsigned = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
        expired.split('.').nth(1).unwrap()
    );
    assert!(v.verify(&unsigned).is_err());
}

#[test]
fn issuer_is_required_when_configured() {
    let v = Verifier::new(
        &KeySource::Secret(SECRET.into()),
        "taskboard",
        Some("https://id.example"),
        0,
    )
    .unwrap();
    let mut c = claims("1", 60);
    assert!(v
        .verify(&mint_hs256(SECRET, &c).unwrap())
        .unwrap_err()
        .contains("iss"));
    c.iss = Some("https://id.example".into());
    assert!(v.verify(&mint_hs256(SECRET, &c).unwrap()).is_ok());
}

#[test]
fn tokens_come_from_the_header_or_the_websocket_subprotocol() {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("bearer abc"),
    );
    assert_eq!(bearer(&h), Some("abc"));
    let mut h = HeaderMap::new();
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("taskboard, bearer.x.y.z"),
    );
    assert_eq!(ws_token(&h), Some("x.y.z"));
    assert_eq!(bearer(&h), None);
    let e = verifier().authenticate(&HeaderMap::new()).unwrap_err();
    assert_eq!(e.status, 401);
}

#[test]
fn a_short_secret_is_a_configuration_error() {
    assert!(Verifier::new(&KeySource::Secret("short".into()), "a", None, 0).is_err());
}
