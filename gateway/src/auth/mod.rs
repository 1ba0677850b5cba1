//! Authentication: bearer JWTs (RFC 7519) verified against the configured keys — an HS256 secret
//! for development, an RS256/ES256 public key (PEM) or a JWKS file for production — and the
//! principal a valid token names.
pub mod jwks;
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
pub(crate) struct Key {
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
    /// Keys fetched from the identity provider ([`jwks::Remote`] fills them in).
    Remote,
}

/// The refusal of a token whose `kid` names no key we hold (a refresh may find it).
pub const NO_KEY: &str = "no key for this token's kid";

/// The keys of a JWKS document that this gateway can use (signing keys of a known algorithm).
fn keys_of_jwks(
    doc: &[u8],
    audience: &str,
    issuer: Option<&str>,
    leeway_secs: u64,
) -> Result<Vec<Key>, String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(doc).map_err(|e| format!("is not a JWK set: {e}"))?;
    Ok(set
        .keys
        .iter()
        .filter(|jwk| {
            !matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            )
        })
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(Key {
                kid: jwk.common.key_id.clone(),
                validation: validation(key.family(), audience, issuer, leeway_secs),
                key,
            })
        })
        .collect())
}

/// Checks tokens. Cheap to share (`Arc`).
pub struct Verifier {
    keys: std::sync::RwLock<Arc<Vec<Key>>>,
    audience: String,
    issuer: Option<String>,
    leeway_secs: u64,
    /// With keys from the provider: their cache (refreshed on an unknown `kid`).
    pub remote: Option<Arc<jwks::Remote>>,
}

/// The validation every key of the family `family` checks tokens with.
fn validation(
    family: jsonwebtoken::AlgorithmFamily,
    audience: &str,
    issuer: Option<&str>,
    leeway_secs: u64,
) -> Validation {
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
        let validation = |family| validation(family, audience, issuer, leeway_secs);
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
                let keys = keys_of_jwks(doc.as_bytes(), audience, issuer, leeway_secs)
                    .map_err(|e| format!("JWT_JWKS_FILE {e}"))?;
                if keys.is_empty() {
                    return Err("JWT_JWKS_FILE holds no usable key".into());
                }
                keys
            }
            KeySource::Remote => Vec::new(),
        };
        Ok(Arc::new(Verifier {
            keys: std::sync::RwLock::new(Arc::new(keys)),
            audience: audience.to_owned(),
            issuer: issuer.map(str::to_owned),
            leeway_secs,
            remote: None,
        }))
    }

    /// The same verifier, its keys kept by `remote`.
    #[must_use]
    pub fn with_remote(self: Arc<Self>, remote: Arc<jwks::Remote>) -> Arc<Self> {
        let mut v = Arc::try_unwrap(self).unwrap_or_else(|_| unreachable!("not shared yet"));
        v.remote = Some(remote);
        Arc::new(v)
    }

    /// Replaces the keys with those of the JWKS document `doc`; how many there are now.
    ///
    /// # Errors
    /// `doc` is not a JWK set, or has no key this gateway can use (the old keys stay).
    pub fn load_jwks(&self, doc: &[u8]) -> Result<usize, String> {
        let keys = keys_of_jwks(
            doc,
            &self.audience,
            self.issuer.as_deref(),
            self.leeway_secs,
        )?;
        if keys.is_empty() {
            return Err("holds no usable signing key".into());
        }
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(n)
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
        if let Some(r) = &self.remote {
            r.usable()?;
        }
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let key = match &header.kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .or_else(|| keys.iter().find(|k| k.kid.is_none())),
            None => keys.first(),
        }
        .ok_or_else(|| NO_KEY.to_owned())?;
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
mod tests;
