//! The aggregations read from usage records (which execution writes, one per execution and per
//! message that used a model: [`super::executions::insert_usage`]) and from conversations and
//! messages.
//!
//! Every aggregation is one `GROUP BY` in the database, written once as SQL both engines read
//! (`SUBSTR` on the fixed-width RFC 3339 text buckets times; sums are cast back to BIGINT,
//! which PostgreSQL would otherwise widen to NUMERIC).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::{DbConnection, StoreError, StoreResult};

/// An inclusive time window in storage format; `None` bounds are open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub start: Option<String>,
    pub end: Option<String>,
}

/// A statement with `?` placeholders and its text binds.
#[derive(Debug, Default)]
struct Sql {
    text: String,
    binds: Vec<String>,
}

impl Sql {
    fn new(text: &str) -> Self {
        Sql {
            text: text.to_string(),
            binds: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends `text` (holding one `?`) and its bind.
    fn bind(&mut self, text: &str, value: &str) -> &mut Self {
        self.text.push_str(text);
        self.binds.push(value.to_string());
        self
    }

    /// Appends `text` (holding one `?`) and its bind when there is a `value`.
    fn bind_if(&mut self, text: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.bind(text, v);
        }
        self
    }

    /// `AND column >= ? AND column <= ?` for the window's bounds.
    fn window(&mut self, column: &str, w: &Window) -> &mut Self {
        self.bind_if(&format!(" AND {column} >= ?"), w.start.as_deref());
        self.bind_if(&format!(" AND {column} <= ?"), w.end.as_deref())
    }

    fn load<T>(&self, conn: &mut DbConnection) -> StoreResult<Vec<T>>
    where
        T: QueryableByName<diesel::sqlite::Sqlite> + QueryableByName<diesel::pg::Pg> + 'static,
    {
        match conn {
            DbConnection::Sqlite(c) => {
                let mut q =
                    diesel::sql_query(self.text.clone()).into_boxed::<diesel::sqlite::Sqlite>();
                for b in &self.binds {
                    q = q.bind::<Text, _>(b.clone());
                }
                q.load(c)
            }
            DbConnection::Postgres(c) => {
                let mut q = diesel::sql_query(numbered(&self.text)).into_boxed::<diesel::pg::Pg>();
                for b in &self.binds {
                    q = q.bind::<Text, _>(b.clone());
                }
                q.load(c)
            }
        }
        .map_err(StoreError::from)
    }
}

/// `?` placeholders as PostgreSQL's `$1`, `$2`, ... (the statements here hold no other `?`).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// The sums of a set of usage records ([`SUMS`]).
#[derive(Debug, Clone, Default, PartialEq, QueryableByName)]
pub struct Sums {
    #[diesel(sql_type = BigInt)]
    pub records: i64,
    #[diesel(sql_type = BigInt)]
    pub input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub cost_nano_usd: i64,
}

impl Sums {
    /// Input and output tokens together.
    pub fn total_tokens(&self) -> i64 {
        self.input_tokens + self.output_tokens
    }
}

/// What a set of usage records adds up to.
#[derive(Debug, Clone, Default, PartialEq, QueryableByName)]
pub struct Totals {
    #[diesel(embed)]
    pub sums: Sums,
    #[diesel(sql_type = BigInt)]
    pub executions: i64,
    #[diesel(sql_type = BigInt)]
    pub conversations: i64,
    #[diesel(sql_type = BigInt)]
    pub messages: i64,
}

/// The usage of one group (an agent, a model, an entity, a time bucket).
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct Group {
    #[diesel(sql_type = Text)]
    pub group_key: String,
    #[diesel(embed)]
    pub sums: Sums,
}

const SUMS: &str = "COUNT(*) AS records, \
     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input_tokens, \
     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output_tokens, \
     CAST(COALESCE(SUM(cost_nano_usd), 0) AS BIGINT) AS cost_nano_usd";

/// Which usage records count: the organization's, in the window, optionally of one agent or
/// one value of another column.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub window: Window,
    pub agent_id: Option<String>,
    /// Only records whose `column` is set (and equals the value, when given).
    pub entity: Option<(GroupColumn, Option<String>)>,
}

/// A column or time bucket usage is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupColumn {
    Agent,
    Model,
    Execution,
    Conversation,
    Hour,
    Day,
    Month,
}

impl GroupColumn {
    fn expr(self) -> &'static str {
        match self {
            GroupColumn::Agent => "agent_id",
            GroupColumn::Model => "model_id",
            GroupColumn::Execution => "execution_id",
            GroupColumn::Conversation => "conversation_id",
            GroupColumn::Hour => "SUBSTR(created_at, 1, 13)",
            GroupColumn::Day => "SUBSTR(created_at, 1, 10)",
            GroupColumn::Month => "SUBSTR(created_at, 1, 7)",
        }
    }

    fn is_time(self) -> bool {
        matches!(
            self,
            GroupColumn::Hour | GroupColumn::Day | GroupColumn::Month
        )
    }
}

fn usage_where(sql: &mut Sql, org_id: &str, f: &UsageFilter) {
    sql.bind(" FROM usage_records WHERE org_id = ?", org_id);
    sql.window("created_at", &f.window);
    sql.bind_if(" AND agent_id = ?", f.agent_id.as_deref());
    if let Some((column, value)) = &f.entity {
        sql.push(&format!(" AND {} IS NOT NULL", column.expr()));
        sql.bind_if(&format!(" AND {} = ?", column.expr()), value.as_deref());
    }
}

/// The totals of the matching usage records.
pub fn totals(conn: &mut DbConnection, org_id: &str, f: &UsageFilter) -> StoreResult<Totals> {
    let mut sql = Sql::new(
        "SELECT COUNT(DISTINCT execution_id) AS executions, \
         COUNT(DISTINCT conversation_id) AS conversations, \
         COUNT(DISTINCT message_id) AS messages, ",
    );
    sql.push(SUMS);
    usage_where(&mut sql, org_id, f);
    Ok(sql
        .load::<Totals>(conn)?
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// The matching usage records grouped by `by`: time buckets in time order, others most
/// expensive first; at most `limit` groups.
pub fn grouped(
    conn: &mut DbConnection, org_id: &str, f: &UsageFilter, by: GroupColumn, limit: Option<i64>,
) -> StoreResult<Vec<Group>> {
    let mut sql = Sql::new(&format!("SELECT {} AS group_key, ", by.expr()));
    sql.push(SUMS);
    usage_where(&mut sql, org_id, f);
    if !by.is_time() {
        sql.push(&format!(" AND {} IS NOT NULL", by.expr()));
    }
    sql.push(&format!(" GROUP BY {}", by.expr()));
    if by.is_time() {
        sql.push(" ORDER BY group_key ASC");
    } else {
        sql.push(" ORDER BY cost_nano_usd DESC, group_key ASC");
    }
    if let Some(n) = limit {
        sql.push(&format!(" LIMIT {n}"));
    }
    sql.load(conn)
}

/// A count per key.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct Count {
    #[diesel(sql_type = Text)]
    pub group_key: String,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
    /// A second figure: messages of the conversations counted, or characters of the messages.
    #[diesel(sql_type = BigInt)]
    pub extra: i64,
}

/// Conversations started in the window, grouped by `by` (`c.agent_id` or a day of
/// `c.created_at`) and listed in `order`, with how many messages they hold.
fn conversations_by(
    conn: &mut DbConnection, org_id: &str, window: &Window, agent_id: Option<&str>,
    (by, order): (&str, &str),
) -> StoreResult<Vec<Count>> {
    let mut sql = Sql::new(&format!(
        "SELECT {by} AS group_key, COUNT(DISTINCT c.id) AS n, COUNT(m.id) AS extra \
         FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id"
    ));
    sql.bind(" WHERE c.org_id = ?", org_id);
    sql.window("c.created_at", window);
    sql.bind_if(" AND c.agent_id = ?", agent_id);
    sql.push(&format!(" GROUP BY {by} ORDER BY {order}"));
    sql.load(conn)
}

/// Messages sent in the window, grouped by `by` (`c.agent_id`, `m.role` or a day of
/// `m.created_at`), with their characters.
fn messages_by(
    conn: &mut DbConnection, org_id: &str, window: &Window, agent_id: Option<&str>, by: &str,
) -> StoreResult<Vec<Count>> {
    let mut sql = Sql::new(&format!(
        "SELECT {by} AS group_key, COUNT(*) AS n, \
         CAST(COALESCE(SUM(LENGTH(m.content)), 0) AS BIGINT) AS extra \
         FROM messages m JOIN conversations c ON c.id = m.conversation_id"
    ));
    sql.bind(" WHERE m.org_id = ?", org_id);
    sql.window("m.created_at", window);
    sql.bind_if(" AND c.agent_id = ?", agent_id);
    sql.push(&format!(" GROUP BY {by} ORDER BY group_key ASC"));
    sql.load(conn)
}

/// What conversation analytics read.
#[derive(Debug, Clone, Default)]
pub struct ConversationFigures {
    pub by_agent: Vec<Count>,
    pub messages_by_agent: Vec<Count>,
    pub messages_by_role: Vec<Count>,
    pub conversations_by_day: Vec<Count>,
    pub messages_by_day: Vec<Count>,
}

/// Conversation and message counts of the window.
pub fn conversation_figures(
    conn: &mut DbConnection, org_id: &str, window: &Window, agent_id: Option<&str>,
) -> StoreResult<ConversationFigures> {
    let by_agent = ("c.agent_id", "n DESC, group_key ASC");
    let by_day = ("SUBSTR(c.created_at, 1, 10)", "group_key ASC");
    let messages =
        |conn: &mut DbConnection, by: &str| messages_by(conn, org_id, window, agent_id, by);
    Ok(ConversationFigures {
        by_agent: conversations_by(conn, org_id, window, agent_id, by_agent)?,
        messages_by_agent: messages(conn, "c.agent_id")?,
        messages_by_role: messages(conn, "m.role")?,
        conversations_by_day: conversations_by(conn, org_id, window, agent_id, by_day)?,
        messages_by_day: messages(conn, "SUBSTR(m.created_at, 1, 10)")?,
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered("a = ? AND b >= ? AND c <= ?"),
            "a = $1 AND b >= $2 AND c <= $3"
        );
    }
}
