//! The agents resource.
//!
//! Rows and API types meet in the wire format: a row becomes the JSON the spec describes and
//! is parsed into the generated type, and a request body is split back into columns. So a new
//! field in the spec needs no change here unless it must be a column of its own.

use agentplane_api::models::{
    Agent, AgentBulkResult, AgentField, AgentFieldset, AgentList, ListAgentsExpandItem,
    ListAgentsOrder, Scope,
};
use agentplane_api::*;
use poem_openapi::payload::Json;
use poem_openapi::types::{ParseFromJSON, ToJSON};
use serde_json::{Map, Value};

use super::paging::{etag, etag_matches};
use super::{Handlers, pagination};
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::agents::{self as store, AgentChanges, AgentRow, ListQuery, SortField};
use crate::error::{Failure, Kind, detail};
use crate::failure_response;
use sha2::Digest;

failure_response!(ListAgentsResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });
failure_response!(CreateAgentResponse {
    Conflict => Conflict, BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, Unprocessable => UnprocessableEntity });
failure_response!(GetAgentResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(ReplaceAgentResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, PreconditionFailed => PreconditionFailed, Unprocessable => UnprocessableEntity });
failure_response!(UpdateAgentResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, PreconditionFailed => PreconditionFailed, Unprocessable => UnprocessableEntity });
failure_response!(BulkUpdateAgentsResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, Unprocessable => UnprocessableEntity });
failure_response!(DeleteAgentResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });

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

/// The agent as the spec's JSON.
pub(crate) fn row_to_json(row: &AgentRow) -> Result<Map<String, Value>, StoreError> {
    let mut obj: Map<String, Value> =
        serde_json::from_str(&row.body).map_err(|e| corrupt(row, &e.to_string()))?;
    obj.insert("id".into(), row.id.clone().into());
    obj.insert("name".into(), row.name.clone().into());
    obj.insert("type".into(), row.agent_type.clone().into());
    obj.insert("status".into(), row.status.clone().into());
    if let Some(d) = &row.description {
        obj.insert("description".into(), d.clone().into());
    }
    obj.insert("version".into(), row.version.into());
    obj.insert("created_at".into(), row.created_at.clone().into());
    obj.insert("updated_at".into(), row.updated_at.clone().into());
    Ok(obj)
}

pub(crate) fn row_to_agent(row: &AgentRow) -> Result<Agent, StoreError> {
    let obj = row_to_json(row)?;
    Agent::parse_from_json(Some(Value::Object(obj))).map_err(|e| corrupt(row, e.message()))
}

/// `row`'s JSON (`obj`, as [`row_to_json`] reads it) with only `fields`, and `expanded`.
fn row_to_fieldset(
    row: &AgentRow,
    mut obj: Map<String, Value>,
    fields: Option<&[AgentField]>,
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

/// `expanded` for each of `agents` (their JSON): the knowledge bases and tools their ids
/// name, each looked up once for the page, in the order the agent lists them.
fn expansions(
    conn: &mut crate::db::DbConnection,
    org_id: &str,
    agents: &[Map<String, Value>],
    expand: &[ListAgentsExpandItem],
) -> Result<Vec<Option<Value>>, StoreError> {
    if expand.is_empty() {
        return Ok(vec![None; agents.len()]);
    }
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
    mut obj: Map<String, Value>,
    previous_secrets: &str,
) -> Result<AgentChanges, StoreError> {
    let text = |obj: &mut Map<String, Value>, key: &str| match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let name = text(&mut obj, "name")
        .ok_or_else(|| StoreError::Corrupt("an agent needs a name".into()))?;
    let agent_type = text(&mut obj, "type").unwrap_or_else(|| "assistant".to_string());
    let status = text(&mut obj, "status").unwrap_or_else(|| "active".to_string());
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

/// What a create request did.
enum Created {
    New(AgentRow),
    /// A retry with a known Idempotency-Key: the agent the first request created.
    Replayed(AgentRow),
    /// The key was used with another body, or its agent is gone.
    KeyReused,
}

const CREATE_OPERATION: &str = "createAgent";

/// Inserts the agent, or replays the one created under the same Idempotency-Key. Two
/// concurrent requests with one key: the loser's insert of the key conflicts, and its second
/// pass finds the winner's agent.
fn create_once(
    conn: &mut crate::db::DbConnection,
    row: AgentRow,
    key: Option<String>,
    request_hash: String,
) -> Result<Created, StoreError> {
    use crate::db::idempotency::{self, IdempotencyRow};
    let mut last = None;
    for _ in 0..2 {
        let attempt = crate::db::write_transaction(conn, |conn| {
            if let Some(k) = &key
                && let Some(found) = idempotency::find(conn, &row.org_id, CREATE_OPERATION, k)?
            {
                if found.request_hash != request_hash {
                    return Ok(Created::KeyReused);
                }
                return match store::get(conn, &row.org_id, &found.resource_id) {
                    Ok(existing) => Ok(Created::Replayed(existing)),
                    Err(StoreError::NotFound) => Ok(Created::KeyReused),
                    Err(e) => Err(e),
                };
            }
            store::insert(conn, &row)?;
            publish_agent(conn, "agent.created", &row)?;
            if let Some(k) = &key {
                idempotency::insert(
                    conn,
                    &IdempotencyRow {
                        org_id: row.org_id.clone(),
                        operation: CREATE_OPERATION.to_string(),
                        idempotency_key: k.clone(),
                        request_hash: request_hash.clone(),
                        resource_id: row.id.clone(),
                        created_at: row.created_at.clone(),
                    },
                )?;
            }
            Ok(Created::New(row.clone()))
        });
        match attempt {
            Err(StoreError::Conflict(reason)) if key.is_some() => {
                last = Some(StoreError::Conflict(reason))
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| StoreError::Unavailable("idempotent create did not settle".into())))
}

/// Publishes `agent.created` or `agent.updated` with the agent as its data, in the caller's
/// transaction.
pub(crate) fn publish_agent(
    conn: &mut crate::db::DbConnection,
    event_type: &str,
    row: &AgentRow,
) -> Result<(), StoreError> {
    let data = Value::Object(row_to_json(row)?);
    crate::events::publish(conn, &row.org_id, event_type, Some(&row.id), data).map(|_| ())
}

/// The position a list page ends at, handed out as `next_cursor`: `<offset>.<last id>`.
#[derive(Debug, PartialEq)]
struct Cursor {
    offset: i64,
    id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        format!("{}.{}", self.offset, self.id)
    }

    /// The spec's pattern has been checked; this only fails on numbers out of range.
    fn decode(text: &str) -> Option<Self> {
        let (offset, id) = text.split_once('.')?;
        Some(Cursor {
            offset: offset.parse().ok()?,
            id: id.to_string(),
        })
    }
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

impl Handlers {
    async fn list(&self, caller: &Caller, params: ListAgentsParams) -> Result<AgentList, Failure> {
        let rid = caller.request_id.as_str();
        let bad = |field: &str, code: &str, message: &str| {
            Failure::with_details(
                Kind::BadRequest,
                "VALIDATION_ERROR",
                message,
                vec![detail(field, code, message)],
                rid,
            )
        };
        let (sort, descending) = sort_of(&params);
        let per_page = params.limit.unwrap_or(params.per_page);
        let cursor =
            match &params.cursor {
                Some(text) => Some(Cursor::decode(text).ok_or_else(|| {
                    bad("cursor", "invalid", "not a cursor this server hands out")
                })?),
                None => None,
            };
        let time = |field: &str, value: &Option<String>| match value {
            None => Ok(None),
            Some(v) => crate::ids::normalize_time(v)
                .map(Some)
                .ok_or_else(|| bad(field, "format", "not an RFC 3339 date-time")),
        };
        let offset = match &cursor {
            Some(c) => c.offset,
            None => (params.page - 1).saturating_mul(per_page),
        };
        let query = ListQuery {
            agent_type: params.type_.clone().or(params.filter_type.clone()),
            status: params
                .status
                .or(params.filter_status)
                .map(|s| s.as_str().to_string()),
            search: params.search.clone(),
            created_gte: time("filter[created_at][gte]", &params.filter_created_at_gte)?,
            created_lte: time("filter[created_at][lte]", &params.filter_created_at_lte)?,
            sort,
            descending,
            after_id: cursor.as_ref().map(|c| c.id.clone()),
            offset,
            limit: per_page,
        };
        let expand = params.expand.clone().unwrap_or_default();
        for item in &expand {
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
                    rid,
                ));
            }
        }
        let org = caller.org_id.clone();
        let (rows, total, agents, expanded) = self
            .store
            .run(move |conn| {
                let (rows, total) = store::list(conn, &org, &query)?;
                let agents = rows
                    .iter()
                    .map(row_to_json)
                    .collect::<Result<Vec<_>, _>>()?;
                let expanded = expansions(conn, &org, &agents, &expand)?;
                Ok((rows, total, agents, expanded))
            })
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        let end = offset + i64::try_from(rows.len()).unwrap_or(0);
        let next_cursor = match rows.last() {
            Some(last) if end < total => Some(
                Cursor {
                    offset: end,
                    id: last.id.clone(),
                }
                .encode(),
            ),
            _ => None,
        };
        let data = rows
            .iter()
            .zip(agents.into_iter().zip(expanded))
            .map(|(row, (agent, expanded))| {
                row_to_fieldset(row, agent, params.fields.as_deref(), expanded)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        Ok(AgentList {
            data,
            pagination: pagination(offset / per_page + 1, per_page, total, next_cursor),
        })
    }

    async fn create(
        &self,
        caller: &Caller,
        params: CreateAgentParams,
    ) -> Result<(Agent, AgentRow), Failure> {
        let rid = caller.request_id.as_str();
        let body = params.body.to_json();
        let request_hash = hex::encode(sha2::Sha256::digest(
            body.as_ref().map(Value::to_string).unwrap_or_default(),
        ));
        let changes =
            split(to_object(body), "{}").map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        let now = crate::ids::now();
        let row = AgentRow {
            id: crate::ids::new_id("agent"),
            org_id: caller.org_id.clone(),
            name: changes.name,
            agent_type: changes.agent_type,
            status: changes.status,
            description: changes.description,
            body: changes.body,
            secrets: changes.secrets,
            version: 1,
            created_at: now.clone(),
            updated_at: now,
        };
        let key = params.idempotency_key;
        let created = self
            .store
            .run(move |conn| create_once(conn, row, key, request_hash))
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        if matches!(created, Created::New(_)) {
            self.events.wake();
        }
        let row = match created {
            Created::New(row) | Created::Replayed(row) => row,
            Created::KeyReused => {
                return Err(Failure::with_details(
                    Kind::Conflict,
                    "IDEMPOTENCY_KEY_REUSED",
                    "this Idempotency-Key was used with a different request body, or for an agent since deleted",
                    vec![detail(
                        "Idempotency-Key",
                        "reused",
                        "use a new key for a new request",
                    )],
                    rid,
                ));
            }
        };
        let agent = row_to_agent(&row).map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        Ok((agent, row))
    }

    async fn get(&self, caller: &Caller, id: String) -> Result<AgentRow, Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| store::get(conn, &org, &id))
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, &caller.request_id))
    }

    /// Applies `merge` (current JSON → new JSON) under the `If-Match` precondition.
    async fn change(
        &self,
        caller: &Caller,
        id: String,
        if_match: Option<String>,
        merge: impl Fn(Map<String, Value>) -> Map<String, Value> + Send + 'static,
    ) -> Result<(Agent, AgentRow), Failure> {
        let rid = caller.request_id.as_str();
        let org = caller.org_id.clone();
        let row = self
            .store
            .run(move |conn| {
                store::update(
                    conn,
                    &org,
                    &id,
                    |current| {
                        if let Some(header) = &if_match
                            && !etag_matches(header, &etag(current.version))
                        {
                            return Err(StoreError::PreconditionFailed);
                        }
                        let merged = merge(row_to_json(current)?);
                        split(merged, &current.secrets)
                    },
                    |conn, row| publish_agent(conn, "agent.updated", row),
                )
                .and_then(|inner| inner)
            })
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        self.events.wake();
        let agent = row_to_agent(&row).map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        Ok((agent, row))
    }
}

impl AgentsApi for Handlers {
    async fn list_agents(
        &self,
        caller: Caller,
        params: ListAgentsParams,
    ) -> Result<ListAgentsResponse, ApiError> {
        Ok(async {
            match self.list(&caller, params).await {
                Ok(list) => ListAgentsResponse::Ok(Json(list)),
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn create_agent(
        &self,
        caller: Caller,
        params: CreateAgentParams,
    ) -> Result<CreateAgentResponse, ApiError> {
        Ok(async {
            match self.create(&caller, params).await {
                Ok((agent, row)) => {
                    let location = format!("/v1/agents/{}", row.id);
                    CreateAgentResponse::Created(Json(agent), location, etag(row.version))
                }
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn get_agent(
        &self,
        caller: Caller,
        params: GetAgentParams,
    ) -> Result<GetAgentResponse, ApiError> {
        Ok(async {
            let row = match self.get(&caller, params.agent_id).await {
                Ok(row) => row,
                Err(f) => return f.into(),
            };
            let tag = etag(row.version);
            if params
                .if_none_match
                .as_deref()
                .is_some_and(|h| etag_matches(h, &tag))
            {
                return GetAgentResponse::NotModified(tag);
            }
            match row_to_agent(&row) {
                Ok(agent) => GetAgentResponse::Ok(Json(agent), tag),
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn replace_agent(
        &self,
        caller: Caller,
        params: ReplaceAgentParams,
    ) -> Result<ReplaceAgentResponse, ApiError> {
        Ok(async {
            let replacement = to_object(params.body.to_json());
            match self
                .change(&caller, params.agent_id, params.if_match, move |_| {
                    replacement.clone()
                })
                .await
            {
                Ok((agent, row)) => ReplaceAgentResponse::Ok(Json(agent), etag(row.version)),
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn update_agent(
        &self,
        caller: Caller,
        params: UpdateAgentParams,
    ) -> Result<UpdateAgentResponse, ApiError> {
        Ok(async {
            let merge = patch_merger(to_object(params.body.to_json()));
            match self
                .change(&caller, params.agent_id, params.if_match, merge)
                .await
            {
                Ok((agent, row)) => UpdateAgentResponse::Ok(Json(agent), etag(row.version)),
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn bulk_update_agents(
        &self,
        caller: Caller,
        params: BulkUpdateAgentsParams,
    ) -> Result<BulkUpdateAgentsResponse, ApiError> {
        Ok(async {
            let body = params.body;
            let filter = store::BulkFilter {
                ids: body.filter.ids,
                agent_type: body.filter.type_.map(|t| t.as_str().to_string()),
                status: body.filter.status.map(|s| s.as_str().to_string()),
                search: body.filter.search,
            };
            let merge = patch_merger(to_object(body.updates.to_json()));
            let org = caller.org_id.clone();
            let result = self
                .store
                .run(move |conn| {
                    store::bulk_update(conn, &org, &filter, |current| {
                        let changes = split(merge(row_to_json(current)?), &current.secrets)?;
                        let same = changes.name == current.name
                            && changes.agent_type == current.agent_type
                            && changes.status == current.status
                            && changes.description == current.description
                            && changes.body == current.body
                            && changes.secrets == current.secrets;
                        Ok::<_, StoreError>((!same).then_some(changes))
                    })
                    .and_then(|inner| inner)
                })
                .await;
            match result {
                Ok(outcome) => BulkUpdateAgentsResponse::Ok(Json(AgentBulkResult {
                    matched: outcome.matched,
                    updated: i64::try_from(outcome.updated.len()).unwrap_or(i64::MAX),
                    updated_ids: outcome.updated,
                })),
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn delete_agent(
        &self,
        caller: Caller,
        params: DeleteAgentParams,
    ) -> Result<DeleteAgentResponse, ApiError> {
        Ok(async {
            let org = caller.org_id.clone();
            let id = params.agent_id;
            match self
                .store
                .run(move |conn| {
                    crate::db::write_transaction(conn, |conn| {
                        let row = store::get(conn, &org, &id)?;
                        store::delete(conn, &org, &id)?;
                        let data = serde_json::json!({"id": row.id, "name": row.name});
                        crate::events::publish(conn, &org, "agent.deleted", Some(&id), data)
                    })
                })
                .await
            {
                Ok(_) => {
                    self.events.wake();
                    DeleteAgentResponse::NoContent
                }
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_lists_weak_forms_and_stars() {
        assert!(etag_matches("\"3\"", "\"3\""));
        assert!(etag_matches("\"1\", W/\"3\"", "\"3\""));
        assert!(etag_matches("*", "\"3\""));
        assert!(!etag_matches("\"2\"", "\"3\""));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            offset: 20,
            id: "agent_x".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not a cursor"), None);
        assert_eq!(Cursor::decode("99999999999999999999.agent_x"), None);
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
