//! Agent rows and their queries.
//!
//! The columns that lists filter and sort on are real columns; the rest of an agent (the
//! seeds' union of fields) is one JSON document in `body`. Platform tokens live apart in
//! `secrets` so that no read path can return them by accident.

use diesel::prelude::*;

use super::schema::agents;
use super::sql::{CountOf, Page, folded, like_pattern};
use super::types::text_enum;
use super::{DbConnection, Found, MultiBackend, StoreError, StoreResult};

super::crud::resource_table!(agents, AgentRow);
super::crud::versioned_row!(AgentRow, AgentChanges);

text_enum! {
    /// Whether an agent is in service.
    pub enum AgentStatus {
        Active = "active",
        Inactive = "inactive",
        Training = "training",
        Error = "error",
    }
}

/// One row of `agents`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = agents)]
pub struct AgentRow {
    pub id: String,
    pub org_id: String,
    /// The columns an update writes.
    #[diesel(embed)]
    pub content: AgentChanges,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// The columns an update writes; `version` and `updated_at` are set by [`update_then`].
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = agents, treat_none_as_null = true)]
pub struct AgentChanges {
    pub name: String,
    pub agent_type: String,
    pub status: AgentStatus,
    pub description: Option<String>,
    pub body: String,
    pub secrets: String,
}

/// What lists sort on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Name,
    CreatedAt,
    UpdatedAt,
}

impl SortField {
    pub fn as_str(self) -> &'static str {
        match self {
            SortField::Name => "name",
            SortField::CreatedAt => "created_at",
            SortField::UpdatedAt => "updated_at",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "name" => Some(SortField::Name),
            "created_at" => Some(SortField::CreatedAt),
            "updated_at" => Some(SortField::UpdatedAt),
            _ => None,
        }
    }

    /// The value of this field in `row`, as stored.
    pub fn value_of(self, row: &AgentRow) -> &str {
        match self {
            SortField::Name => &row.content.name,
            SortField::CreatedAt => &row.created_at,
            SortField::UpdatedAt => &row.updated_at,
        }
    }
}

/// A filtered, sorted page request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub agent_type: Option<String>,
    pub status: Option<AgentStatus>,
    /// Lower-cased substring of name or description.
    pub search: Option<String>,
    pub created_gte: Option<String>,
    pub created_lte: Option<String>,
    pub sort: SortField,
    pub descending: bool,
    /// The page: after the row its cursor names (keyset, on `sort`) while that row exists,
    /// else from its offset.
    pub page: Page,
}

type Boxed<'a> = agents::BoxedQuery<'a, MultiBackend>;

fn filtered<'a>(org_id: &'a str, q: &'a ListQuery) -> Boxed<'a> {
    let mut query = agents::table.filter(agents::org_id.eq(org_id)).into_boxed();
    if let Some(t) = &q.agent_type {
        query = query.filter(agents::agent_type.eq(t));
    }
    if let Some(s) = q.status {
        query = query.filter(agents::status.eq(s));
    }
    if let Some(search) = &q.search {
        let pattern = like_pattern(search);
        query = query.filter(
            folded(agents::name)
                .like(pattern.clone())
                .escape('\\')
                .or(folded(agents::description).like(pattern).escape('\\')),
        );
    }
    if let Some(t) = &q.created_gte {
        query = query.filter(agents::created_at.ge(t));
    }
    if let Some(t) = &q.created_lte {
        query = query.filter(agents::created_at.le(t));
    }
    query
}

macro_rules! keyset {
    ($query:expr, $col:expr, $q:expr, $after:expr) => {{
        let mut query = $query;
        if let Some((value, id)) = $after {
            query = if $q.descending {
                query.filter($col.lt(value).or($col.eq(value).and(agents::id.lt(id))))
            } else {
                query.filter($col.gt(value).or($col.eq(value).and(agents::id.gt(id))))
            };
        }
        if $q.descending {
            query.order(($col.desc(), agents::id.desc()))
        } else {
            query.order(($col.asc(), agents::id.asc()))
        }
    }};
}

/// A page of agents and the number of agents matching the filters.
pub fn list(
    conn: &mut DbConnection, org_id: &str, q: &ListQuery,
) -> StoreResult<(Vec<AgentRow>, i64)> {
    let anchor = match &q.page.after_id {
        Some(id) => get(conn, org_id, id)
            .found()?
            .map(|row| (q.sort.value_of(&row).to_string(), row.id)),
        None => None,
    };
    let base = filtered(org_id, q);
    let sorted = match q.sort {
        SortField::Name => keyset!(base, agents::name, q, &anchor),
        SortField::CreatedAt => keyset!(base, agents::created_at, q, &anchor),
        SortField::UpdatedAt => keyset!(base, agents::updated_at, q, &anchor),
    };
    let mut query = sorted.limit(q.page.limit);
    if anchor.is_none() && q.page.offset > 0 {
        query = query.offset(q.page.offset);
    }
    let rows: Vec<AgentRow> = query.select(AgentRow::as_select()).load(conn)?;
    let total = q.page.total(rows.len(), || {
        let counted = filtered(org_id, q)
            .select(agents::id)
            .limit(q.page.count_limit());
        CountOf(counted).get_result::<i64>(conn)
    })?;
    Ok((rows, total))
}

/// Writes `changes` over `current` as its next version, only if it still is at
/// `current.version`; `false` when another writer got there first.
fn write_version(
    conn: &mut DbConnection, current: &AgentRow, changes: &AgentChanges, now: &str,
) -> StoreResult<bool> {
    let written = diesel::update(
        agents::table
            .filter(agents::org_id.eq(&current.org_id))
            .filter(agents::id.eq(&current.id))
            .filter(agents::version.eq(current.version)),
    )
    .set((
        changes,
        agents::version.eq(current.version + 1),
        agents::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(written > 0)
}

/// How often [`bulk_update`] retries when another writer changed a matched agent between its
/// read and its write.
const UPDATE_ATTEMPTS: usize = 8;

/// Updates an agent under a row lock: `change` sees the current row (for `If-Match`, and what
/// the request leaves out) and may refuse with an `E`, which writes nothing; else the changes
/// are written with the version bumped and `on_written` runs with the new row in the same
/// transaction (to publish its event). Writers queue on the lock, so concurrent updates all
/// land and `change` always judges the version it replaces.
pub fn update_then<E>(
    conn: &mut DbConnection, org_id: &str, id: &str,
    change: impl FnOnce(&mut DbConnection, &AgentRow) -> StoreResult<Result<AgentChanges, E>>,
    on_written: impl FnOnce(&mut DbConnection, &AgentRow) -> StoreResult<()>,
) -> StoreResult<Result<AgentRow, E>> {
    super::write_transaction(conn, |conn| {
        // SQLite's BEGIN IMMEDIATE already serializes writers.
        super::lock_row(conn, "agents", org_id, id)?;
        let current = get(conn, org_id, id)?;
        let changes = match change(conn, &current)? {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        if !write_version(conn, &current, &changes, &crate::ids::now())? {
            return Err(StoreError::Unavailable(format!(
                "agent {id} changed under its row lock"
            )));
        }
        let row = get(conn, org_id, id)?;
        on_written(conn, &row)?;
        Ok(Ok(row))
    })
}

impl super::crud::Versioned for AgentRow {
    type Changes = AgentChanges;
    fn version(&self) -> i64 {
        self.version
    }
    fn update<E>(
        conn: &mut DbConnection, org_id: &str, id: &str,
        change: impl FnOnce(&mut DbConnection, &Self) -> StoreResult<Result<AgentChanges, E>>,
    ) -> StoreResult<Result<Self, E>> {
        update_then(conn, org_id, id, change, |_, _| Ok(()))
    }
}

/// Which agents a bulk update touches; every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct BulkFilter {
    pub ids: Option<Vec<String>>,
    pub agent_type: Option<String>,
    pub status: Option<AgentStatus>,
    pub search: Option<String>,
}

/// What a bulk update did: the agents that matched, and the ids of those that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkOutcome {
    pub matched: i64,
    pub updated: Vec<String>,
}

/// Applies `change` to every agent of the organization matching `filter`, in one
/// transaction: all are written (each with its version bumped) or none is. `change` answers
/// `None` for an agent it leaves as it was. A concurrent writer that bumps a matched agent
/// between the read and the write makes the whole step run again on the newer versions.
pub fn bulk_update<E>(
    conn: &mut DbConnection, org_id: &str, filter: &BulkFilter,
    mut change: impl FnMut(&AgentRow) -> Result<Option<AgentChanges>, E>,
) -> StoreResult<Result<BulkOutcome, E>> {
    let query = ListQuery {
        agent_type: filter.agent_type.clone(),
        status: filter.status,
        search: filter.search.clone(),
        created_gte: None,
        created_lte: None,
        sort: SortField::CreatedAt,
        descending: false,
        page: Page {
            after_id: None,
            offset: 0,
            limit: i64::MAX,
        },
    };
    for _ in 0..UPDATE_ATTEMPTS {
        let attempt = super::write_transaction(conn, |conn| {
            let mut q = filtered(org_id, &query);
            if let Some(ids) = &filter.ids {
                q = q.filter(agents::id.eq_any(ids.clone()));
            }
            let rows: Vec<AgentRow> = q
                .order(agents::id.asc())
                .select(AgentRow::as_select())
                .load(conn)?;
            let now = crate::ids::now();
            let mut updated = Vec::new();
            for current in &rows {
                let changes = match change(current) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => return Ok(Some(Err(e))),
                };
                if !write_version(conn, current, &changes, &now)? {
                    // Lost a race: roll everything back and start over.
                    return Err(StoreError::PreconditionFailed);
                }
                updated.push(current.id.clone());
            }
            Ok(Some(Ok(BulkOutcome {
                matched: i64::try_from(rows.len()).unwrap_or(i64::MAX),
                updated,
            })))
        });
        match attempt {
            Ok(Some(done)) => return Ok(done),
            Ok(None) | Err(StoreError::PreconditionFailed) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(format!(
        "agents kept changing under {UPDATE_ATTEMPTS} attempts to update them in bulk"
    )))
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    /// Searches escape LIKE wildcards (the helper is `db::sql`'s; this test could move there).
    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
