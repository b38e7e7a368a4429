//! Paging for the resources listed newest first by id (ids sort by creation time).
//!
//! A page starts either at `offset` (page numbers) or right after an id (`next_cursor`,
//! `<offset>.<last id>`, the format agents use); when that id is gone the offset still holds.

use agentplane_api::Conditional;
use agentplane_api::models::Pagination;

use crate::error::{Failure, Kind, detail};

/// Where a page starts and how long it is.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub offset: i64,
    pub limit: i64,
    /// The last id of the previous page, when paging by cursor.
    pub after_id: Option<String>,
}

impl PageRequest {
    /// [`PageRequest::new`] from a list operation's parameters.
    pub fn of(params: &impl agentplane_api::Paged, request_id: &str) -> Result<Self, Failure> {
        Self::new(
            params.page(),
            params.per_page(),
            params.cursor(),
            params.limit(),
            request_id,
        )
    }

    /// From the shared `page`, `per_page`, `cursor` and `limit` parameters.
    pub fn new(
        page: i64, per_page: i64, cursor: Option<&str>, limit: Option<i64>, request_id: &str,
    ) -> Result<Self, Failure> {
        let limit = limit.unwrap_or(per_page).max(1);
        match cursor {
            Some(text) => {
                let parsed = text
                    .split_once('.')
                    .and_then(|(o, id)| Some((o.parse::<i64>().ok()?, id.to_string())));
                let (offset, id) = parsed.ok_or_else(|| {
                    let message = "not a cursor this server hands out";
                    Failure::with_details(
                        Kind::BadRequest,
                        "VALIDATION_ERROR",
                        message,
                        vec![detail("cursor", "invalid", message)],
                        request_id,
                    )
                })?;
                Ok(Self {
                    offset,
                    limit,
                    after_id: Some(id),
                })
            }
            None => Ok(Self {
                offset: (page.max(1) - 1).saturating_mul(limit),
                limit,
                after_id: None,
            }),
        }
    }

    /// Where the page starts, as the storage layer takes it.
    pub fn page(&self) -> crate::db::sql::Page {
        crate::db::sql::Page {
            after_id: self.after_id.clone(),
            offset: self.offset,
            limit: self.limit,
        }
    }

    /// The pagination block for a page of `len` items whose last id is `last_id`.
    pub fn pagination(&self, len: usize, last_id: Option<&str>, total: i64) -> Pagination {
        let end = self.offset + i64::try_from(len).unwrap_or(0);
        let next_cursor = match last_id {
            Some(id) if end < total => Some(format!("{end}.{id}")),
            _ => None,
        };
        super::pagination(self.offset / self.limit + 1, self.limit, total, next_cursor)
    }
}

/// Whether an `If-None-Match`/`If-Match` header names this ETag (`*` names every ETag).
pub fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// Whether a read with this `If-None-Match` answers 304: the header names `etag`.
pub fn not_modified(if_none_match: Option<&str>, etag: &str) -> bool {
    if_none_match.is_some_and(|h| etag_matches(h, etag))
}

/// `item` with its ETag (at `version`), or only the ETag when `If-None-Match` names it.
pub fn conditional<T>(item: T, version: i64, if_none_match: Option<&str>) -> Conditional<T> {
    let tag = etag(version);
    if not_modified(if_none_match, &tag) {
        return Conditional::NotModified(tag);
    }
    Conditional::Fresh(item, tag)
}

/// The ETag of a resource at `version`.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_resume_after_the_last_id() {
        let p = PageRequest::new(1, 20, Some("20.tpl_x"), Some(10), "r").expect("cursor");
        assert_eq!(
            (p.offset, p.limit, p.after_id.as_deref()),
            (20, 10, Some("tpl_x"))
        );
        assert!(PageRequest::new(1, 20, Some("x"), None, "r").is_err());
        let p = PageRequest::new(3, 10, None, None, "r").expect("page");
        assert_eq!(p.offset, 20);
        let block = p.pagination(10, Some("tpl_y"), 35);
        assert_eq!(block.next_cursor.as_deref(), Some("30.tpl_y"));
        assert_eq!((block.page, block.pages), (3, 4));
        assert_eq!(p.pagination(5, Some("tpl_z"), 25).next_cursor, None);
    }
}
