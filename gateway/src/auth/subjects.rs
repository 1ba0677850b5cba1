//! String subjects (an identity provider's UUIDs and emails) turned into user ids: asked of the
//! task service once per (issuer, subject), then cached (bounded; the mapping never changes).
use std::collections::HashMap;
use std::sync::Mutex;

use http::{HeaderMap, StatusCode};

use super::{request_token, unauthorized, Principal, Subject, Verifier, NO_KEY};
use crate::error::ApiError;
use crate::upstream::client::TasksClient;

/// Most mappings kept; past it the cache starts again (each entry is asked for once more).
const MAX_CACHED: usize = 100_000;

/// The resolver, shared by every request.
pub struct Subjects {
    tasks: TasksClient,
    cache: Mutex<HashMap<(String, String), i64>>,
}

impl Subjects {
    pub fn new(tasks: TasksClient) -> Self {
        Subjects {
            tasks,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The principal of a request: its token verified by `verifier`, its subject made a user id.
    ///
    /// # Errors
    /// 401 for a missing or bad token; 503 when a new subject cannot be mapped now.
    pub async fn authenticate(
        &self,
        verifier: &Verifier,
        headers: &HeaderMap,
    ) -> Result<Principal, ApiError> {
        self.principal_of(verifier, request_token(headers)?).await
    }

    /// The principal `token` names (a request's, or one a WebSocket client sends in-band).
    ///
    /// # Errors
    /// 401 for a bad token; 503 when a new subject cannot be mapped now.
    pub async fn principal_of(
        &self,
        verifier: &Verifier,
        token: &str,
    ) -> Result<Principal, ApiError> {
        let v = match verifier.verify_token(token) {
            // The provider may have rotated its keys: look again (rate-limited), then retry.
            Err(m) if m == NO_KEY => match &verifier.remote {
                Some(r) if r.refresh_for_unknown_kid(verifier).await => {
                    verifier.verify_token(token)
                }
                _ => Err(m),
            },
            other => other,
        }
        .map_err(|m| unauthorized(&m))?;
        let (issuer, subject) = match &v.subject {
            Subject::Id(user) => return Ok(v.principal(*user)),
            Subject::Named { issuer, subject } => (issuer, subject),
        };
        let key = (issuer.clone(), subject.clone());
        if let Some(&user) = self.lock().get(&key) {
            return Ok(v.principal(user));
        }
        let user = self
            .tasks
            .resolve_user(issuer, subject)
            .await
            .map_err(|s| {
                tracing::warn!(issuer, subject, status = %s, "could not map a token's subject to a user id");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                )
                .with_message("the user of this token cannot be looked up right now; retry")
            })?;
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, user);
        Ok(v.principal(user))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), i64>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}
