//! Who is calling: the service token (the gateway's credential), the end user it vouches for, and
//! the roles of board members.
use std::sync::Arc;

use taskboard_proto::auth::{ROLE_HEADER, SERVICE_ROLE, USER_HEADER};
use tonic::{Request, Status};

/// The caller of one RPC, as the [`Access`] interceptor established it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The end user the call is made for.
    pub user: Option<i64>,
    /// Sees and changes every board: authentication off, the service role, or the token holder
    /// calling for itself (no user).
    pub all_boards: bool,
}

impl Caller {
    /// The caller of `req`. A request that did not pass the interceptor may do nothing (fail
    /// closed: a service registered without [`Access`] denies everything).
    pub fn of<T>(req: &Request<T>) -> Caller {
        req.extensions().get::<Caller>().copied().unwrap_or(Caller {
            user: None,
            all_boards: false,
        })
    }
}

/// What the interceptor knows of authentication, for calls that vouch for several users at once
/// (CreateTasks): each item's caller is built as the interceptor would build it from that item's
/// user and role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vouch {
    /// A service token is configured (authentication on).
    pub auth: bool,
}

impl Vouch {
    /// How `req`'s items may be vouched for; `None` for a request that did not pass the
    /// interceptor (fail closed).
    pub fn of<T>(req: &Request<T>) -> Option<Vouch> {
        req.extensions().get::<Vouch>().copied()
    }

    /// The caller of one item made for `user` (0: for the token holder itself), with the service
    /// role when `service`: the [`Caller`] a single call with those headers would have had.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a negative user.
    pub fn item(self, user: i64, service: bool) -> Result<Caller, Status> {
        if user < 0 {
            return Err(Status::invalid_argument(format!(
                "the user of an item must be 0 (none) or a positive integer, got {user}"
            )));
        }
        let user = (user > 0).then_some(user);
        Ok(Caller {
            user,
            all_boards: !self.auth || user.is_none() || service,
        })
    }
}

/// A member's role on a board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Editor,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// The gRPC interceptor: checks the service token (when one is configured) and records the
/// [`Caller`] in the request's extensions.
#[derive(Clone)]
pub struct Access {
    /// `None`: authentication off (every caller sees every board).
    token: Option<Arc<[u8]>>,
}

impl Access {
    /// `token`: the service token calls must carry; `None` turns authentication off.
    pub fn new(token: Option<&str>) -> Self {
        Access {
            token: token.map(|t| Arc::from(t.as_bytes())),
        }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let md = req.metadata();
        if let Some(expected) = &self.token {
            let presented = md
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match presented {
                Some(p) if same(p.as_bytes(), expected) => {}
                Some(_) => return Err(Status::unauthenticated("invalid service token")),
                None => {
                    return Err(Status::unauthenticated(
                        "this service takes calls from the gateway only: send \
                         `authorization: Bearer <SERVICE_TOKEN>`",
                    ))
                }
            }
        }
        let user = match md.get(USER_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|u| *u > 0)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{USER_HEADER} must be a positive integer"
                        ))
                    })?,
            ),
        };
        let service_role = md.get(ROLE_HEADER).is_some_and(|v| v == SERVICE_ROLE);
        Ok(Caller {
            user,
            all_boards: self.token.is_none() || user.is_none() || service_role,
        })
    }
}

impl tonic::service::Interceptor for Access {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.caller(&req)?;
        req.extensions_mut().insert(caller);
        req.extensions_mut().insert(Vouch {
            auth: self.token.is_some(),
        });
        Ok(req)
    }
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn req(headers: &[(&'static str, &str)]) -> Request<()> {
        let mut r = Request::new(());
        for (k, v) in headers {
            r.metadata_mut().insert(*k, v.parse().unwrap());
        }
        r
    }

    #[test]
    fn with_a_token_configured_calls_must_carry_it() {
        let mut a = Access::new(Some("s3cret"));
        assert_eq!(
            a.call(req(&[])).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.call(req(&[("authorization", "Bearer s3cre")]))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        let ok = a.call(req(&[("authorization", "Bearer s3cret")])).unwrap();
        assert_eq!(
            Caller::of(&ok),
            Caller {
                user: None,
                all_boards: true
            }
        );
        let user = a
            .call(req(&[
                ("authorization", "Bearer s3cret"),
                (USER_HEADER, "42"),
            ]))
            .unwrap();
        assert_eq!(
            Caller::of(&user),
            Caller {
                user: Some(42),
                all_boards: false
            }
        );
        let service = a
            .call(req(&[
                ("authorization", "Bearer s3cret"),
                (USER_HEADER, "42"),
                (ROLE_HEADER, "service"),
            ]))
            .unwrap();
        assert!(Caller::of(&service).all_boards);
    }

    #[test]
    fn a_malformed_user_is_refused_and_no_interceptor_means_no_access() {
        let mut a = Access::new(None);
        assert_eq!(
            a.call(req(&[(USER_HEADER, "-1")])).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(Caller::of(&a.call(req(&[(USER_HEADER, "7")])).unwrap()).all_boards);
        assert!(!Caller::of(&req(&[])).all_boards);
    }

    #[test]
    fn an_item_is_vouched_for_as_a_single_call_with_its_headers_would_be() {
        for token in [Some("s3cret"), None] {
            let mut a = Access::new(token);
            let base = a.call(req(&[("authorization", "Bearer s3cret")])).unwrap();
            let vouch = Vouch::of(&base).expect("the interceptor records how to vouch");
            for user in [0_i64, 42] {
                for service in [false, true] {
                    let mut headers = vec![("authorization", "Bearer s3cret".to_owned())];
                    if user > 0 {
                        headers.push((USER_HEADER, user.to_string()));
                    }
                    if service {
                        headers.push((ROLE_HEADER, "service".to_owned()));
                    }
                    let h: Vec<(&'static str, &str)> =
                        headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let single = Caller::of(&a.call(req(&h)).unwrap());
                    assert_eq!(
                        vouch.item(user, service).unwrap(),
                        single,
                        "token {token:?}, user {user}, service {service}"
                    );
                }
            }
        }
        assert_eq!(
            Vouch { auth: true }.item(-3, false).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(Vouch::of(&req(&[])), None);
    }
}
