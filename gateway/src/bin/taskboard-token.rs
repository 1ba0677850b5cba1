//! `taskboard-token`: mints a development access token (HS256, signed with the gateway's
//! JWT_SECRET) for `curl`, the board page or the load suite. Production tokens come from your
//! identity provider instead (configure the gateway with JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE).
use clap::Parser;
use taskboard_gateway::auth::{mint_hs256, now, Claims};

#[derive(Parser)]
#[command(
    name = "taskboard-token",
    version,
    about = "Mint a development access token (HS256) for the Taskboard gateway",
    long_about = "Mint a development access token (HS256 JWT) signed with the gateway's JWT_SECRET \
(or JWT_SECRET_FILE) and print it.\n\nUse it as `Authorization: Bearer <token>` on the REST API, \
as the `bearer.<token>` WebSocket subprotocol, or open the board page at \
http://HOST:8080/#token=<token>. The audience (and issuer) must match the gateway's JWT_AUDIENCE \
(and JWT_ISSUER)."
)]
struct Args {
    /// The user id the token names (its `sub`).
    #[arg(long, default_value_t = 1)]
    user: i64,

    /// Grant the service role: every board, including the all-boards WebSocket.
    #[arg(long)]
    service: bool,

    /// Lifetime in seconds.
    #[arg(long, default_value_t = 12 * 3600)]
    ttl_secs: u64,

    /// The `aud` claim.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "taskboard")]
    audience: String,

    /// The `iss` claim (when the gateway checks one).
    #[arg(long, env = "JWT_ISSUER")]
    issuer: Option<String>,

    /// The HS256 secret (the gateway's JWT_SECRET).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,

    /// A file holding the secret.
    #[arg(long, env = "JWT_SECRET_FILE")]
    secret_file: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let fail = |m: String| {
        eprintln!("taskboard-token: {m}");
        std::process::ExitCode::from(64)
    };
    if a.user <= 0 {
        return fail("--user must be a positive integer".into());
    }
    let secret = match taskboard_telemetry::secret(
        a.secret.as_deref(),
        a.secret_file.as_deref(),
        "JWT_SECRET",
    ) {
        Ok(Some(s)) => s,
        Ok(None) => return fail("set JWT_SECRET (or JWT_SECRET_FILE) to the gateway's".into()),
        Err(e) => return fail(e),
    };
    let claims = Claims {
        sub: a.user.to_string(),
        exp: now() + a.ttl_secs,
        nbf: None,
        iat: Some(now()),
        aud: Some(a.audience),
        iss: a.issuer,
        roles: if a.service {
            vec![taskboard_proto::auth::SERVICE_ROLE.into()]
        } else {
            Vec::new()
        },
    };
    match mint_hs256(&secret, &claims) {
        Ok(t) => {
            println!("{t}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
