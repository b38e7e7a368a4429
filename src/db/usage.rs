//! Usage records (written by execution, one per execution and per message that used a model)
//! and the aggregations read from them and from conversations and messages.
//!
//! Every aggregation is one `GROUP BY` in the database, written once as SQL both engines read
//! (`SUBSTR` on the fixed-width RFC 3339 text buckets times; sums are cast back to BIGINT,
//! which PostgreSQL would otherwise widen to NUMERIC).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::schema::usage_records as u;
use super::{DbConnection, StoreError, StoreResult};

/// One row of `usage_records`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = u)]
pub struct UsageRecord {
    pub id: String,
    pub org_id: String,
    pub agent_id: String,
    pub model_id: String,
    pub execution_id: Option<String>,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Billionths of a US dollar.
    pub cost_nano_usd: i64,
    pub created_at: String,
}

/// Records the usage of one execution or message. Execution calls this in the transaction
/// that finishes the execution or stores the message.
pub fn insert_usage_record(conn: &mut DbConnection, row: &UsageRecord) -> StoreResult<()> {
    diesel::insert_into(u::table).values(row).execute(conn)?;
    Ok(())
}

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

    /// `AND column >= ? AND column <= ?` for the window's bounds.
    fn window(&mut self, column: &str, w: &Window) -> &mut Self {
        if let Some(s) = &w.start {
            self.bind(&format!(" AND {column} >= ?"), s);
        }
        if let Some(e) = &w.end {
            self.bind(&format!(" AND {column} <= ?"), e);
        }
        self
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

/// What a set of usage records adds up to.
#[derive(Debug, Clone, Default, PartialEq, QueryableByName)]
pub struct Totals {
    #[diesel(sql_type = BigInt)]
    pub records: i64,
    #[diesel(sql_type = BigInt)]
    pub executions: i64,
    #[diesel(sql_type = BigInt)]
    pub conversations: i64,
    #[diesel(sql_type = BigInt)]
    pub messages: i64,
    #[diesel(sql_type = BigInt)]
    pub input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub cost_nano_usd: i64,
}

/// The usage of one group (an agent, a model, an entity, a time bucket).
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct Group {
    #[diesel(sql_type = Text)]
    pub group_key: String,
    #[diesel(sql_type = BigInt)]
    pub records: i64,
    #[diesel(sql_type = BigInt)]
    pub input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub output_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub cost_nano_usd: i64,
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
    if let Some(a) = &f.agent_id {
        sql.bind(" AND agent_id = ?", a);
    }
    if let Some((column, value)) = &f.entity {
        sql.push(&format!(" AND {} IS NOT NULL", column.expr()));
        if let Some(v) = value {
            sql.bind(&format!(" AND {} = ?", column.expr()), v);
        }
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
    conn: &mut DbConnection,
    org_id: &str,
    f: &UsageFilter,
    by: GroupColumn,
    limit: Option<i64>,
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

/// Conversations started in the window per agent, with how many messages they hold.
pub fn conversations_by_agent(
    conn: &mut DbConnection,
    org_id: &str,
    window: &Window,
    agent_id: Option<&str>,
) -> StoreResult<Vec<Count>> {
    let mut sql = Sql::new(
        "SELECT c.agent_id AS group_key, COUNT(DISTINCT c.id) AS n, COUNT(m.id) AS extra \
         FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id",
    );
    sql.bind(" WHERE c.org_id = ?", org_id);
    sql.window("c.created_at", window);
    if let Some(a) = agent_id {
        sql.bind(" AND c.agent_id = ?", a);
    }
    sql.push(" GROUP BY c.agent_id ORDER BY n DESC, group_key ASC");
    sql.load(conn)
}

/// Messages sent in the window, grouped by `by` (`c.agent_id`, `m.role` or a day of
/// `m.created_at`), with their characters.
fn messages_by(
    conn: &mut DbConnection,
    org_id: &str,
    window: &Window,
    agent_id: Option<&str>,
    by: &str,
) -> StoreResult<Vec<Count>> {
    let mut sql = Sql::new(&format!(
        "SELECT {by} AS group_key, COUNT(*) AS n, \
         CAST(COALESCE(SUM(LENGTH(m.content)), 0) AS BIGINT) AS extra \
         FROM messages m JOIN conversations c ON c.id = m.conversation_id"
    ));
    sql.bind(" WHERE m.org_id = ?", org_id);
    sql.window("m.created_at", window);
    if let Some(a) = agent_id {
        sql.bind(" AND c.agent_id = ?", a);
    }
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
    conn: &mut DbConnection,
    org_id: &str,
    window: &Window,
    agent_id: Option<&str>,
) -> StoreResult<ConversationFigures> {
    let by_agent = conversations_by_agent(conn, org_id, window, agent_id)?;
    let messages_by_agent = messages_by(conn, org_id, window, agent_id, "c.agent_id")?;
    let messages_by_role = messages_by(conn, org_id, window, agent_id, "m.role")?;
    let messages_by_day = messages_by(
        conn,
        org_id,
        window,
        agent_id,
        "SUBSTR(m.created_at, 1, 10)",
    )?;
    let mut sql = Sql::new(
        "SELECT SUBSTR(created_at, 1, 10) AS group_key, COUNT(*) AS n, CAST(0 AS BIGINT) AS extra \
         FROM conversations",
    );
    sql.bind(" WHERE org_id = ?", org_id);
    sql.window("created_at", window);
    if let Some(a) = agent_id {
        sql.bind(" AND agent_id = ?", a);
    }
    sql.push(" GROUP BY SUBSTR(created_at, 1, 10) ORDER BY group_key ASC");
    let conversations_by_day = sql.load(conn)?;
    Ok(ConversationFigures {
        by_agent,
        messages_by_agent,
        messages_by_role,
        conversations_by_day,
        messages_by_day,
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
