//! The agents resource.
//!
//! Rows and API types meet in the wire format: a row becomes the JSON the spec describes and
//! is parsed into the generated type, and a request body is split back into columns. So a new
//! field in the spec needs no change here unless it must be a column of its own.

use agentplane_api::models::{
    self, Agent, AgentBulkResult, AgentBulkUpdate, AgentField, AgentFieldset, AgentList,
    ListAgentsExpandItem, ListAgentsOrder, Scope,
};
use agentplane_api::*;
use poem_openapi::payload::Json;
use poem_openapi::types::{ParseFromJSON, ToJSON};
use serde_json::{Map, Value};

use super::Handlers;
use super::idem::{self, Created};
use super::paging::{PageRequest, etag, etag_matches, not_modified};
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::agents::{self as store, AgentChanges, AgentRow, AgentStatus, ListQuery, SortField};
use crate::db::types::same_variants;
use crate::error::{Failure, Kind, detail, store_error};

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

/// The agent as the spec's JSON.
pub(crate) fn row_to_json(row: &AgentRow) -> Result<Map<String, Value>, StoreError> {
    let mut obj: Map<String, Value> =
        serde_json::from_str(&row.body).map_err(|e| corrupt(row, &e.to_string()))?;
    obj.insert("id".into(), row.id.clone().into());
    obj.insert("name".into(), row.name.clone().into());
    obj.insert("type".into(), row.agent_type.clone().into());
    obj.insert("status".into(), row.status.as_str().into());
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

const CREATE_OPERATION: &str = "createAgent";

/// The 409 of a reused key, in the words agents have always used.
fn key_reused(request_id: &str) -> Failure {
    let mut failure = idem::key_reused(request_id);
    failure.envelope.error.message = "this Idempotency-Key was used with a different request \
        body, or for an agent since deleted"
        .to_string();
    failure
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
    field: &str,
    value: Option<&str>,
    request_id: &str,
) -> Result<Option<String>, Failure> {
    value
        .map(|v| {
            crate::ids::normalize_time(v).ok_or_else(|| {
                bad_parameter(field, "format", "not an RFC 3339 date-time", request_id)
            })
        })
        .transpose()
}

/// The storage query of a list request for `page`.
fn list_query(
    params: &ListAgentsParams,
    page: &PageRequest,
    request_id: &str,
) -> Result<ListQuery, Failure> {
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
        after_id: page.after_id.clone(),
        offset: page.offset,
        limit: page.limit,
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
fn new_row(org_id: &str, changes: AgentChanges) -> AgentRow {
    let now = crate::ids::now();
    AgentRow {
        id: crate::ids::new_id("agent"),
        org_id: org_id.to_string(),
        name: changes.name,
        agent_type: changes.agent_type,
        status: changes.status,
        description: changes.description,
        body: changes.body,
        secrets: changes.secrets,
        version: 1,
        created_at: now.clone(),
        updated_at: now,
    }
}

impl Handlers {
    async fn agents_page(
        &self,
        caller: &Caller,
        params: ListAgentsParams,
    ) -> Result<AgentList, Failure> {
        let rid = caller.request_id.as_str();
        let page = PageRequest::of(&params, rid)?;
        let query = list_query(&params, &page, rid)?;
        let expand = params.expand.clone().unwrap_or_default();
        check_expand_scopes(caller, &expand)?;
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
            .map_err(store_error(NOT_FOUND, rid))?;
        let data = rows
            .iter()
            .zip(agents.into_iter().zip(expanded))
            .map(|(row, (agent, expanded))| {
                row_to_fieldset(row, agent, params.fields.as_deref(), expanded)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(store_error(NOT_FOUND, rid))?;
        Ok(AgentList {
            pagination: page.pagination(rows.len(), rows.last().map(|r| r.id.as_str()), total),
            data,
        })
    }

    /// Inserts the agent (and publishes `agent.created` with it), or replays the one created
    /// under the same Idempotency-Key.
    async fn insert_agent(
        &self,
        caller: &Caller,
        params: CreateAgentParams,
    ) -> Result<AgentRow, Failure> {
        let rid = caller.request_id.as_str();
        let body = params.body.to_json();
        let request_hash = idem::request_hash(body.as_ref().unwrap_or(&Value::Null));
        let changes = split(to_object(body), "{}").map_err(store_error(NOT_FOUND, rid))?;
        let row = new_row(&caller.org_id, changes);
        let keyed = idem::NewKeyed {
            org_id: row.org_id.clone(),
            operation: CREATE_OPERATION,
            key: params.idempotency_key,
            request_hash,
            resource_id: row.id.clone(),
        };
        let org = row.org_id.clone();
        let created = idem::create_keyed(
            &self.store,
            keyed,
            move |conn| {
                store::insert(conn, &row)?;
                publish_agent(conn, "agent.created", &row)?;
                Ok(row.clone())
            },
            move |conn, id| store::get(conn, &org, id),
        )
        .await
        .map_err(store_error(NOT_FOUND, rid))?;
        match created {
            Created::New(row) => {
                self.events.wake();
                Ok(row)
            }
            Created::Replayed(row) => Ok(row),
            Created::KeyReused => Err(key_reused(rid)),
        }
    }

    async fn agent_row(&self, caller: &Caller, id: String) -> Result<AgentRow, Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| store::get(conn, &org, &id))
            .await
            .map_err(store_error(NOT_FOUND, &caller.request_id))
    }

    /// Applies `merge` (current JSON → new JSON) under the `If-Match` precondition.
    async fn change_agent(
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
            .map_err(store_error(NOT_FOUND, rid))?;
        self.events.wake();
        let agent = row_to_agent(&row).map_err(store_error(NOT_FOUND, rid))?;
        Ok((agent, row))
    }

    /// Merges `body.updates` into every agent `body.filter` matches, all or none.
    async fn bulk_change_agents(
        &self,
        caller: &Caller,
        body: AgentBulkUpdate,
    ) -> Result<AgentBulkResult, Failure> {
        let filter = store::BulkFilter {
            ids: body.filter.ids,
            agent_type: body.filter.type_.map(|t| t.as_str().to_string()),
            status: body.filter.status.map(Into::into),
            search: body.filter.search,
        };
        let merge = patch_merger(to_object(body.updates.to_json()));
        let org = caller.org_id.clone();
        let outcome = self
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
            .await
            .map_err(store_error(NOT_FOUND, &caller.request_id))?;
        Ok(AgentBulkResult {
            matched: outcome.matched,
            updated: i64::try_from(outcome.updated.len()).unwrap_or(i64::MAX),
            updated_ids: outcome.updated,
        })
    }

    /// Deletes the agent and publishes `agent.deleted`.
    async fn remove_agent(&self, caller: &Caller, id: String) -> Result<(), Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    let row = store::get(conn, &org, &id)?;
                    store::delete(conn, &org, &id)?;
                    let data = serde_json::json!({"id": row.id, "name": row.name});
                    crate::events::publish(conn, &org, "agent.deleted", Some(&id), data)
                })
            })
            .await
            .map_err(store_error(NOT_FOUND, &caller.request_id))?;
        self.events.wake();
        Ok(())
    }
}

impl AgentsApi for Handlers {
    async fn list_agents(
        &self,
        caller: Caller,
        params: ListAgentsParams,
    ) -> Result<ListAgentsResponse, ApiError> {
        let list = self.agents_page(&caller, params).await?;
        Ok(ListAgentsResponse::Ok(Json(list)))
    }

    async fn create_agent(
        &self,
        caller: Caller,
        params: CreateAgentParams,
    ) -> Result<CreateAgentResponse, ApiError> {
        let row = self.insert_agent(&caller, params).await?;
        let agent = row_to_agent(&row).map_err(store_error(NOT_FOUND, &caller.request_id))?;
        Ok(CreateAgentResponse::Created(
            Json(agent),
            format!("/v1/agents/{}", row.id),
            etag(row.version),
        ))
    }

    async fn get_agent(
        &self,
        caller: Caller,
        params: GetAgentParams,
    ) -> Result<GetAgentResponse, ApiError> {
        let row = self.agent_row(&caller, params.agent_id).await?;
        let tag = etag(row.version);
        if not_modified(params.if_none_match.as_deref(), &tag) {
            return Ok(GetAgentResponse::NotModified(tag));
        }
        let agent = row_to_agent(&row).map_err(store_error(NOT_FOUND, &caller.request_id))?;
        Ok(GetAgentResponse::Ok(Json(agent), tag))
    }

    async fn replace_agent(
        &self,
        caller: Caller,
        params: ReplaceAgentParams,
    ) -> Result<ReplaceAgentResponse, ApiError> {
        let replacement = to_object(params.body.to_json());
        let merge = move |_| replacement.clone();
        let (agent, row) = self
            .change_agent(&caller, params.agent_id, params.if_match, merge)
            .await?;
        Ok(ReplaceAgentResponse::Ok(Json(agent), etag(row.version)))
    }

    async fn update_agent(
        &self,
        caller: Caller,
        params: UpdateAgentParams,
    ) -> Result<UpdateAgentResponse, ApiError> {
        let merge = patch_merger(to_object(params.body.to_json()));
        let (agent, row) = self
            .change_agent(&caller, params.agent_id, params.if_match, merge)
            .await?;
        Ok(UpdateAgentResponse::Ok(Json(agent), etag(row.version)))
    }

    async fn bulk_update_agents(
        &self,
        caller: Caller,
        params: BulkUpdateAgentsParams,
    ) -> Result<BulkUpdateAgentsResponse, ApiError> {
        let result = self.bulk_change_agents(&caller, params.body).await?;
        Ok(BulkUpdateAgentsResponse::Ok(Json(result)))
    }

    async fn delete_agent(
        &self,
        caller: Caller,
        params: DeleteAgentParams,
    ) -> Result<DeleteAgentResponse, ApiError> {
        self.remove_agent(&caller, params.agent_id).await?;
        Ok(DeleteAgentResponse::NoContent)
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
