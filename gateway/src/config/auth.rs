//! The gateway's authentication settings turned into what runs: the token verifier, the service
//! token for the task service, the CORS policy that follows from them, and the rate limiters.
use super::Config;

impl Config {
    /// The rate limiters this config asks for.
    pub fn rate_limits(&self) -> crate::auth::ratelimit::RateLimits {
        use crate::auth::ratelimit::Rate;
        crate::auth::ratelimit::RateLimits::new(
            Rate {
                per_sec: self.rate_address_per_sec,
                burst: self.rate_address_burst,
            },
            Rate {
                per_sec: self.rate_user_writes_per_sec,
                burst: self.rate_user_writes_burst,
            },
            Rate {
                per_sec: self.rate_user_connects_per_sec,
                burst: self.rate_user_connects_burst,
            },
        )
    }

    pub fn auth_on(&self) -> bool {
        self.auth != "off"
    }

    /// The token verifier (`None` with AUTH=off).
    ///
    /// # Errors
    /// AUTH=on without exactly one key source, or a key that does not load.
    pub fn verifier(&self) -> Result<Option<std::sync::Arc<crate::auth::Verifier>>, crate::Error> {
        use crate::auth::{KeySource, Verifier};
        if !self.auth_on() {
            return Ok(None);
        }
        let cfg = crate::Error::Config;
        let secret = taskboard_telemetry::secret(
            self.jwt_secret.as_deref(),
            self.jwt_secret_file.as_deref(),
            "JWT_SECRET",
        )
        .map_err(cfg)?;
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| cfg(format!("{what} {}: {e}", p.display())))
        };
        let mut sources = Vec::new();
        if let Some(s) = secret {
            sources.push(KeySource::Secret(s));
        }
        if let Some(p) = &self.jwt_public_key_file {
            sources.push(KeySource::PublicKeyPem(read(p, "JWT_PUBLIC_KEY_FILE")?));
        }
        if let Some(p) = &self.jwt_jwks_file {
            let doc = read(p, "JWT_JWKS_FILE")?;
            sources.push(KeySource::Jwks(String::from_utf8_lossy(&doc).into_owned()));
        }
        let mut remote = None;
        if let Some(u) = &self.jwt_jwks_url {
            remote = Some(crate::auth::jwks::Source::Url(u.trim().to_owned()));
            sources.push(KeySource::Remote);
        }
        if sources.is_empty() {
            if let Some(issuer) = &self.jwt_issuer {
                remote = Some(crate::auth::jwks::Source::Discovery {
                    issuer: issuer.clone(),
                });
                sources.push(KeySource::Remote);
            }
        }
        let source = match sources.as_slice() {
            [one] => one,
            [] => {
                return Err(cfg(
                    "AUTH=on needs the key tokens are checked with: JWT_SECRET (HS256, \
                     development), JWT_PUBLIC_KEY_FILE, JWT_JWKS_FILE, JWT_JWKS_URL, or \
                     JWT_ISSUER alone (OIDC discovery). For development without \
                     authentication set AUTH=off"
                        .into(),
                ))
            }
            _ => {
                return Err(cfg(
                    "set only one of JWT_SECRET, JWT_PUBLIC_KEY_FILE, JWT_JWKS_FILE and \
                     JWT_JWKS_URL"
                        .into(),
                ))
            }
        };
        let v = Verifier::new(
            source,
            &self.jwt_audience,
            self.jwt_issuer.as_deref(),
            self.jwt_leeway_secs,
        )
        .map_err(cfg)?;
        Ok(Some(match remote {
            Some(src) => {
                let secs = std::time::Duration::from_secs;
                let settings = crate::auth::jwks::Settings {
                    max_stale: secs(self.jwt_jwks_max_stale_secs.max(1)),
                    min_fresh: secs(self.jwt_jwks_min_fresh_secs),
                    ca_pem: match &self.jwt_jwks_ca_file {
                        Some(p) => Some(read(p, "JWT_JWKS_CA_FILE")?),
                        None => None,
                    },
                };
                let r = crate::auth::jwks::Remote::new(src, settings).map_err(cfg)?;
                v.with_remote(std::sync::Arc::new(r))
            }
            None => v,
        }))
    }

    /// The token presented to the task service: required with AUTH=on.
    ///
    /// # Errors
    /// AUTH=on without one, or an unreadable file.
    pub fn service_token(&self) -> Result<Option<String>, crate::Error> {
        let t = taskboard_telemetry::secret(
            self.service_token.as_deref(),
            self.service_token_file.as_deref(),
            "SERVICE_TOKEN",
        )
        .map_err(crate::Error::Config)?;
        if self.auth_on() && t.is_none() {
            return Err(crate::Error::Config(
                "AUTH=on needs SERVICE_TOKEN (or SERVICE_TOKEN_FILE): the token the task service \
                 expects from this gateway"
                    .into(),
            ));
        }
        Ok(t)
    }

    /// The CORS spec in force: as configured, else none with AUTH=on and any with AUTH=off.
    pub fn cors_spec(&self) -> &str {
        match self.cors_origins.trim() {
            "" if self.auth_on() => "",
            "" => "*",
            s => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_on_needs_one_key_and_the_service_token() {
        let mut c = Config::for_addrs("tasks:50051", "nats://n");
        assert!(c.validate().is_ok(), "AUTH=off needs nothing");
        assert_eq!(c.cors_spec(), "*");
        c.auth = "on".into();
        assert_eq!(c.cors_spec(), "", "no cross-origin default with auth");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("JWT_SECRET") && e.contains("AUTH=off"), "{e}");
        c.jwt_secret = Some("x".repeat(32));
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("SERVICE_TOKEN"));
        c.service_token = Some("t".repeat(16));
        c.validate().unwrap();
        c.jwt_jwks_file = Some("/nonexistent".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("JWT_JWKS_FILE"));
    }

    #[test]
    fn authentication_is_on_unless_turned_off() {
        use clap::CommandFactory;
        let cmd = Config::command();
        let default = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_default_values().first().cloned())
                .map(|v| v.to_string_lossy().into_owned())
        };
        assert_eq!(default("auth").as_deref(), Some("on"));
        assert_eq!(default("metrics_bind_addr").as_deref(), Some("127.0.0.1"));
    }
}
