//! The tools resource: RAG, retrieval and API tools (Magnet AI), and `function` tools run by
//! the caller, as one resource with a `type`.
//!
//! RAG and retrieval tools search their knowledge bases through [`crate::knowledge::search`];
//! an API tool's test calls its endpoint for real, with the call executions make
//! ([`crate::engine::tools::api`]). Secret headers are sealed with [`crate::crypto::Crypto`]
//! and only ever opened to make that call. `parameters` is what a model calling the tool
//! passes ([`crate::engine::tools::ToolSpec::of_row`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use agentplane_api::Json;
use agentplane_api::models::{
    KnowledgeResult, KnowledgeResults, RagAnswer, Tool, ToolList, ToolTestResult, ToolType,
};
use agentplane_api::*;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Handlers;
use super::knowledge::to_i64;
use super::resource::{Resource, created};
use crate::auth::Caller;
use crate::db::tools::{self as store, ToolChanges, ToolRow};
use crate::db::{DbConnection, StoreError};
use crate::engine::tools::api::{self, open_secrets};
use crate::error::{Failure, Kind, detail, store_error};
use crate::knowledge::SearchOptions;

/// Characters of an endpoint's answer a test reports.
const EXCERPT_CHARS: usize = 2000;
/// Characters of the best passage a RAG tool answers with.
const ANSWER_CHARS: usize = 1000;

/// A tool as a request describes it (the spec's `ToolInput`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ToolSpec {
    Rag(KnowledgeTool),
    Retrieval(KnowledgeTool),
    Api(ApiTool),
    Function(FunctionTool),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnowledgeTool {
    name: String,
    description: Option<String>,
    knowledge_base_ids: Vec<String>,
    top_k: Option<i64>,
    min_score: Option<f64>,
    embedding_model: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiTool {
    name: String,
    description: Option<String>,
    method: Option<String>,
    url: String,
    headers: Option<BTreeMap<String, String>>,
    secret_headers: Option<BTreeMap<String, String>>,
    timeout_ms: Option<i64>,
    parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionTool {
    name: String,
    description: Option<String>,
    parameters: Map<String, Value>,
}

fn parse(value: &Value, rid: &str) -> Result<ToolSpec, Failure> {
    serde_json::from_value(value.clone()).map_err(|e| {
        Failure::with_details(
            Kind::Unprocessable,
            "VALIDATION_ERROR",
            "the body does not match its schema",
            vec![detail(
                "body",
                "oneOf",
                format!("not a rag, retrieval, api or function tool: {e}"),
            )],
            rid,
        )
    })
}

/// The columns of a tool. `previous_secrets` is kept when an API tool names no secret headers.
fn changes(spec: &ToolSpec, crypto: &crate::crypto::Crypto, previous_secrets: &str) -> ToolChanges {
    let mut body = Map::new();
    match spec {
        ToolSpec::Rag(k) | ToolSpec::Retrieval(k) => {
            body.insert(
                "knowledge_base_ids".into(),
                k.knowledge_base_ids.clone().into(),
            );
            body.insert("top_k".into(), k.top_k.unwrap_or(5).into());
            if let Some(m) = k.min_score {
                body.insert("min_score".into(), m.into());
            }
            if let Some(m) = &k.embedding_model {
                body.insert("embedding_model".into(), m.clone().into());
            }
            ToolChanges {
                name: k.name.clone(),
                tool_type: if matches!(spec, ToolSpec::Rag(_)) {
                    "rag"
                } else {
                    "retrieval"
                }
                .into(),
                description: k.description.clone(),
                body: Value::Object(body).to_string(),
                secrets: String::new(),
            }
        }
        ToolSpec::Api(a) => {
            body.insert(
                "method".into(),
                a.method.clone().unwrap_or_else(|| "GET".into()).into(),
            );
            body.insert("url".into(), a.url.clone().into());
            body.insert(
                "headers".into(),
                serde_json::to_value(a.headers.clone().unwrap_or_default()).unwrap_or(Value::Null),
            );
            body.insert("timeout_ms".into(), a.timeout_ms.unwrap_or(10_000).into());
            if let Some(p) = &a.parameters {
                body.insert("parameters".into(), Value::Object(p.clone()));
            }
            let secrets = match &a.secret_headers {
                Some(h) => {
                    let names: Vec<&String> = h.keys().collect();
                    body.insert("secret_header_names".into(), serde_json::json!(names));
                    crypto.encrypt(serde_json::to_string(h).unwrap_or_default().as_bytes())
                }
                None => previous_secrets.to_string(),
            };
            if a.secret_headers.is_none() && !previous_secrets.is_empty() {
                // Keep the names of the secrets kept.
                if let Ok(Some(names)) = open_secrets(crypto, previous_secrets)
                    .map(|m| Some(m.keys().cloned().collect::<Vec<_>>()))
                {
                    body.insert("secret_header_names".into(), serde_json::json!(names));
                }
            }
            ToolChanges {
                name: a.name.clone(),
                tool_type: "api".into(),
                description: a.description.clone(),
                body: Value::Object(body).to_string(),
                secrets,
            }
        }
        ToolSpec::Function(f) => {
            body.insert("parameters".into(), Value::Object(f.parameters.clone()));
            ToolChanges {
                name: f.name.clone(),
                tool_type: "function".into(),
                description: f.description.clone(),
                body: Value::Object(body).to_string(),
                secrets: String::new(),
            }
        }
    }
}

/// The organization's tools among `ids`, by id (ids it does not have are left out).
pub(crate) fn tools_among(
    conn: &mut DbConnection, org_id: &str, ids: &[String],
) -> Result<BTreeMap<String, Tool>, StoreError> {
    use crate::db::Found;
    let mut found = BTreeMap::new();
    for id in ids {
        if let Some(row) = store::get(conn, org_id, id).found()? {
            found.insert(id.clone(), Tool::from_row(&row)?);
        }
    }
    Ok(found)
}

impl Resource for Tool {
    type Row = ToolRow;
    const NOT_FOUND: &'static str = "TOOL_NOT_FOUND";

    /// The tool as stored; secret headers show by name only.
    fn from_row(row: &ToolRow) -> Result<Tool, StoreError> {
        let body: Value = serde_json::from_str(&row.content.body).unwrap_or(Value::Null);
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let strings = |k: &str| {
            body.get(k).and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
        };
        Ok(Tool {
            id: row.id.clone(),
            name: row.content.name.clone(),
            type_: ToolType::from_wire(&row.content.tool_type).unwrap_or(ToolType::Api),
            description: row.content.description.clone(),
            knowledge_base_ids: strings("knowledge_base_ids"),
            top_k: body.get("top_k").and_then(Value::as_i64),
            min_score: body.get("min_score").and_then(Value::as_f64),
            embedding_model: s("embedding_model"),
            method: s("method"),
            url: s("url"),
            headers: body
                .get("headers")
                .and_then(|h| serde_json::from_value(h.clone()).ok()),
            secret_header_names: strings("secret_header_names"),
            timeout_ms: body.get("timeout_ms").and_then(Value::as_i64),
            parameters: crate::engine::tools::ToolSpec::of_row(row).map(|t| t.parameters),
            version: row.version,
            created_at: row.created_at.clone(),
            updated_at: row.updated_at.clone(),
        })
    }
}

/// The first knowledge base a tool names that is not the organization's (as a 404).
fn check_knowledge_bases(
    conn: &mut DbConnection, org_id: &str, spec: &ToolSpec,
) -> Result<Option<(usize, String)>, StoreError> {
    let (ToolSpec::Rag(k) | ToolSpec::Retrieval(k)) = spec else {
        return Ok(None);
    };
    for (i, id) in k.knowledge_base_ids.iter().enumerate() {
        match crate::db::knowledge::get_kb(conn, org_id, id) {
            Ok(_) => {}
            Err(StoreError::NotFound) => return Ok(Some((i, id.clone()))),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn missing_kb(index: usize, id: &str, rid: &str) -> Failure {
    let message = format!("no knowledge base {id} in this organization");
    Failure::with_details(
        Kind::NotFound,
        "KNOWLEDGE_BASE_NOT_FOUND",
        message.clone(),
        vec![detail(
            &format!("knowledge_base_ids[{index}]"),
            "not_found",
            message,
        )],
        rid,
    )
}

fn wrong_type(row: &ToolRow, wanted: &str, rid: &str) -> Failure {
    Failure::new(
        Kind::Conflict,
        "TOOL_TYPE_MISMATCH",
        format!(
            "tool {} is a {} tool; this operation needs a {wanted} tool",
            row.id, row.content.tool_type
        ),
        rid,
    )
}

/// A new tool of `org_id` with the columns `c`.
fn new_row(org_id: &str, c: &ToolChanges) -> ToolRow {
    ToolRow::new(org_id, crate::ids::new_id("tool"), c.clone())
}

impl Handlers {
    /// The tool `id`, which must be of type `wanted` (a 409 otherwise).
    async fn tool_of_type(
        &self, caller: &Caller, id: String, wanted: &str,
    ) -> Result<ToolRow, Failure> {
        let row = self.row::<Tool>(caller, id).await?;
        if row.content.tool_type != wanted {
            return Err(wrong_type(&row, wanted, &caller.request_id));
        }
        Ok(row)
    }

    /// Searches a knowledge tool's knowledge bases.
    async fn tool_search(
        &self, caller: &Caller, row: &ToolRow, q: agentplane_api::models::ToolQuery,
    ) -> Result<Vec<KnowledgeResult>, Failure> {
        let body: Value = serde_json::from_str(&row.content.body).unwrap_or(Value::Null);
        let kb_ids: Vec<String> = body
            .get("knowledge_base_ids")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let top_k = q
            .top_k
            .or_else(|| body.get("top_k").and_then(Value::as_i64))
            .unwrap_or(5);
        let options = SearchOptions {
            top_k: usize::try_from(top_k).unwrap_or(5),
            min_score: q
                .min_score
                .or_else(|| body.get("min_score").and_then(Value::as_f64)),
            filters: q.filters.unwrap_or_default().into_iter().collect(),
        };
        let org = caller.org_id.clone();
        let query = q.query;
        let hits = self
            .store
            .run(move |conn| crate::knowledge::search(conn, &org, &kb_ids, &query, &options))
            .await
            .map_err(store_error(Tool::NOT_FOUND, &caller.request_id))?;
        Ok(hits
            .into_iter()
            .map(|h| KnowledgeResult {
                chunk_id: h.chunk_id,
                document_id: h.document_id,
                knowledge_base_id: h.knowledge_base_id,
                content: h.text,
                score: h.score,
                metadata: Some(h.metadata),
            })
            .collect())
    }

    /// Calls an API tool's endpoint once, as its test.
    async fn call_api(
        &self, row: &ToolRow, input: Option<agentplane_api::models::ToolTestInput>,
    ) -> ToolTestResult {
        let tool: Value = serde_json::from_str(&row.content.body).unwrap_or(Value::Null);
        let request = api::Request {
            query: input
                .as_ref()
                .and_then(|i| i.query.clone())
                .map(|q| q.into_iter().collect())
                .unwrap_or_default(),
            body: input.and_then(|i| i.body),
            ..api::Request::default()
        };
        match api::call(
            &self.egress,
            &self.crypto,
            (&tool, &row.content.secrets),
            request,
        )
        .await
        {
            Ok(answer) => ToolTestResult {
                ok: answer.is_success(),
                status: Some(i64::from(answer.status)),
                latency_ms: answer.latency_ms,
                body_excerpt: Some(answer.text().chars().take(EXCERPT_CHARS).collect()),
                content_type: answer.content_type,
                error: None,
            },
            Err(failed) => ToolTestResult {
                ok: false,
                status: None,
                latency_ms: failed.latency_ms,
                content_type: None,
                body_excerpt: None,
                error: Some(failed.error),
            },
        }
    }
}

impl ToolsApi for Handlers {
    async fn list_tools(
        &self, caller: Caller, params: ListToolsParams,
    ) -> Reply<ListToolsResponse> {
        let tool_type = params.type_.map(|t| t.as_str());
        let (data, pagination) = self
            .list_page::<Tool>(&caller, &params, move |conn, org, page| {
                store::list(conn, org, tool_type, page)
            })
            .await?;
        Ok(ListToolsResponse::Ok(Json(ToolList { data, pagination })))
    }

    /// Creates a tool, once per `Idempotency-Key`; a knowledge base it names that is not the
    /// organization's is a 404 naming it, and creates nothing.
    async fn create_tool(
        &self, caller: Caller, params: CreateToolParams,
    ) -> Reply<CreateToolResponse> {
        let rid = caller.request_id.as_str();
        let spec = parse(&params.body, rid)?;
        self.outbound("url", params.body.get("url").and_then(Value::as_str), rid)?;
        let row = new_row(&caller.org_id, &changes(&spec, &self.crypto, ""));
        // The insert fails (rolling back) on a missing knowledge base, and says which here.
        let missing = Arc::new(Mutex::new(None));
        let found_missing = Arc::clone(&missing);
        let insert = move |conn: &mut DbConnection, row: &ToolRow| {
            if let Some(m) = check_knowledge_bases(conn, &row.org_id, &spec)? {
                *found_missing.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
                return Err(StoreError::NotFound);
            }
            store::insert(conn, row)
        };
        let inserted = self.create_row::<Tool>(&caller, &params, row, insert).await;
        if let Some((i, id)) = missing.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(missing_kb(i, &id, rid).into());
        }
        let (tool, location, tag) = created(&params, &inserted?, rid)?;
        Ok(CreateToolResponse::Created(Json(tool), location, tag))
    }

    async fn get_tool(&self, caller: Caller, params: GetToolParams) -> Reply<GetToolResponse> {
        let answer = self.item_if_changed::<Tool>(&caller, params.tool_id, params.if_none_match);
        Ok(answer.await?.into())
    }

    async fn replace_tool(
        &self, caller: Caller, params: ReplaceToolParams,
    ) -> Reply<ReplaceToolResponse> {
        let rid = caller.request_id.clone();
        let spec = parse(&params.body, &rid)?;
        self.outbound("url", params.body.get("url").and_then(Value::as_str), &rid)?;
        let (org, crypto) = (caller.org_id.clone(), self.crypto.clone());
        let (tool, tag) = self
            .replace::<Tool>(
                &caller,
                params.tool_id,
                params.if_match,
                move |conn, current| {
                    if let Some((i, id)) = check_knowledge_bases(conn, &org, &spec)? {
                        return Ok(Err(missing_kb(i, &id, &rid)));
                    }
                    Ok(Ok(changes(&spec, &crypto, &current.content.secrets)))
                },
            )
            .await?;
        Ok(ReplaceToolResponse::Ok(Json(tool), tag))
    }

    async fn delete_tool(
        &self, caller: Caller, params: DeleteToolParams,
    ) -> Reply<DeleteToolResponse> {
        self.remove::<Tool>(&caller, params.tool_id).await?;
        Ok(DeleteToolResponse::NoContent)
    }

    async fn query_tool(
        &self, caller: Caller, params: QueryToolParams,
    ) -> Reply<QueryToolResponse> {
        let row = self.tool_of_type(&caller, params.tool_id, "rag").await?;
        let query = params.body.query.clone();
        let results = self.tool_search(&caller, &row, params.body).await?;
        let answer = results
            .first()
            .map(|r| r.content.chars().take(ANSWER_CHARS).collect());
        Ok(QueryToolResponse::Ok(Json(RagAnswer {
            query,
            results,
            answer,
        })))
    }

    async fn search_tool(
        &self, caller: Caller, params: SearchToolParams,
    ) -> Reply<SearchToolResponse> {
        let row = self
            .tool_of_type(&caller, params.tool_id, "retrieval")
            .await?;
        let query = params.body.query.clone();
        let results = self.tool_search(&caller, &row, params.body).await?;
        Ok(SearchToolResponse::Ok(Json(KnowledgeResults {
            query,
            total: to_i64(results.len()),
            results,
        })))
    }

    async fn test_tool(&self, caller: Caller, params: TestToolParams) -> Reply<TestToolResponse> {
        let row = self.tool_of_type(&caller, params.tool_id, "api").await?;
        Ok(TestToolResponse::Ok(Json(
            self.call_api(&row, Some(params.body)).await,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_headers_are_sealed_and_kept_on_replace() {
        let crypto = crate::crypto::Crypto::new(&[3u8; 32]);
        let spec = parse(
            &serde_json::json!({"type": "api", "name": "w", "url": "http://x/",
                                "secret_headers": {"Authorization": "Bearer sk-123"}}),
            "rid",
        )
        .expect("parses");
        let first = changes(&spec, &crypto, "");
        assert!(!first.secrets.contains("sk-123") && !first.body.contains("sk-123"));
        assert!(
            first
                .body
                .contains("\"secret_header_names\":[\"Authorization\"]")
        );
        let again = parse(
            &serde_json::json!({"type": "api", "name": "w2", "url": "http://x/"}),
            "rid",
        )
        .expect("parses");
        let second = changes(&again, &crypto, &first.secrets);
        assert_eq!(
            second.secrets, first.secrets,
            "a PUT without secrets keeps them"
        );
        assert!(second.body.contains("Authorization"));
        let opened = open_secrets(&crypto, &second.secrets).expect("opens");
        assert_eq!(
            opened.get("Authorization").map(String::as_str),
            Some("Bearer sk-123")
        );
    }
}
