//! The agents resource.
//!
//! Rows and API types meet in the wire format: a row becomes the JSON the spec describes and
//! is parsed into the generated type, and a request body is split back into columns. So a new
//! field in the spec needs no change here unless it must be a column of its own.
//!
//! Agents follow the one CRUD shape ([`super::resource`]) where they can: reads, lists and
//! creates go through it. What is their own: every write publishes an event in its
//! transaction, a save checks what the agent refers to ([`refs`]), and lists sort on any of
//! several fields (keyset paging on that field, with the shared cursor).

use agentplane_api::Json;
use agentplane_api::models::{
    self, Agent, AgentBulkResult, AgentBulkUpdate, AgentField, AgentFieldset, AgentList,
    ListAgentsExpandItem, ListAgentsOrder, Scope,
};
use agentplane_api::*;
use poem_openapi::types::{ParseFromJSON, ToJSON};
use serde_json::{Map, Value};

use super::Handlers;
use super::idem::{self, NewKeyed};
use super::paging::{etag, etag_matches};
use super::resource::{Resource, created};
use crate::auth::Caller;
use crate::db::agents::{self as store, AgentChanges, AgentRow, AgentStatus, ListQuery, SortField};
use crate::db::crud::Identified;
use crate::db::sql::Page;
use crate::db::types::same_variants;
use crate::db::{DbConnection, StoreError, StoreResult};
use crate::error::{Failure, Kind, detail, store_error};

mod refs;

pub(crate) const NOT_FOUND: &str = "AGENT_NOT_FOUND";
/// Fields that are columns of their own; everything else lives in the `body` document.
const COLUMNS: &[&str] = &[
    "id",
    "name",
    "type",
    "status",
    "description",
    "version",
    "created_at",
    "updated_at",
];
/// List fields every stored agent has, empty by default.
const DEFAULT_ARRAYS: &[&str] = &["capabilities", "tools", "topics", "tags", "plugins"];
const DEFAULT_OBJECTS: &[&str] = &["metadata", "platforms"];

fn corrupt(row: &AgentRow, what: &str) -> StoreError {
    StoreError::Corrupt(format!("agent {}: {what}", row.id))
}

same_variants!(AgentStatus <=> models::AgentStatus {
    Active, Inactive, Training, Error
});

/// A column's value, borrowed from its row.
#[derive(Debug, Clone, Copy)]
enum Column<'a> {
    Text(&'a str),
    Integer(i64),
}

impl Column<'_> {
    fn value(self) -> Value {
        match self {
            Column::Text(s) => s.into(),
            Column::Integer(n) => n.into(),
        }
    }

    /// Appends the value as JSON.
    fn write(self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        match self {
            Column::Text(s) => serde_json::to_writer(out, s),
            Column::Integer(n) => serde_json::to_writer(out, &n),
        }
    }
}

/// The agent's fields that are columns of their own ([`COLUMNS`]), as the spec names them;
/// `None` for an absent description.
fn column_values(row: &AgentRow) -> [(&'static str, Option<Column<'_>>); 8] {
    [
        ("id", Some(Column::Text(&row.id))),
        ("name", Some(Column::Text(&row.content.name))),
        ("type", Some(Column::Text(&row.content.agent_type))),
        ("status", Some(Column::Text(row.content.status.as_str()))),
        (
            "description",
            row.content.description.as_deref().map(Column::Text),
        ),
        ("version", Some(Column::Integer(row.version))),
        ("created_at", Some(Column::Text(&row.created_at))),
        ("updated_at", Some(Column::Text(&row.updated_at))),
    ]
}

pub(crate) fn row_to_json(row: &AgentRow) -> Result<Map<String, Value>, StoreError> {
    let mut obj: Map<String, Value> =
        serde_json::from_str(&row.content.body).map_err(|e| corrupt(row, &e.to_string()))?;
    for (key, value) in column_values(row) {
        if let Some(value) = value {
            obj.insert(key.into(), value.value());
        }
    }
    Ok(obj)
}

pub(crate) fn row_to_agent(row: &AgentRow) -> Result<Agent, StoreError> {
    let obj = row_to_json(row)?;
    Agent::parse_from_json(Some(Value::Object(obj))).map_err(|e| corrupt(row, e.message()))
}

/// `row` as the JSON text of its [`Agent`], written straight from the row (its columns, then
/// the stored body's members) instead of parsed into typed values and serialized again: the
/// body was written from a validated agent ([`split`]) and holds none of the columns. A body
/// holding a `null` (which the typed answer leaves out) takes the typed way. Debug builds
/// check that both ways give the same JSON.
pub(crate) fn agent_json(row: &AgentRow) -> Result<Json<Agent>, StoreError> {
    let body = row.content.body.trim();
    let members = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .filter(|_| !body.contains("null"));
    let Some(members) = members else {
        return row_to_agent(row).map(Json);
    };
    let mut out = Vec::with_capacity(body.len() + 200 + row.content.name.len());
    for (key, value) in column_values(row) {
        if let Some(value) = value {
            out.push(if out.is_empty() { b'{' } else { b',' });
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            value
                .write(&mut out)
                .map_err(|e| corrupt(row, &e.to_string()))?;
        }
    }
    if !members.trim().is_empty() {
        out.push(b',');
        out.extend_from_slice(members.as_bytes());
    }
    out.push(b'}');
    // Every piece was UTF-8 text.
    let out = String::from_utf8(out).map_err(|e| corrupt(row, &e.to_string()))?;
    #[cfg(debug_assertions)]
    {
        let written: Value =
            serde_json::from_str(&out).map_err(|e| corrupt(row, &e.to_string()))?;
        let typed = row_to_agent(row)?.to_json();
        assert_eq!(
            Some(written),
            typed,
            "agent {}: the written JSON differs from the typed",
            row.id
        );
    }
    Ok(Json::Text(out))
}

impl Resource for Agent {
    type Row = AgentRow;
    const NOT_FOUND: &'static str = NOT_FOUND;

    fn from_row(row: &AgentRow) -> Result<Agent, StoreError> {
        row_to_agent(row)
    }
}

/// An agent of a list page: its row, and what `expand` found for it.
struct Listed {
    row: AgentRow,
    expanded: Option<Value>,
}

impl Identified for Listed {
    fn id(&self) -> &str {
        &self.row.id
    }
}

/// `row`'s JSON (`obj`, as [`row_to_json`] reads it) with only `fields`, and `expanded`.
fn row_to_fieldset(
    row: &AgentRow, mut obj: Map<String, Value>, fields: Option<&[AgentField]>,
    expanded: Option<Value>,
) -> Result<AgentFieldset, StoreError> {
    if let Some(fields) = fields {
        obj.retain(|k, _| k == "id" || fields.iter().any(|f| f.as_str() == k));
    }
    if let Some(expanded) = expanded {
        obj.insert("expanded".into(), expanded);
    }
    AgentFieldset::parse_from_json(Some(Value::Object(obj))).map_err(|e| corrupt(row, e.message()))
}

/// The ids in an agent's `key` array (`knowledge_bases`, `tools`).
fn linked_ids(agent: &Map<String, Value>, key: &str) -> Vec<String> {
    agent
        .get(key)
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `expanded` for each of `rows` (read as JSON): the knowledge bases and tools their ids
/// name, each looked up once for the page, in the order the agent lists them.
fn expansions(
    conn: &mut DbConnection, org_id: &str, rows: &[AgentRow], expand: &[ListAgentsExpandItem],
) -> Result<Vec<Option<Value>>, StoreError> {
    if expand.is_empty() {
        return Ok(vec![None; rows.len()]);
    }
    let agents = rows
        .iter()
        .map(row_to_json)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<Map<String, Value>> = vec![Map::new(); agents.len()];
    for item in expand {
        let key = item.as_str();
        let per_row: Vec<Vec<String>> = agents.iter().map(|a| linked_ids(a, key)).collect();
        let mut all: Vec<String> = per_row.iter().flatten().cloned().collect();
        all.sort();
        all.dedup();
        let found: std::collections::BTreeMap<String, Value> = match item {
            ListAgentsExpandItem::KnowledgeBases => {
                super::knowledge::knowledge_bases_among(conn, org_id, &all)?
                    .into_iter()
                    .map(|(id, kb)| (id, kb.to_json().unwrap_or_default()))
                    .collect()
            }
            ListAgentsExpandItem::Tools => super::tools::tools_among(conn, org_id, &all)?
                .into_iter()
                .map(|(id, tool)| (id, tool.to_json().unwrap_or_default()))
                .collect(),
        };
        for (ids, expanded) in per_row.iter().zip(out.iter_mut()) {
            let objects = ids.iter().filter_map(|id| found.get(id).cloned()).collect();
            expanded.insert(key.to_string(), Value::Array(objects));
        }
    }
    Ok(out.into_iter().map(|m| Some(Value::Object(m))).collect())
}

/// Splits the spec's JSON of an agent (as sent, or merged for a patch) into columns. Platform
/// tokens move to `secrets`; a platform sent without a token keeps the one stored before.
pub(crate) fn split(
    mut obj: Map<String, Value>, previous_secrets: &str,
) -> Result<AgentChanges, StoreError> {
    let text = |obj: &mut Map<String, Value>, key: &str| match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let name = text(&mut obj, "name")
        .ok_or_else(|| StoreError::Corrupt("an agent needs a name".into()))?;
    let agent_type = text(&mut obj, "type").unwrap_or_else(|| "assistant".to_string());
    let status = match text(&mut obj, "status") {
        Some(s) => s
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("an agent's status: {e}")))?,
        None => AgentStatus::Active,
    };
    let description = text(&mut obj, "description");
    for key in COLUMNS {
        obj.remove(*key);
    }
    for key in DEFAULT_ARRAYS {
        obj.entry(key.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
    }
    for key in DEFAULT_OBJECTS {
        obj.entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let previous: Map<String, Value> = serde_json::from_str(previous_secrets).unwrap_or_default();
    let mut secrets = Map::new();
    if let Some(Value::Object(platforms)) = obj.get_mut("platforms") {
        for (platform, connection) in platforms.iter_mut() {
            let Value::Object(connection) = connection else {
                continue;
            };
            let token = match connection.remove("token") {
                Some(Value::String(t)) => Some(Value::String(t)),
                _ => previous.get(platform).cloned(),
            };
            connection.insert("token_set".into(), Value::Bool(token.is_some()));
            if let Some(token) = token {
                secrets.insert(platform.clone(), token);
            }
        }
    }
    Ok(AgentChanges {
        name,
        agent_type,
        status,
        description,
        body: Value::Object(obj).to_string(),
        secrets: Value::Object(secrets).to_string(),
    })
}

/// A partial update as a merge: fields given replace, `null` clears.
fn patch_merger(
    patch: Map<String, Value>,
) -> impl Fn(Map<String, Value>) -> Map<String, Value> + Send + 'static {
    move |mut current: Map<String, Value>| {
        for (key, value) in patch.clone() {
            if value.is_null() {
                current.remove(&key);
            } else {
                current.insert(key, value);
            }
        }
        current
    }
}

fn to_object(value: Option<Value>) -> Map<String, Value> {
    match value {
        Some(Value::Object(obj)) => obj,
        _ => Map::new(),
    }
}

/// Publishes `agent.created` or `agent.updated` with the agent as its data, in the caller's
/// transaction.
fn publish_agent(
    conn: &mut DbConnection, event_type: &str, row: &AgentRow,
) -> Result<(), StoreError> {
    let data = Value::Object(row_to_json(row)?);
    crate::events::publish(conn, &row.org_id, event_type, Some(&row.id), data).map(|_| ())
}

/// The sort a list request asks for: field and direction.
fn sort_of(params: &ListAgentsParams) -> (SortField, bool) {
    let explicit_desc = params.order.map(|o| o == ListAgentsOrder::Desc);
    match params.sort {
        None => (SortField::CreatedAt, explicit_desc.unwrap_or(true)),
        Some(sort) => {
            let wire = sort.as_str();
            match wire.strip_prefix('-') {
                Some(field) => (
                    SortField::parse(field).unwrap_or(SortField::CreatedAt),
                    true,
                ),
                None => (
                    SortField::parse(wire).unwrap_or(SortField::CreatedAt),
                    explicit_desc.unwrap_or(false),
                ),
            }
        }
    }
}

/// A 400 on the query parameter `field`.
fn bad_parameter(field: &str, code: &str, message: &str, request_id: &str) -> Failure {
    Failure::with_details(
        Kind::BadRequest,
        "VALIDATION_ERROR",
        message,
        vec![detail(field, code, message)],
        request_id,
    )
}

/// A `filter[created_at]` bound as stored; anything but an RFC 3339 date-time is a 400.
fn time_bound(
    field: &str, value: Option<&str>, request_id: &str,
) -> Result<Option<String>, Failure> {
    value
        .map(|v| {
            crate::ids::normalize_time(v).ok_or_else(|| {
                bad_parameter(field, "format", "not an RFC 3339 date-time", request_id)
            })
        })
        .transpose()
}

/// The storage query of a list request (for its first page: the list sets the page).
fn list_query(params: &ListAgentsParams, request_id: &str) -> Result<ListQuery, Failure> {
    let (sort, descending) = sort_of(params);
    let created_gte = params.filter_created_at_gte.as_deref();
    let created_lte = params.filter_created_at_lte.as_deref();
    Ok(ListQuery {
        agent_type: params.type_.clone().or(params.filter_type.clone()),
        status: params.status.or(params.filter_status).map(Into::into),
        search: params.search.clone(),
        created_gte: time_bound("filter[created_at][gte]", created_gte, request_id)?,
        created_lte: time_bound("filter[created_at][lte]", created_lte, request_id)?,
        sort,
        descending,
        page: Page::default(),
    })
}

/// A 403 unless the caller may read everything `expand` names.
fn check_expand_scopes(caller: &Caller, expand: &[ListAgentsExpandItem]) -> Result<(), Failure> {
    for item in expand {
        let scope = match item {
            ListAgentsExpandItem::KnowledgeBases => Scope::ReadKnowledge,
            ListAgentsExpandItem::Tools => Scope::ReadTools,
        };
        if !caller.scopes.contains(&scope) {
            let message = format!(
                "expanding {} needs the scope {}",
                item.as_str(),
                scope.as_str()
            );
            return Err(Failure::with_details(
                Kind::Forbidden,
                "INSUFFICIENT_PERMISSIONS",
                message.clone(),
                vec![detail("expand", "scope", message)],
                &caller.request_id,
            ));
        }
    }
    Ok(())
}

/// The new row of an agent created from `changes` in `org_id`.
pub(crate) fn new_row(org_id: &str, changes: AgentChanges) -> AgentRow {
    AgentRow::new(org_id, crate::ids::new_id("agent"), changes)
}

impl Handlers {
    /// Creates `row` once per the `Idempotency-Key` of `keyed`, after `also` (in the same
    /// transaction; the marketplace writes the agent's prompt template there), when what
    /// `request` (the fields the caller set) refers to exists; publishes `agent.created`.
    pub(crate) async fn insert_agent(
        &self, caller: &Caller, keyed: NewKeyed, row: AgentRow, request: Map<String, Value>,
        also: impl Fn(&mut DbConnection) -> StoreResult<()> + Send + 'static,
    ) -> Result<AgentRow, Failure> {
        let (org, rid) = (caller.org_id.clone(), caller.request_id.clone());
        let fetch_org = org.clone();
        idem::create_resource_then(
            &self.store,
            keyed,
            move |conn| {
                if let Err(refused) = refs::check(conn, &org, &request, &rid)? {
                    return Ok(Err(refused));
                }
                also(conn)?;
                store::insert(conn, &row)?;
                publish_agent(conn, "agent.created", &row)?;
                Ok(Ok(row.clone()))
            },
            move |conn, id| store::get(conn, &fetch_org, id),
            |_| self.events.wake(),
            NOT_FOUND,
            &caller.request_id,
        )
        .await
    }

    /// Applies `merge` (current JSON → new JSON) under the `If-Match` precondition, when what
    /// `request` (the fields the caller set) refers to exists; publishes `agent.updated`.
    async fn change_agent(
        &self, caller: &Caller, id: String, if_match: Option<String>, request: Map<String, Value>,
        merge: impl FnOnce(Map<String, Value>) -> Map<String, Value> + Send + 'static,
    ) -> Result<(Agent, String), Failure> {
        let rid = caller.request_id.clone();
        let row = self
            .run_for(caller, NOT_FOUND, move |conn, org| {
                let change = |conn: &mut DbConnection, current: &AgentRow| {
                    if let Some(header) = &if_match
                        && !etag_matches(header, &etag(current.version))
                    {
                        return Err(StoreError::PreconditionFailed);
                    }
                    if let Err(refused) = refs::check(conn, org, &request, &rid)? {
                        return Ok(Err(refused));
                    }
                    split(merge(row_to_json(current)?), &current.content.secrets).map(Ok)
                };
                let publish = |conn: &mut DbConnection, row: &AgentRow| {
                    publish_agent(conn, "agent.updated", row)
                };
                store::update_then(conn, org, &id, change, publish)
            })
            .await??;
        self.events.wake();
        let agent = row_to_agent(&row).map_err(store_error(NOT_FOUND, &caller.request_id))?;
        Ok((agent, etag(row.version)))
    }

    /// Merges `body.updates` into every agent `body.filter` matches, all or none, when what
    /// the updates refer to exists.
    async fn bulk_change_agents(
        &self, caller: &Caller, body: AgentBulkUpdate,
    ) -> Result<AgentBulkResult, Failure> {
        let filter = store::BulkFilter {
            ids: body.filter.ids,
            agent_type: body.filter.type_.map(|t| t.as_str().to_string()),
            status: body.filter.status.map(Into::into),
            search: body.filter.search,
        };
        let updates = to_object(body.updates.to_json());
        let merge = patch_merger(updates.clone());
        let rid = caller.request_id.clone();
        let outcome = self
            .run_for(caller, NOT_FOUND, move |conn, org| {
                if let Err(refused) = refs::check(conn, org, &updates, &rid)? {
                    return Ok(Err(refused));
                }
                store::bulk_update(conn, org, &filter, |current| {
                    let changes = split(merge(row_to_json(current)?), &current.content.secrets)?;
                    let same = changes.name == current.content.name
                        && changes.agent_type == current.content.agent_type
                        && changes.status == current.content.status
                        && changes.description == current.content.description
                        && changes.body == current.content.body
                        && changes.secrets == current.content.secrets;
                    Ok::<_, StoreError>((!same).then_some(changes))
                })
                .and_then(|inner| inner)
                .map(Ok)
            })
            .await??;
        Ok(AgentBulkResult {
            matched: outcome.matched,
            updated: i64::try_from(outcome.updated.len()).unwrap_or(i64::MAX),
            updated_ids: outcome.updated,
        })
    }

    /// Deletes the agent and publishes `agent.deleted`.
    async fn remove_agent(&self, caller: &Caller, id: String) -> Result<(), Failure> {
        self.run_for(caller, NOT_FOUND, move |conn, org| {
            crate::db::write_transaction(conn, |conn| {
                let row = store::get(conn, org, &id)?;
                store::delete(conn, org, &id)?;
                let data = serde_json::json!({"id": row.id, "name": row.content.name});
                crate::events::publish(conn, org, "agent.deleted", Some(&id), data)
            })
        })
        .await?;
        self.events.wake();
        Ok(())
    }
}

impl AgentsApi for Handlers {
    async fn list_agents(
        &self, caller: Caller, params: ListAgentsParams,
    ) -> Reply<ListAgentsResponse> {
        let query = list_query(&params, &caller.request_id)?;
        let expand = params.expand.clone().unwrap_or_default();
        check_expand_scopes(&caller, &expand)?;
        let list = move |conn: &mut DbConnection, org: &str, page: &Page| {
            let query = ListQuery {
                page: page.clone(),
                ..query
            };
            let (rows, total) = store::list(conn, org, &query)?;
            let expanded = expansions(conn, org, &rows, &expand)?;
            let listed = rows.into_iter().zip(expanded);
            let listed = listed.map(|(row, expanded)| Listed { row, expanded });
            Ok((listed.collect::<Vec<_>>(), total))
        };
        let fields = params.fields.clone();
        // Each agent as JSON text: written from its row ([`agent_json`]) unless `fields` or
        // `expand` shape it, and the page around them, so no agent is rebuilt as typed values.
        let item = |l: &Listed| -> Result<String, StoreError> {
            let whole = l.expanded.is_none() && fields.is_none();
            if whole {
                return Ok(agent_json(&l.row)?.into_text());
            }
            let obj = row_to_json(&l.row)?;
            let expanded = l.expanded.clone();
            let fieldset = row_to_fieldset(&l.row, obj, fields.as_deref(), expanded)?;
            Ok(Json(fieldset).into_text())
        };
        let (data, pagination) = self
            .page_of(&caller, &params, NOT_FOUND, list, item)
            .await?;
        let pagination = Json(pagination).into_text();
        let items: usize = data.iter().map(|d| d.len() + 1).sum();
        let mut page = String::with_capacity(items + pagination.len() + 32);
        page.push_str("{\"data\":[");
        for (i, item) in data.iter().enumerate() {
            if i > 0 {
                page.push(',');
            }
            page.push_str(item);
        }
        page.push_str("],\"pagination\":");
        page.push_str(&pagination);
        page.push('}');
        Ok(ListAgentsResponse::Ok(Json::<AgentList>::Text(page)))
    }

    async fn create_agent(
        &self, caller: Caller, params: CreateAgentParams,
    ) -> Reply<CreateAgentResponse> {
        let rid = caller.request_id.as_str();
        let request = to_object(params.body.to_json());
        let changes = split(request.clone(), "{}").map_err(store_error(NOT_FOUND, rid))?;
        let row = new_row(&caller.org_id, changes);
        let keyed = NewKeyed::of(&params, &caller.org_id, &row.id);
        let no_more = |_: &mut DbConnection| Ok(());
        let row = self
            .insert_agent(&caller, keyed, row, request, no_more)
            .await?;
        let (agent, location, tag) = created::<Agent>(&params, &row, rid)?;
        Ok(CreateAgentResponse::Created(Json(agent), location, tag))
    }

    async fn get_agent(&self, caller: Caller, params: GetAgentParams) -> Reply<GetAgentResponse> {
        let answer = self.row_if_changed::<Agent>(&caller, params.agent_id, params.if_none_match);
        Ok(match answer.await? {
            Conditional::Fresh(row, tag) => {
                let agent = agent_json(&row).map_err(store_error(NOT_FOUND, &caller.request_id))?;
                GetAgentResponse::Ok(agent, tag)
            }
            Conditional::NotModified(tag) => GetAgentResponse::NotModified(tag),
        })
    }

    async fn replace_agent(
        &self, caller: Caller, params: ReplaceAgentParams,
    ) -> Reply<ReplaceAgentResponse> {
        let replacement = to_object(params.body.to_json());
        let (request, merge) = (replacement.clone(), move |_| replacement);
        let (agent, tag) = self
            .change_agent(&caller, params.agent_id, params.if_match, request, merge)
            .await?;
        Ok(ReplaceAgentResponse::Ok(Json(agent), tag))
    }

    async fn update_agent(
        &self, caller: Caller, params: UpdateAgentParams,
    ) -> Reply<UpdateAgentResponse> {
        let patch = to_object(params.body.to_json());
        let merge = patch_merger(patch.clone());
        let (agent, tag) = self
            .change_agent(&caller, params.agent_id, params.if_match, patch, merge)
            .await?;
        Ok(UpdateAgentResponse::Ok(Json(agent), tag))
    }

    async fn bulk_update_agents(
        &self, caller: Caller, params: BulkUpdateAgentsParams,
    ) -> Reply<BulkUpdateAgentsResponse> {
        let result = self.bulk_change_agents(&caller, params.body).await?;
        Ok(BulkUpdateAgentsResponse::Ok(Json(result)))
    }

    async fn delete_agent(
        &self, caller: Caller, params: DeleteAgentParams,
    ) -> Reply<DeleteAgentResponse> {
        self.remove_agent(&caller, params.agent_id).await?;
        Ok(DeleteAgentResponse::NoContent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::paging::PageRequest;

    #[test]
    fn etags_match_lists_weak_forms_and_stars() {
        assert!(etag_matches("\"3\"", "\"3\""));
        assert!(etag_matches("\"1\", W/\"3\"", "\"3\""));
        assert!(etag_matches("*", "\"3\""));
        assert!(!etag_matches("\"2\"", "\"3\""));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let page = PageRequest::new(1, 20, None, None, "r").expect("page");
        let next = page.pagination(20, Some("agent_x"), 45).next_cursor;
        assert_eq!(next.as_deref(), Some("20.agent_x"));
        let resumed = PageRequest::new(1, 20, next.as_deref(), None, "r").expect("cursor");
        assert_eq!(
            (resumed.offset, resumed.after_id.as_deref()),
            (20, Some("agent_x"))
        );
        assert!(PageRequest::new(1, 20, Some("not a cursor"), None, "r").is_err());
        assert!(PageRequest::new(1, 20, Some("99999999999999999999.agent_x"), None, "r").is_err());
    }

    #[test]
    fn split_moves_tokens_to_secrets_and_keeps_old_ones() {
        let input = serde_json::json!({
            "name": "bot",
            "platforms": {"discord": {"token": "t1", "guild_id": "g"}, "slack": {}}
        });
        let changes = split(to_object(Some(input)), r#"{"slack":"old"}"#).expect("splits");
        assert!(!changes.body.contains("t1") && !changes.body.contains("old"));
        let secrets: Value = serde_json::from_str(&changes.secrets).expect("json");
        assert_eq!(
            secrets,
            serde_json::json!({"discord": "t1", "slack": "old"})
        );
        let body: Value = serde_json::from_str(&changes.body).expect("json");
        assert_eq!(body["platforms"]["discord"]["token_set"], true);
        assert_eq!(body["tags"], serde_json::json!([]));
        assert_eq!(
            (changes.agent_type.as_str(), changes.status.as_str()),
            ("assistant", "active")
        );
    }
}
