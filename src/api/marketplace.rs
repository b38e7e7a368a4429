//! The marketplace (CodexOS `GET /marketplace/search`, `POST /marketplace/install/{id}`):
//! search over the shipped catalog, and installs that create an agent and its prompt
//! template in one transaction.

use agentplane_api::models::{MarketplaceSort, MarketplaceTemplate, MarketplaceTemplateList};
use agentplane_api::*;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use serde_json::{Map, Value};

use super::Handlers;
use super::agents::{publish_agent, row_to_agent, split};
use super::idem::{self, Created, Keyed};
use super::paging::{PageRequest, etag};
use crate::auth::Caller;
use crate::db::agents::{self as agents_db, AgentRow};
use crate::db::templates::{self as templates_db, TemplateRow};
use crate::error::{Failure, Kind};
use crate::failure_response;

failure_response!(SearchMarketplaceResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });
failure_response!(GetMarketplaceTemplateResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(InstallMarketplaceTemplateResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Conflict => Conflict, Unprocessable => UnprocessableEntity });

const NOT_FOUND: &str = "TEMPLATE_NOT_FOUND";
const INSTALL_OPERATION: &str = "installMarketplaceTemplate";

fn not_found(rid: &str) -> Failure {
    Failure::new(
        Kind::NotFound,
        NOT_FOUND,
        "no such template in the marketplace",
        rid,
    )
}

fn find(id: &str) -> Option<&'static MarketplaceTemplate> {
    crate::marketplace::catalog().iter().find(|t| t.id == id)
}

/// Whether `t` matches every word of `q` (name, description, category, tags).
fn matches_query(t: &MarketplaceTemplate, q: &str) -> bool {
    let haystack = format!(
        "{} {} {} {}",
        t.name,
        t.description,
        t.category.as_str(),
        t.tags.join(" ")
    )
    .to_lowercase();
    q.split_whitespace()
        .all(|word| haystack.contains(&word.to_lowercase()))
}

/// The catalog filtered and sorted as `params` asks.
fn search(params: &SearchMarketplaceParams) -> Vec<&'static MarketplaceTemplate> {
    let mut found: Vec<&MarketplaceTemplate> = crate::marketplace::catalog()
        .iter()
        .filter(|t| params.q.as_deref().is_none_or(|q| matches_query(t, q)))
        .filter(|t| params.category.is_none_or(|c| t.category == c))
        .filter(|t| params.price.is_none_or(|p| t.price == p))
        .filter(|t| {
            params.tags.as_deref().is_none_or(|wanted| {
                wanted
                    .iter()
                    .all(|w| t.tags.iter().any(|tag| tag == w.as_str()))
            })
        })
        .collect();
    match params.sort.unwrap_or(MarketplaceSort::Popular) {
        MarketplaceSort::Popular => found.sort_by_key(|t| std::cmp::Reverse(t.installs)),
        MarketplaceSort::Rating => found.sort_by(|a, b| b.rating.total_cmp(&a.rating)),
        MarketplaceSort::Recent => {
            found.sort_by(|a, b| (&b.updated_at, &b.version).cmp(&(&a.updated_at, &a.version)))
        }
        MarketplaceSort::Name => found.sort_by(|a, b| a.name.cmp(&b.name)),
    }
    found
}

/// The agent and prompt template rows an install creates.
fn install_rows(
    t: &MarketplaceTemplate,
    caller: &Caller,
    body: &Value,
) -> Result<(AgentRow, TemplateRow), crate::db::StoreError> {
    let now = crate::ids::now();
    let template = TemplateRow {
        id: crate::ids::new_id("tpl"),
        org_id: caller.org_id.clone(),
        name: t.prompt.name.clone(),
        description: Some(format!("Installed from the marketplace template {}", t.id)),
        template_type: t.prompt.type_.as_str().to_string(),
        template: t.prompt.template.clone(),
        variables: Value::from(t.prompt.variables.clone()).to_string(),
        version: 1,
        created_at: now.clone(),
        updated_at: now.clone(),
    };
    let mut agent: Map<String, Value> = match &t.agent {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    if let Some(name) = body["name"].as_str() {
        agent.insert("name".into(), name.into());
    }
    agent
        .entry("description")
        .or_insert_with(|| t.description.clone().into());
    agent
        .entry("tags")
        .or_insert_with(|| Value::from(t.tags.clone()));
    agent.insert("prompt_template_id".into(), template.id.clone().into());
    if let Some(kbs) = body.get("knowledge_bases").filter(|v| v.is_array()) {
        agent.insert("knowledge_bases".into(), kbs.clone());
    }
    let mut metadata = match agent.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    metadata.insert("marketplace_template_id".into(), t.id.clone().into());
    metadata.insert(
        "marketplace_template_version".into(),
        t.version.clone().into(),
    );
    if let Some(ws) = body["workspace_id"].as_str() {
        metadata.insert("workspace_id".into(), ws.into());
    }
    agent.insert("metadata".into(), Value::Object(metadata));
    let changes = split(agent, "{}")?;
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
    Ok((row, template))
}

impl MarketplaceApi for Handlers {
    async fn search_marketplace(
        &self,
        caller: Caller,
        params: SearchMarketplaceParams,
    ) -> Result<SearchMarketplaceResponse, ApiError> {
        Ok(async {
            let page = match PageRequest::of(&params, &caller.request_id) {
                Ok(p) => p,
                Err(f) => return f.into(),
            };
            let found = search(&params);
            let total = i64::try_from(found.len()).unwrap_or(i64::MAX);
            // Cursors resume after the item they name when it is still in the results.
            // Cursor ids spell a template id's `-` as `_` (the shared cursor pattern has no `-`;
            // template ids have no `_`).
            let start = match &page.after_id {
                Some(id) => found
                    .iter()
                    .position(|t| t.id == id.replace('_', "-"))
                    .map_or(page.offset, |i| i64::try_from(i + 1).unwrap_or(i64::MAX)),
                None => page.offset,
            };
            let data: Vec<MarketplaceTemplate> = found
                .into_iter()
                .skip(usize::try_from(start).unwrap_or(usize::MAX))
                .take(usize::try_from(page.limit).unwrap_or(0))
                .cloned()
                .collect();
            let anchored = PageRequest {
                offset: start,
                ..page
            };
            let last = data.last().map(|t| t.id.replace('-', "_"));
            SearchMarketplaceResponse::Ok(Json(MarketplaceTemplateList {
                pagination: anchored.pagination(data.len(), last.as_deref(), total),
                data,
            }))
        }
        .await)
    }

    async fn get_marketplace_template(
        &self,
        caller: Caller,
        params: GetMarketplaceTemplateParams,
    ) -> Result<GetMarketplaceTemplateResponse, ApiError> {
        Ok(async {
            match find(&params.template_id) {
                Some(t) => GetMarketplaceTemplateResponse::Ok(Json(t.clone())),
                None => not_found(&caller.request_id).into(),
            }
        }
        .await)
    }

    async fn install_marketplace_template(
        &self,
        caller: Caller,
        params: InstallMarketplaceTemplateParams,
    ) -> Result<InstallMarketplaceTemplateResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let Some(t) = find(&params.template_id) else {
                return not_found(&rid).into();
            };
            let body = params.body.to_json().unwrap_or(Value::Object(Map::new()));
            let hash = idem::request_hash(&serde_json::json!({"template": t.id, "body": body}));
            let (agent, template) = match install_rows(t, &caller, &body) {
                Ok(rows) => rows,
                Err(e) => return Failure::from_store(e, NOT_FOUND, &rid).into(),
            };
            let key = params.idempotency_key;
            let created = self
                .store
                .run(move |conn| {
                    let keyed = Keyed {
                        org_id: &agent.org_id,
                        operation: INSTALL_OPERATION,
                        key: key.as_deref(),
                        request_hash: &hash,
                        resource_id: &agent.id,
                    };
                    idem::create_once(
                        conn,
                        &keyed,
                        |conn| {
                            templates_db::insert(conn, &template)?;
                            agents_db::insert(conn, &agent)?;
                            publish_agent(conn, "agent.created", &agent)?;
                            Ok(agent.clone())
                        },
                        |conn, id| agents_db::get(conn, &agent.org_id, id),
                    )
                })
                .await;
            let row = match created {
                Ok(Created::New(row)) => {
                    self.events.wake();
                    row
                }
                Ok(Created::Replayed(row)) => row,
                Ok(Created::KeyReused) => return idem::key_reused(&rid).into(),
                Err(e) => return Failure::from_store(e, super::agents::NOT_FOUND, &rid).into(),
            };
            match row_to_agent(&row) {
                Ok(a) => InstallMarketplaceTemplateResponse::Created(
                    Json(a),
                    format!("/v1/agents/{}", row.id),
                    etag(row.version),
                ),
                Err(e) => Failure::from_store(e, super::agents::NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: Option<&str>, sort: Option<MarketplaceSort>) -> SearchMarketplaceParams {
        SearchMarketplaceParams {
            q: q.map(str::to_string),
            category: None,
            tags: None,
            price: None,
            sort,
            page: 1,
            per_page: 20,
            cursor: None,
            limit: None,
        }
    }

    #[test]
    fn search_needs_every_word_and_sorts_by_popularity_by_default() {
        let found = search(&params(Some("support knowledge"), None));
        assert!(found.iter().any(|t| t.id == "support-kb-assistant"));
        assert!(found.iter().all(|t| matches_query(t, "support knowledge")));
        let all = search(&params(None, None));
        assert!(all.windows(2).all(|w| w[0].installs >= w[1].installs));
        let by_rating = search(&params(None, Some(MarketplaceSort::Rating)));
        assert!(by_rating.windows(2).all(|w| w[0].rating >= w[1].rating));
        assert!(search(&params(Some("zzzz-nothing"), None)).is_empty());
    }
}
