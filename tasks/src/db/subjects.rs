//! Users an identity provider names with a string subject: `(issuer, subject)` gets an internal
//! user id on first sight (from 10^12 up, see migration 0010), the same one ever after.
use super::pool::acquire;
use super::Pool;
use crate::Error;

/// The user id of `(issuer, subject)`, made on first sight; whether it was made now.
///
/// # Errors
/// Database or pool failure.
pub async fn resolve(pool: &Pool, issuer: &str, subject: &str) -> Result<(i64, bool), Error> {
    let c = acquire(pool).await?;
    // The insert's conflict leaves an existing row, which the second half reads. A row another
    // session committed while this statement ran is past its snapshot: read again then.
    let row = c
        .client
        .query_opt(
            "WITH i AS (INSERT INTO user_subjects (issuer, subject) VALUES ($1, $2) \
               ON CONFLICT (issuer, subject) DO NOTHING RETURNING user_id) \
             SELECT user_id, true FROM i \
             UNION ALL \
             SELECT user_id, false FROM user_subjects WHERE issuer = $1 AND subject = $2 \
               AND NOT EXISTS (SELECT 1 FROM i) \
             LIMIT 1",
            &[&issuer, &subject],
        )
        .await?;
    if let Some(row) = row {
        return Ok((row.get(0), row.get(1)));
    }
    let row = c
        .client
        .query_one(
            "SELECT user_id FROM user_subjects WHERE issuer = $1 AND subject = $2",
            &[&issuer, &subject],
        )
        .await?;
    Ok((row.get(0), false))
}
