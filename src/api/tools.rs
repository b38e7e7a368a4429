//! The tools resource: RAG, retrieval and API tools (Magnet AI) as one resource with a `type`.
//!
//! RAG and retrieval tools search their knowledge bases through [`crate::knowledge::search`];
//! an API tool's test calls its endpoint for real. Secret headers are sealed with
//! [`crate::crypto::Crypto`] and only ever opened to make that call.

use std::collections::BTreeMap;
use std::time::Instant;

use agentplane_api::models::{
    KnowledgeResult, KnowledgeResults, RagAnswer, Tool, ToolList, ToolTestResult, ToolType,
};
use agentplane_api::*;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Handlers;
use super::knowledge::{Created, hash_body, idempotent, key_reused, next_cursor, page_of, to_i64};
use super::paging::{etag, etag_matches};
use crate::auth::Caller;
use crate::db::tools::{self as store, ToolChanges, ToolRow};
use crate::db::{DbConnection, StoreError};
use crate::error::{Failure, Kind, detail};
use crate::failure_response;
use crate::knowledge::SearchOptions;

failure_response!(ListToolsResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });
failure_response!(CreateToolResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Conflict => Conflict, Unprocessable => UnprocessableEntity });
failure_response!(GetToolResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(ReplaceToolResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, PreconditionFailed => PreconditionFailed, Unprocessable => UnprocessableEntity });
failure_response!(DeleteToolResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(QueryToolResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Conflict => Conflict, Unprocessable => UnprocessableEntity });
failure_response!(SearchToolResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Conflict => Conflict, Unprocessable => UnprocessableEntity });
failure_response!(TestToolResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Conflict => Conflict, Unprocessable => UnprocessableEntity });

const NOT_FOUND: &str = "TOOL_NOT_FOUND";
/// Characters of an endpoint's answer a test reports.
const EXCERPT_CHARS: usize = 2000;
/// Bytes of an endpoint's answer a test reads.
const MAX_TEST_BODY: usize = 64 * 1024;
/// Characters of the best passage a RAG tool answers with.
const ANSWER_CHARS: usize = 1000;

/// A tool as a request describes it (the spec's `ToolInput`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ToolSpec {
    Rag(KnowledgeTool),
    Retrieval(KnowledgeTool),
    Api(ApiTool),
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
                format!("not a rag, retrieval or api tool: {e}"),
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
    }
}

fn open_secrets(
    crypto: &crate::crypto::Crypto,
    sealed: &str,
) -> Result<BTreeMap<String, String>, String> {
    if sealed.is_empty() {
        return Ok(BTreeMap::new());
    }
    let bytes = crypto
        .decrypt(sealed)
        .map_err(|e| format!("the secret headers cannot be opened: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|_| "the secret headers are corrupt".to_string())
}

/// The organization's tools among `ids`, by id (ids it does not have are left out).
pub(crate) fn tools_among(
    conn: &mut DbConnection,
    org_id: &str,
    ids: &[String],
) -> Result<BTreeMap<String, Tool>, StoreError> {
    use crate::db::Found;
    let mut found = BTreeMap::new();
    for id in ids {
        if let Some(row) = store::get(conn, org_id, id).found()? {
            found.insert(id.clone(), tool_model(&row));
        }
    }
    Ok(found)
}

fn tool_model(row: &ToolRow) -> Tool {
    let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let strings = |k: &str| {
        body.get(k).and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };
    Tool {
        id: row.id.clone(),
        name: row.name.clone(),
        type_: ToolType::from_wire(&row.tool_type).unwrap_or(ToolType::Api),
        description: row.description.clone(),
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
        version: row.version,
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
    }
}

/// The first knowledge base a tool names that is not the organization's (as a 404).
fn check_knowledge_bases(
    conn: &mut DbConnection,
    org_id: &str,
    spec: &ToolSpec,
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
            row.id, row.tool_type
        ),
        rid,
    )
}

impl Handlers {
    async fn tool(&self, caller: &Caller, id: String) -> Result<ToolRow, Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| store::get(conn, &org, &id))
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, &caller.request_id))
    }

    /// Searches a knowledge tool's knowledge bases.
    async fn tool_search(
        &self,
        caller: &Caller,
        row: &ToolRow,
        q: agentplane_api::models::ToolQuery,
    ) -> Result<Vec<KnowledgeResult>, Failure> {
        let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
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
            .map_err(|e| Failure::from_store(e, NOT_FOUND, &caller.request_id))?;
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

    /// Calls an API tool's endpoint once.
    async fn call_api(
        &self,
        row: &ToolRow,
        input: Option<agentplane_api::models::ToolTestInput>,
    ) -> ToolTestResult {
        let started = Instant::now();
        let failed = |error: String, started: Instant| ToolTestResult {
            ok: false,
            status: None,
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            content_type: None,
            body_excerpt: None,
            error: Some(error),
        };
        let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
        let (Some(url), method) = (
            body.get("url").and_then(Value::as_str),
            body.get("method").and_then(Value::as_str).unwrap_or("GET"),
        ) else {
            return failed("the tool has no URL".into(), started);
        };
        let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
            return failed(format!("unsupported method {method}"), started);
        };
        let secrets = match open_secrets(&self.crypto, &row.secrets) {
            Ok(s) => s,
            Err(e) => return failed(e, started),
        };
        let timeout = body
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .unwrap_or(10_000);
        let mut target = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return failed(format!("the tool's URL is not valid: {e}"), started),
        };
        if let Some(q) = input.as_ref().and_then(|i| i.query.as_ref()) {
            let mut pairs = target.query_pairs_mut();
            for (k, v) in q {
                pairs.append_pair(k, v);
            }
        }
        let mut req = self
            .syncs
            .client()
            .request(method.clone(), target)
            .timeout(std::time::Duration::from_millis(timeout));
        let plain: BTreeMap<String, String> = body
            .get("headers")
            .and_then(|h| serde_json::from_value(h.clone()).ok())
            .unwrap_or_default();
        for (k, v) in plain.iter().chain(secrets.iter()) {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(b) = input.and_then(|i| i.body)
            && method != reqwest::Method::GET
        {
            req = req.json(&b);
        }
        let started = Instant::now();
        let mut resp = match req.send().await {
            Ok(r) => r,
            // reqwest's errors name the URL, never the headers.
            Err(e) => return failed(format!("the call failed: {e}"), started),
        };
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(piece)) => {
                    bytes.extend_from_slice(&piece);
                    if bytes.len() >= MAX_TEST_BODY {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return failed(format!("reading the answer failed: {e}"), started),
            }
        }
        let excerpt: String = String::from_utf8_lossy(&bytes)
            .chars()
            .take(EXCERPT_CHARS)
            .collect();
        ToolTestResult {
            ok: status.is_success(),
            status: Some(i64::from(status.as_u16())),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            content_type,
            body_excerpt: Some(excerpt),
            error: None,
        }
    }
}

impl ToolsApi for Handlers {
    async fn list_tools(
        &self,
        caller: Caller,
        params: ListToolsParams,
    ) -> Result<ListToolsResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let page = match page_of(&params, &rid) {
                Ok(p) => p,
                Err(f) => return f.into(),
            };
            let org = caller.org_id.clone();
            let tool_type = params.type_.map(|t| t.as_str());
            let q = page.clone();
            match self
                .store
                .run(move |conn| store::list(conn, &org, tool_type, &q))
                .await
            {
                Ok((rows, total)) => {
                    let cursor =
                        next_cursor(&page, rows.len(), total, rows.last().map(|r| r.id.as_str()));
                    ListToolsResponse::Ok(Json(ToolList {
                        data: rows.iter().map(tool_model).collect(),
                        pagination: super::pagination(
                            page.offset / page.limit + 1,
                            page.limit,
                            total,
                            cursor,
                        ),
                    }))
                }
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn create_tool(
        &self,
        caller: Caller,
        params: CreateToolParams,
    ) -> Result<CreateToolResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let spec = match parse(&params.body, &rid) {
                Ok(s) => s,
                Err(f) => return f.into(),
            };
            let request_hash = hash_body(params.body.to_json());
            let c = changes(&spec, &self.crypto, "");
            let now = crate::ids::now();
            let row = ToolRow {
                id: crate::ids::new_id("tool"),
                org_id: caller.org_id.clone(),
                name: c.name,
                tool_type: c.tool_type,
                description: c.description,
                body: c.body,
                secrets: c.secrets,
                version: 1,
                created_at: now.clone(),
                updated_at: now,
            };
            let key = params.idempotency_key;
            let created = self
                .store
                .run(move |conn| {
                    let (org, id) = (row.org_id.clone(), row.id.clone());
                    let mut missing = None;
                    let created = idempotent(
                        conn,
                        &org,
                        "createTool",
                        key.as_deref(),
                        &request_hash,
                        &id,
                        |conn| {
                            if let Some(m) = check_knowledge_bases(conn, &org, &spec)? {
                                missing = Some(m);
                                return Err(StoreError::NotFound);
                            }
                            store::insert(conn, &row)
                        },
                    );
                    let created = match (created, missing) {
                        (_, Some(m)) => return Ok(Err(Some(m))),
                        (r, None) => r?,
                    };
                    let id = match created {
                        Created::New(()) => id,
                        Created::Replayed(id) => id,
                        Created::KeyReused => return Ok(Err(None)),
                    };
                    store::get(conn, &org, &id).map(Ok)
                })
                .await;
            match created {
                Ok(Ok(row)) => {
                    let location = format!("/v1/tools/{}", row.id);
                    CreateToolResponse::Created(Json(tool_model(&row)), location, etag(row.version))
                }
                Ok(Err(Some((i, id)))) => missing_kb(i, &id, &rid).into(),
                Ok(Err(None)) => key_reused(&rid).into(),
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn get_tool(
        &self,
        caller: Caller,
        params: GetToolParams,
    ) -> Result<GetToolResponse, ApiError> {
        Ok(async {
            match self.tool(&caller, params.tool_id).await {
                Ok(row) => {
                    let tag = etag(row.version);
                    if params
                        .if_none_match
                        .as_deref()
                        .is_some_and(|h| etag_matches(h, &tag))
                    {
                        return GetToolResponse::NotModified(tag);
                    }
                    GetToolResponse::Ok(Json(tool_model(&row)), tag)
                }
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn replace_tool(
        &self,
        caller: Caller,
        params: ReplaceToolParams,
    ) -> Result<ReplaceToolResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let spec = match parse(&params.body, &rid) {
                Ok(s) => s,
                Err(f) => return f.into(),
            };
            let org = caller.org_id.clone();
            let crypto = self.crypto.clone();
            let if_match = params.if_match;
            let updated = self
                .store
                .run(move |conn| {
                    store::update(conn, &org, &params.tool_id, |conn, current| {
                        if let Some(h) = &if_match
                            && !etag_matches(h, &etag(current.version))
                        {
                            return Err(StoreError::PreconditionFailed);
                        }
                        if let Some(m) = check_knowledge_bases(conn, &org, &spec)? {
                            return Ok(Err(m));
                        }
                        Ok(Ok(changes(&spec, &crypto, &current.secrets)))
                    })
                })
                .await;
            match updated {
                Ok(Ok(row)) => ReplaceToolResponse::Ok(Json(tool_model(&row)), etag(row.version)),
                Ok(Err((i, id))) => missing_kb(i, &id, &rid).into(),
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn delete_tool(
        &self,
        caller: Caller,
        params: DeleteToolParams,
    ) -> Result<DeleteToolResponse, ApiError> {
        Ok(async {
            let org = caller.org_id.clone();
            match self
                .store
                .run(move |conn| store::delete(conn, &org, &params.tool_id))
                .await
            {
                Ok(()) => DeleteToolResponse::NoContent,
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn query_tool(
        &self,
        caller: Caller,
        params: QueryToolParams,
    ) -> Result<QueryToolResponse, ApiError> {
        Ok(async {
            let row = match self.tool(&caller, params.tool_id).await {
                Ok(r) => r,
                Err(f) => return f.into(),
            };
            if row.tool_type != "rag" {
                return wrong_type(&row, "rag", &caller.request_id).into();
            }
            let query = params.body.query.clone();
            match self.tool_search(&caller, &row, params.body).await {
                Ok(results) => {
                    let answer = results
                        .first()
                        .map(|r| r.content.chars().take(ANSWER_CHARS).collect());
                    QueryToolResponse::Ok(Json(RagAnswer {
                        query,
                        results,
                        answer,
                    }))
                }
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn search_tool(
        &self,
        caller: Caller,
        params: SearchToolParams,
    ) -> Result<SearchToolResponse, ApiError> {
        Ok(async {
            let row = match self.tool(&caller, params.tool_id).await {
                Ok(r) => r,
                Err(f) => return f.into(),
            };
            if row.tool_type != "retrieval" {
                return wrong_type(&row, "retrieval", &caller.request_id).into();
            }
            let query = params.body.query.clone();
            match self.tool_search(&caller, &row, params.body).await {
                Ok(results) => SearchToolResponse::Ok(Json(KnowledgeResults {
                    query,
                    total: to_i64(results.len()),
                    results,
                })),
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn test_tool(
        &self,
        caller: Caller,
        params: TestToolParams,
    ) -> Result<TestToolResponse, ApiError> {
        Ok(async {
            let row = match self.tool(&caller, params.tool_id).await {
                Ok(r) => r,
                Err(f) => return f.into(),
            };
            if row.tool_type != "api" {
                return wrong_type(&row, "api", &caller.request_id).into();
            }
            TestToolResponse::Ok(Json(self.call_api(&row, Some(params.body)).await))
        }
        .await)
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
