//! Conversation and message rows. A message changes its conversation (count, version), so
//! every message insert runs with the conversation's update in one transaction.

use diesel::prelude::*;

use super::schema::{conversations as c, messages as m, usage_records as u};
use super::sql::Page;
use super::types::Json;
use super::{DbConnection, MultiBackend, StoreError, StoreResult};
use crate::db::executions::{ExecutionRow, ExecutionStatus};

/// Most earlier messages given to the model as history.
pub const HISTORY_LIMIT: i64 = 50;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = c)]
pub struct ConversationRow {
    pub id: String,
    pub org_id: String,
    pub agent_id: String,
    pub user_id: Option<String>,
    pub title: Option<String>,
    /// Anything the client keeps with it (a JSON object).
    pub metadata: Json<serde_json::Value>,
    pub message_count: i64,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = m)]
pub struct MessageRow {
    pub id: String,
    pub org_id: String,
    pub conversation_id: String,
    pub role: String,
    pub content: String,
    pub execution_id: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub created_at: String,
}

super::crud::identified!(ConversationRow, MessageRow);

super::crud::inserts!(insert, c, ConversationRow);

pub fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<ConversationRow> {
    c::table
        .filter(c::org_id.eq(org_id))
        .filter(c::id.eq(id))
        .select(ConversationRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

fn filtered<'a>(org_id: &'a str, agent_id: Option<&'a str>) -> c::BoxedQuery<'a, MultiBackend> {
    let mut q = c::table.filter(c::org_id.eq(org_id)).into_boxed();
    if let Some(a) = agent_id {
        q = q.filter(c::agent_id.eq(a));
    }
    q
}

/// A page, newest first, and the number of matching rows.
pub fn list(
    conn: &mut DbConnection, org_id: &str, agent_id: Option<&str>, page: &Page,
) -> StoreResult<(Vec<ConversationRow>, i64)> {
    let filtered = || filtered(org_id, agent_id);
    super::crud::newest_first!(conn, c, ConversationRow, filtered, page)
}

/// Changes title and metadata when `check` accepts the current row (an `If-Match`).
pub fn update(
    conn: &mut DbConnection, org_id: &str, id: &str,
    change: impl FnOnce(&ConversationRow) -> StoreResult<(Option<String>, Json<serde_json::Value>)>,
) -> StoreResult<ConversationRow> {
    super::write_transaction(conn, |conn| {
        let current = get(conn, org_id, id)?;
        let (title, metadata) = change(&current)?;
        diesel::update(c::table.filter(c::id.eq(id)))
            .set((
                c::title.eq(title),
                c::metadata.eq(metadata),
                c::version.eq(current.version + 1),
                c::updated_at.eq(crate::ids::now()),
            ))
            .execute(conn)?;
        get(conn, org_id, id)
    })
}

/// Deletes the conversation and (by cascade, and explicitly for engines without it) its
/// messages.
pub fn delete(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<()> {
    super::write_transaction(conn, |conn| {
        get(conn, org_id, id)?;
        diesel::delete(m::table.filter(m::conversation_id.eq(id))).execute(conn)?;
        diesel::delete(c::table.filter(c::id.eq(id))).execute(conn)?;
        Ok(())
    })
}

/// Adds a message and counts it on its conversation (inside the caller's transaction).
pub fn add_message(conn: &mut DbConnection, row: &MessageRow) -> StoreResult<()> {
    diesel::insert_into(m::table).values(row).execute(conn)?;
    diesel::update(c::table.filter(c::id.eq(&row.conversation_id)))
        .set((
            c::message_count.eq(c::message_count + 1),
            c::version.eq(c::version + 1),
            c::updated_at.eq(&row.created_at),
        ))
        .execute(conn)?;
    Ok(())
}

/// A page of messages, oldest first, and their number.
pub fn messages(
    conn: &mut DbConnection, conversation_id: &str, page: &Page,
) -> StoreResult<(Vec<MessageRow>, i64)> {
    let mut q = m::table
        .filter(m::conversation_id.eq(conversation_id))
        .order(m::id.asc())
        .limit(page.limit)
        .into_boxed();
    q = match &page.after_id {
        Some(after) => q.filter(m::id.gt(after.clone())),
        None => q.offset(page.offset),
    };
    let rows: Vec<MessageRow> = q.select(MessageRow::as_select()).load(conn)?;
    let total = page.total(rows.len(), || {
        m::table
            .filter(m::conversation_id.eq(conversation_id))
            .count()
            .get_result::<i64>(conn)
    })?;
    Ok((rows, total))
}

/// The latest `limit` messages, oldest first.
pub fn latest(
    conn: &mut DbConnection, conversation_id: &str, limit: i64,
) -> StoreResult<Vec<MessageRow>> {
    let mut rows: Vec<MessageRow> = m::table
        .filter(m::conversation_id.eq(conversation_id))
        .order(m::id.desc())
        .limit(limit)
        .select(MessageRow::as_select())
        .load(conn)?;
    rows.reverse();
    Ok(rows)
}

/// The message of `role` an execution wrote or answered.
pub fn message_of(
    conn: &mut DbConnection, execution_id: &str, role: &str,
) -> StoreResult<Option<MessageRow>> {
    m::table
        .filter(m::execution_id.eq(execution_id))
        .filter(m::role.eq(role))
        .select(MessageRow::as_select())
        .first(conn)
        .optional()
        .map_err(StoreError::from)
}

/// The history an execution answering a conversation's message sees: the earlier messages
/// (not the one it answers, which is its input), oldest first.
pub fn history(conn: &mut DbConnection, execution: &ExecutionRow) -> StoreResult<Vec<MessageRow>> {
    let Some(conversation) = execution.conversation_id() else {
        return Ok(Vec::new());
    };
    let asked = message_of(conn, &execution.id, "user")?;
    let mut q = m::table
        .filter(m::conversation_id.eq(conversation))
        .order(m::id.desc())
        .limit(HISTORY_LIMIT)
        .into_boxed();
    if let Some(asked) = &asked {
        q = q.filter(m::id.lt(asked.id.clone()));
    }
    let mut rows: Vec<MessageRow> = q.select(MessageRow::as_select()).load(conn)?;
    rows.reverse();
    Ok(rows)
}

/// What a finished execution adds to its conversation, in its finishing transaction: the
/// assistant's reply (when it succeeded), linked from the execution's usage record.
pub fn record_reply(conn: &mut DbConnection, execution: &ExecutionRow) -> StoreResult<()> {
    let Some(conversation) = execution.conversation_id() else {
        return Ok(());
    };
    let (Some(text), ExecutionStatus::Succeeded) = (&execution.result, execution.status) else {
        return Ok(());
    };
    if c::table
        .filter(c::id.eq(conversation))
        .count()
        .get_result::<i64>(conn)?
        == 0
    {
        return Ok(()); // deleted meanwhile
    }
    let reply = MessageRow {
        id: crate::ids::new_id("msg"),
        org_id: execution.org_id.clone(),
        conversation_id: conversation.to_string(),
        role: "assistant".into(),
        content: text.clone(),
        execution_id: Some(execution.id.clone()),
        input_tokens: execution.input_tokens,
        output_tokens: execution.output_tokens,
        created_at: crate::ids::now(),
    };
    add_message(conn, &reply)?;
    diesel::update(u::table.filter(u::execution_id.eq(&execution.id)))
        .set(u::message_id.eq(&reply.id))
        .execute(conn)?;
    Ok(())
}
