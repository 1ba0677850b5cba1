//! Request validation. Messages are the Go original's REST error strings, so the gateway can pass
//! them through unchanged.
use crate::db::{Change, NewTask};
use crate::Error;

/// Longest title accepted, in characters.
pub const MAX_TITLE_CHARS: usize = 500;
/// Longest description accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Default (the original's gRPC default for `page_size` 0; REST's default of 10 is the gateway's)
/// and largest page size of ListTasks.
pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const MAX_PAGE_SIZE: i32 = 100;
/// Default and largest page of ListEvents.
pub const MAX_EVENTS_PAGE: i32 = 1000;

fn invalid(m: impl Into<String>) -> Error {
    Error::InvalidArgument(m.into())
}

/// PostgreSQL's text type cannot hold NUL (U+0000): refused here with a clear 400 instead of
/// failing in the database.
fn check_no_nul(what: &str, v: &str) -> Result<(), Error> {
    if v.contains('\0') {
        return Err(invalid(format!(
            "{what} must not contain NUL (U+0000) characters"
        )));
    }
    Ok(())
}

fn check_title(title: &str) -> Result<(), Error> {
    if title.trim().is_empty() {
        return Err(invalid("Title is required"));
    }
    check_no_nul("Title", title)?;
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(invalid(format!(
            "Title is too long (at most {MAX_TITLE_CHARS} characters)"
        )));
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), Error> {
    check_no_nul("Description", d)?;
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(format!(
            "Description is too long (at most {MAX_DESCRIPTION_CHARS} characters)"
        )));
    }
    Ok(())
}

/// A board id must be a positive integer (the original let a missing one become 0 or 1).
pub fn board_id(board_id: i64) -> Result<i64, Error> {
    match board_id {
        0 => Err(invalid("Board ID is required")),
        b if b < 0 => Err(invalid("Board ID must be a positive integer")),
        b => Ok(b),
    }
}

/// A task id must be a positive integer.
pub fn task_id(id: i64) -> Result<i64, Error> {
    if id <= 0 {
        return Err(invalid("Invalid task ID"));
    }
    Ok(id)
}

/// Validates a CreateTask request (title first, as the original did).
pub fn new_task<'a>(
    board: i64,
    title: &'a str,
    description: &'a str,
    created_by: i64,
) -> Result<NewTask<'a>, Error> {
    check_title(title)?;
    let board_id = board_id(board)?;
    check_description(description)?;
    // 0 = not given (the original accepted a missing created_by).
    if created_by < 0 {
        return Err(invalid("Created by must be a positive user ID"));
    }
    Ok(NewTask {
        board_id,
        title,
        description,
        created_by,
        assignee: None,
        due_at: None,
        position: None,
    })
}

/// Validates an UpdateTask request.
pub fn change<'a>(
    id: i64,
    title: Option<&'a str>,
    description: Option<&'a str>,
    completed: Option<bool>,
) -> Result<Change<'a>, Error> {
    let id = task_id(id)?;
    if let Some(t) = title {
        check_title(t)?;
    }
    if let Some(d) = description {
        check_description(d)?;
    }
    Ok(Change {
        id,
        title,
        description,
        completed,
        assignee: None,
        due_at: crate::db::Due::Keep,
        position: None,
    })
}

/// An assignee: a user id, or 0 for nobody.
///
/// # Errors
/// Negative.
pub fn assignee(a: i64) -> Result<i64, Error> {
    if a < 0 {
        return Err(invalid(
            "Assignee must be a user ID (a positive integer), or 0 for nobody",
        ));
    }
    Ok(a)
}

/// A due date: a valid timestamp in the years 1 to 9999.
///
/// # Errors
/// Out of range.
pub fn due_at(t: &prost_types::Timestamp) -> Result<chrono::DateTime<chrono::Utc>, Error> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|n| chrono::DateTime::from_timestamp(t.seconds, n))
        .filter(|d| (1..=9999).contains(&chrono::Datelike::year(d)))
        .ok_or_else(|| invalid("Due date must be a valid time in the years 1 to 9999"))
}

/// A position in the manual order: a finite number.
///
/// # Errors
/// NaN or infinite.
pub fn position(p: f64) -> Result<f64, Error> {
    if !p.is_finite() {
        return Err(invalid("Position must be a finite number"));
    }
    Ok(p)
}

/// The order of a task list: `created` (or empty), `position` or `due`.
///
/// # Errors
/// Anything else.
pub fn sort(s: &str) -> Result<crate::db::Sort, Error> {
    match s {
        "" | "created" => Ok(crate::db::Sort::Created),
        "position" => Ok(crate::db::Sort::Position),
        "due" => Ok(crate::db::Sort::Due),
        other => Err(invalid(format!(
            "Sort must be created, position or due, got {other:?}"
        ))),
    }
}

/// Longest board name accepted, in characters.
pub const MAX_BOARD_NAME_CHARS: usize = 200;

/// A board name: 1 to 200 characters, not blank, no NUL.
pub fn board_name(name: &str) -> Result<&str, Error> {
    if name.trim().is_empty() {
        return Err(invalid("Board name is required"));
    }
    check_no_nul("Board name", name)?;
    if name.chars().count() > MAX_BOARD_NAME_CHARS {
        return Err(invalid(format!(
            "Board name is too long (at most {MAX_BOARD_NAME_CHARS} characters)"
        )));
    }
    Ok(name)
}

/// A board description: at most as long as a task's, no NUL.
///
/// # Errors
/// Too long, or holding NUL.
pub fn board_description(d: &str) -> Result<&str, Error> {
    check_no_nul("Board description", d)?;
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(format!(
            "Board description is too long (at most {MAX_DESCRIPTION_CHARS} characters)"
        )));
    }
    Ok(d)
}

/// A member's role: `owner`, `editor` or `viewer`.
pub fn role(role: &str) -> Result<crate::access::Role, Error> {
    crate::access::Role::parse(role).ok_or_else(|| {
        invalid(format!(
            "Role must be owner, editor or viewer, got {role:?}"
        ))
    })
}

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
///
/// # Errors
/// Empty, too long, or other characters.
pub fn idempotency_key(key: &str) -> Result<&str, Error> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "Idempotency key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(key)
}

/// A user id must be a positive integer.
///
/// # Errors
/// Zero or negative.
pub fn user_id(id: i64) -> Result<i64, Error> {
    if id <= 0 {
        return Err(invalid("User ID must be a positive integer"));
    }
    Ok(id)
}

/// An identity provider's subject: 1 to 1000 bytes, no control characters.
///
/// # Errors
/// Empty, too long, or with control characters.
pub fn subject(s: &str) -> Result<&str, Error> {
    if s.is_empty() || s.len() > 1000 || s.chars().any(char::is_control) {
        return Err(invalid(
            "Subject must be 1 to 1000 bytes without control characters",
        ));
    }
    Ok(s)
}

/// An identity provider's issuer: up to 1000 bytes, no control characters ("" for none).
///
/// # Errors
/// Too long, or with control characters.
pub fn issuer(s: &str) -> Result<&str, Error> {
    if s.len() > 1000 || s.chars().any(char::is_control) {
        return Err(invalid(
            "Issuer must be at most 1000 bytes without control characters",
        ));
    }
    Ok(s)
}

/// Normalises ListTasks paging: page size defaults to 50 and is capped at 100, page defaults to 1.
/// Returns (page, page_size).
pub fn paging(page: i32, page_size: i32) -> (i32, i32) {
    let size = match page_size {
        s if s <= 0 => DEFAULT_PAGE_SIZE,
        s => s.min(MAX_PAGE_SIZE),
    };
    (page.max(1), size)
}

/// Longest search query, in characters.
pub const MAX_SEARCH_CHARS: usize = 500;

/// A search query: some text, at most [`MAX_SEARCH_CHARS`] characters, no NUL.
///
/// # Errors
/// Blank, too long, or holding NUL.
pub fn search_query(q: &str) -> Result<&str, Error> {
    let q = q.trim();
    if q.is_empty() {
        return Err(invalid("Search query is required"));
    }
    check_no_nul("Search query", q)?;
    if q.chars().count() > MAX_SEARCH_CHARS {
        return Err(invalid(format!(
            "Search query is too long (at most {MAX_SEARCH_CHARS} characters)"
        )));
    }
    Ok(q)
}

/// Normalises SearchTasks paging: page size defaults to 20 and is capped at 100, page defaults
/// to 1. Returns (page, page_size).
pub fn search_paging(page: i32, page_size: i32) -> (i32, i32) {
    let size = match page_size {
        s if s <= 0 => 20,
        s => s.min(MAX_PAGE_SIZE),
    };
    (page.max(1), size)
}

/// Normalises a ListEvents limit: default and cap 1000.
pub fn events_limit(limit: i32) -> i32 {
    if limit <= 0 {
        MAX_EVENTS_PAGE
    } else {
        limit.min(MAX_EVENTS_PAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_query_needs_text_and_has_a_limit() {
        assert_eq!(search_query("  milk ").unwrap(), "milk");
        assert!(msg(search_query("   ").unwrap_err()).contains("required"));
        assert!(msg(search_query("a\0b").unwrap_err()).contains("NUL"));
        assert!(search_query(&"é".repeat(500)).is_ok());
        assert!(msg(search_query(&"é".repeat(501)).unwrap_err()).contains("too long"));
        assert_eq!(search_paging(0, 0), (1, 20));
        assert_eq!(search_paging(3, 1000), (3, 100));
    }

    fn msg(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn title_is_checked_before_board_id() {
        let e = new_task(0, "", "", 1).err().unwrap();
        assert_eq!(msg(e), "Title is required");
    }

    #[test]
    fn blank_title_is_rejected() {
        assert_eq!(
            msg(new_task(1, "   ", "", 1).err().unwrap()),
            "Title is required"
        );
    }

    #[test]
    fn missing_or_negative_board_id_is_rejected() {
        assert_eq!(
            msg(new_task(0, "t", "", 1).err().unwrap()),
            "Board ID is required"
        );
        assert_eq!(
            msg(new_task(-3, "t", "", 1).err().unwrap()),
            "Board ID must be a positive integer"
        );
    }

    #[test]
    fn missing_created_by_is_accepted_and_negative_rejected() {
        assert_eq!(new_task(1, "t", "", 0).unwrap().created_by, 0);
        assert!(msg(new_task(1, "t", "", -1).err().unwrap()).starts_with("Created by"));
    }

    #[test]
    fn long_fields_are_rejected_by_characters_not_bytes() {
        let ok = "é".repeat(MAX_TITLE_CHARS);
        assert!(new_task(1, &ok, "", 1).is_ok());
        let long = "a".repeat(MAX_TITLE_CHARS + 1);
        assert!(msg(new_task(1, &long, "", 1).err().unwrap()).starts_with("Title is too long"));
        let d = "a".repeat(MAX_DESCRIPTION_CHARS + 1);
        assert!(msg(new_task(1, "t", &d, 1).err().unwrap()).starts_with("Description is too long"));
    }

    #[test]
    fn nul_is_refused_in_every_text_field() {
        assert!(msg(new_task(1, "a\0", "", 1).err().unwrap()).contains("NUL"));
        assert!(msg(new_task(1, "a", "\0", 1).err().unwrap()).contains("NUL"));
        assert!(msg(change(1, Some("\0x"), None, None).err().unwrap()).contains("NUL"));
    }

    #[test]
    fn update_validates_only_present_fields() {
        assert!(change(1, None, None, Some(true)).is_ok());
        assert_eq!(
            msg(change(1, Some(""), None, None).err().unwrap()),
            "Title is required"
        );
        assert_eq!(
            msg(change(0, None, None, None).err().unwrap()),
            "Invalid task ID"
        );
        assert_eq!(
            msg(change(-1, None, None, None).err().unwrap()),
            "Invalid task ID"
        );
    }

    #[test]
    fn board_names_roles_and_user_ids() {
        assert_eq!(board_name("Team").unwrap(), "Team");
        assert_eq!(
            msg(board_name("  ").err().unwrap()),
            "Board name is required"
        );
        assert!(msg(board_name("a\0").err().unwrap()).contains("NUL"));
        let long = "b".repeat(MAX_BOARD_NAME_CHARS + 1);
        assert!(msg(board_name(&long).err().unwrap()).contains("too long"));
        assert_eq!(role("editor").unwrap(), crate::access::Role::Editor);
        assert!(msg(role("admin").err().unwrap()).contains("owner, editor or viewer"));
        assert!(user_id(0).is_err() && user_id(-4).is_err() && user_id(9).is_ok());
    }

    #[test]
    fn paging_defaults_and_caps() {
        assert_eq!(paging(0, 0), (1, 50));
        assert_eq!(paging(-5, -1), (1, 50));
        assert_eq!(paging(3, 1000), (3, 100));
        assert_eq!(paging(2, 25), (2, 25));
        assert_eq!(events_limit(0), 1000);
        assert_eq!(events_limit(5), 5);
        assert_eq!(events_limit(5000), 1000);
    }
}
