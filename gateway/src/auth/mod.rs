//! Authentication: bearer JWTs (RFC 7519) verified against the configured keys — an HS256 secret
//! for development, an RS256/ES256 public key (PEM) or a JWKS file for production — and the
//! principal a valid token names.
pub mod ratelimit;
pub mod subjects;

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use taskboard_proto::auth::SERVICE_ROLE;

use crate::error::ApiError;

/// The WebSocket subprotocol a browser offers with its token (`bearer.<jwt>`), since it cannot set
/// headers on a WebSocket; the server answers with [`WS_PROTOCOL`].
pub const WS_TOKEN_PREFIX: &str = "bearer.";
/// The subprotocol the server selects when the client offers it.
pub const WS_PROTOCOL: &str = "taskboard";

/// Who a verified token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user id (the token's `sub`, a positive integer).
    pub user: i64,
    /// Holds the service role: sees and changes every board, may subscribe to all of them.
    pub service: bool,
    /// The token's `exp` (seconds since the epoch): a WebSocket is closed when it passes.
    pub expires_at: u64,
}

/// Numeric subjects below this are user ids themselves; ids of string subjects start here
/// (migration 0010 of the task service).
pub const MAPPED_IDS_FROM: i64 = 1_000_000_000_000;

/// Whom a verified token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A numeric `sub` below [`MAPPED_IDS_FROM`]: the user id itself.
    Id(i64),
    /// Any other `sub` (a UUID, an email), with the token's `iss` ("" without one): the task
    /// service maps it to a user id.
    Named { issuer: String, subject: String },
}

/// A verified token, before its subject is turned into a user id.
#[derive(Clone, Debug)]
pub struct Verified {
    pub subject: Subject,
    pub service: bool,
    pub expires_at: u64,
}

impl Verified {
    /// The principal, once the subject's user id is known.
    pub fn principal(&self, user: i64) -> Principal {
        Principal {
            user,
            service: self.service,
            expires_at: self.expires_at,
        }
    }
}

/// A token's claims: the registered ones the validation checks, and the roles.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// One verification key; `kid` matches the token header's (a JWKS may hold several).
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// An HMAC secret (HS256/384/512).
    Secret(String),
    /// A PEM public key: RSA (RS*/PS*) or EC (ES256/ES384).
    PublicKeyPem(Vec<u8>),
    /// A JSON Web Key Set document.
    Jwks(String),
}

/// Checks tokens. Cheap to share (`Arc`).
pub struct Verifier {
    keys: Vec<Key>,
}

impl Verifier {
    /// Builds a verifier accepting tokens for `audience` (and from `issuer`, when given).
    ///
    /// # Errors
    /// A key that does not parse, or a JWKS without usable keys.
    pub fn new(
        source: &KeySource,
        audience: &str,
        issuer: Option<&str>,
        leeway_secs: u64,
    ) -> Result<Arc<Self>, String> {
        let validation = |family: jsonwebtoken::AlgorithmFamily| {
            let mut v = Validation::new_for_family(family);
            v.leeway = leeway_secs;
            v.validate_nbf = true;
            v.set_audience(&[audience]);
            let mut required = vec!["exp", "sub", "aud"];
            if let Some(iss) = issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let keys = match source {
            KeySource::Secret(s) => {
                if s.len() < 32 {
                    return Err("JWT_SECRET must be at least 32 characters".into());
                }
                let key = DecodingKey::from_secret(s.as_bytes()).map_err(|e| e.to_string())?;
                vec![Key {
                    kid: None,
                    validation: validation(key.family()),
                    key,
                }]
            }
            KeySource::PublicKeyPem(pem) => {
                let key = DecodingKey::from_rsa_pem(pem)
                    .or_else(|_| DecodingKey::from_ec_pem(pem))
                    .or_else(|_| DecodingKey::from_ed_pem(pem))
                    .map_err(|e| format!("JWT_PUBLIC_KEY_FILE is not an RSA, EC or Ed25519 public key in PEM: {e}"))?;
                vec![Key {
                    kid: None,
                    validation: validation(key.family()),
                    key,
                }]
            }
            KeySource::Jwks(doc) => {
                let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(doc)
                    .map_err(|e| format!("JWT_JWKS_FILE is not a JWK set: {e}"))?;
                let keys: Vec<Key> = set
                    .keys
                    .iter()
                    .filter_map(|jwk| {
                        let key = DecodingKey::from_jwk(jwk).ok()?;
                        Some(Key {
                            kid: jwk.common.key_id.clone(),
                            validation: validation(key.family()),
                            key,
                        })
                    })
                    .collect();
                if keys.is_empty() {
                    return Err("JWT_JWKS_FILE holds no usable key".into());
                }
                keys
            }
        };
        Ok(Arc::new(Verifier { keys }))
    }

    /// Verifies `token` and names its principal, for tokens with a numeric subject.
    ///
    /// # Errors
    /// Why the token is not accepted, in words fit for the client; a string subject needs the
    /// task service ([`subjects::Subjects`]).
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let v = self.verify_token(token)?;
        match v.subject {
            Subject::Id(user) => Ok(v.principal(user)),
            Subject::Named { .. } => {
                Err("the token's sub must be a positive integer user id".to_owned())
            }
        }
    }

    /// Verifies `token`: its signature, `exp`, `nbf`, `aud` and `iss` (with the leeway).
    ///
    /// # Errors
    /// Why the token is not accepted, in words fit for the client.
    pub fn verify_token(&self, token: &str) -> Result<Verified, String> {
        let header = decode_header(token).map_err(|e| describe(e.kind()))?;
        let key = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .or_else(|| self.keys.iter().find(|k| k.kid.is_none())),
            None => self.keys.first(),
        }
        .ok_or_else(|| "no key for this token's kid".to_owned())?;
        let data =
            decode::<Claims>(token, &key.key, &key.validation).map_err(|e| describe(e.kind()))?;
        let c = data.claims;
        if c.sub.is_empty() || c.sub.len() > 1000 || c.sub.chars().any(char::is_control) {
            return Err(
                "the token's sub must be 1 to 1000 bytes without control characters".into(),
            );
        }
        let subject = match c.sub.parse::<i64>() {
            Ok(u) if u > 0 && u < MAPPED_IDS_FROM => Subject::Id(u),
            _ => Subject::Named {
                issuer: c.iss.unwrap_or_default(),
                subject: c.sub,
            },
        };
        Ok(Verified {
            subject,
            service: c.roles.iter().any(|r| r == SERVICE_ROLE),
            expires_at: c.exp,
        })
    }

    /// The principal of a request, from `Authorization: Bearer` or (for WebSockets) the
    /// `bearer.<jwt>` subprotocol.
    ///
    /// # Errors
    /// A 401 saying what is missing or wrong.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        self.verify(request_token(headers)?)
            .map_err(|m| unauthorized(&m))
    }
}

/// The bearer token of a request: `Authorization: Bearer` or the `bearer.<jwt>` subprotocol.
///
/// # Errors
/// A 401 when there is none.
pub fn request_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    bearer(headers)
        .or_else(|| ws_token(headers))
        .ok_or_else(|| unauthorized("a bearer token is required (Authorization: Bearer <JWT>)"))
}

impl Verifier {}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The token a browser offers as the `bearer.<jwt>` WebSocket subprotocol.
pub fn ws_token(headers: &HeaderMap) -> Option<&str> {
    offered_protocols(headers).find_map(|p| p.strip_prefix(WS_TOKEN_PREFIX))
}

/// Every subprotocol of `Sec-WebSocket-Protocol` (which may be repeated and comma-separated).
pub fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// 401 with the reason, and `WWW-Authenticate` as RFC 6750 asks.
pub fn unauthorized(reason: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Unauthorized")
        .with_message(reason)
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"taskboard\""),
        )
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "the token is for another audience (aud)".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer (iss)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token's algorithm is not accepted".into()
        }
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the token's {c} claim is malformed"),
        _ => "the token is malformed".into(),
    }
}

/// Signs an HS256 token for development and tests (`taskboard-token`).
///
/// # Errors
/// The secret cannot be used.
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, String> {
    let key =
        jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key)
        .map_err(|e| e.to_string())
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[cfg(test)]
mod tests {
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
}
