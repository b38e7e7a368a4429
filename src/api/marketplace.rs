//! The marketplace (CodexOS `GET /marketplace/search`, `POST /marketplace/install/{id}`):
//! search over the shipped catalog, and installs that create an agent and its prompt
//! template in one transaction.

use agentplane_api::Json;
use agentplane_api::models::{
    Agent, ErrorDetail, MarketplaceSort, MarketplaceTemplate, MarketplaceTemplateList,
};
use agentplane_api::*;
use poem_openapi::types::ToJSON;
use serde_json::{Map, Value};

use super::Handlers;
use super::agents::{new_row, split};
use super::idem::{self, NewKeyed};
use super::paging::PageRequest;
use super::resource::created;
use crate::auth::Caller;
use crate::db::agents::AgentRow;
use crate::db::templates::{self as templates_db, TemplateChanges, TemplateRow};
use crate::error::{Failure, Kind, detail, store_error};

const NOT_FOUND: &str = "TEMPLATE_NOT_FOUND";

/// The id a catalog flow's `retrieval` node names for "the install's `knowledge_bases`".
const INSTALL_KNOWLEDGE_BASES: &str = "install-knowledge-bases";
/// The id a catalog flow's `tool` node names for "the install's first tool".
const INSTALL_TOOL: &str = "install-tool";
/// Knowledge bases a `retrieval` node searches at most (the spec's `maxItems`).
const NODE_KNOWLEDGE_BASES: usize = 10;

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

/// The agent and prompt template rows an install creates, and the agent's fields whose
/// references must exist (all but its new prompt template, written beside it).
fn install_rows(
    t: &MarketplaceTemplate, caller: &Caller, body: &Value,
) -> Result<(AgentRow, TemplateRow, Map<String, Value>), crate::db::StoreError> {
    let prompt = TemplateChanges {
        name: t.prompt.name.clone(),
        description: Some(format!("Installed from the marketplace template {}", t.id)),
        template_type: t.prompt.type_.as_str().to_string(),
        template: t.prompt.template.clone(),
        variables: Value::from(t.prompt.variables.clone()).to_string(),
    };
    let template = TemplateRow::new(&caller.org_id, crate::ids::new_id("tpl"), prompt);
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
    fill_flow(&mut agent, body);
    let mut checked = agent.clone();
    checked.remove("prompt_template_id");
    let row = new_row(&caller.org_id, split(agent, "{}")?);
    Ok((row, template, checked))
}

/// Puts the install's `knowledge_bases` and first of `tools` where a catalog flow names
/// [`INSTALL_KNOWLEDGE_BASES`] and [`INSTALL_TOOL`]; what is not given stays a placeholder,
/// which [`missing_for_flow`] refuses first.
fn fill_flow(agent: &mut Map<String, Value>, body: &Value) {
    let kbs: Vec<Value> = body["knowledge_bases"]
        .as_array()
        .map(|a| a.iter().take(NODE_KNOWLEDGE_BASES).cloned().collect())
        .unwrap_or_default();
    let tool = body["tools"].as_array().and_then(|a| a.first()).cloned();
    let Some(nodes) = agent
        .get_mut("flow")
        .and_then(|f| f.get_mut("nodes"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for node in nodes {
        let Some(config) = node.get_mut("config").and_then(Value::as_object_mut) else {
            continue;
        };
        let names_kbs = config
            .get("knowledge_base_ids")
            .and_then(Value::as_array)
            .is_some_and(|ids| ids.iter().any(|id| id == INSTALL_KNOWLEDGE_BASES));
        if names_kbs && !kbs.is_empty() {
            config.insert("knowledge_base_ids".into(), Value::Array(kbs.clone()));
        }
        if config.get("tool_id").and_then(Value::as_str) == Some(INSTALL_TOOL)
            && let Some(tool) = &tool
        {
            config.insert("tool_id".into(), tool.clone());
        }
    }
}

/// The install fields a template's flow needs and `body` lacks (`knowledge_bases` for its
/// `retrieval` nodes, `tools` for its `tool` nodes), as error details.
fn missing_for_flow(t: &MarketplaceTemplate, body: &Value) -> Vec<ErrorDetail> {
    let flow = t.agent["flow"].to_string();
    let given = |field: &str| body[field].as_array().is_some_and(|a| !a.is_empty());
    let mut missing = Vec::new();
    if flow.contains(INSTALL_KNOWLEDGE_BASES) && !given("knowledge_bases") {
        missing.push(detail(
            "knowledge_bases",
            "required",
            format!(
                "the template {} searches knowledge bases: name at least one",
                t.id
            ),
        ));
    }
    if flow.contains(INSTALL_TOOL) && !given("tools") {
        missing.push(detail(
            "tools",
            "required",
            format!(
                "the template {} calls a tool: name one of this organization",
                t.id
            ),
        ));
    }
    missing
}

/// A page of the search results. Cursors resume after the item they name when it is still
/// in the results; cursor ids spell a template id's `-` as `_` (the shared cursor pattern has
/// no `-`; template ids have no `_`).
fn search_page(
    params: &SearchMarketplaceParams, rid: &str,
) -> Result<MarketplaceTemplateList, Failure> {
    let page = PageRequest::of(params, rid)?;
    let found = search(params);
    let total = i64::try_from(found.len()).unwrap_or(i64::MAX);
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
    Ok(MarketplaceTemplateList {
        pagination: anchored.pagination(data.len(), last.as_deref(), total),
        data,
    })
}

impl Handlers {
    /// Installs the template `params` names once per `Idempotency-Key`: its new (or, on a
    /// retry, first) agent.
    async fn install_template(
        &self, caller: &Caller, params: &InstallMarketplaceTemplateParams,
    ) -> Result<AgentRow, Failure> {
        let rid = caller.request_id.as_str();
        let t = find(&params.template_id).ok_or_else(|| not_found(rid))?;
        let body = params.body.to_json().unwrap_or(Value::Object(Map::new()));
        let missing = missing_for_flow(t, &body);
        if !missing.is_empty() {
            let message = format!("{}: {}", missing[0].field, missing[0].message);
            return Err(Failure::with_details(
                Kind::Unprocessable,
                "VALIDATION_ERROR",
                message,
                missing,
                rid,
            ));
        }
        let (agent, template, checked) =
            install_rows(t, caller, &body).map_err(store_error(NOT_FOUND, rid))?;
        let keyed = NewKeyed {
            // One key for another template is another request.
            request_hash: idem::request_hash(&serde_json::json!({"template": t.id, "body": body})),
            ..NewKeyed::of(params, &caller.org_id, &agent.id)
        };
        let also = move |conn: &mut crate::db::DbConnection| templates_db::insert(conn, &template);
        self.insert_agent(caller, keyed, agent, checked, also).await
    }
}

impl MarketplaceApi for Handlers {
    async fn search_marketplace(
        &self, caller: Caller, params: SearchMarketplaceParams,
    ) -> Result<SearchMarketplaceResponse, ApiError> {
        let list = search_page(&params, &caller.request_id)?;
        Ok(SearchMarketplaceResponse::Ok(Json(list)))
    }

    async fn get_marketplace_template(
        &self, caller: Caller, params: GetMarketplaceTemplateParams,
    ) -> Result<GetMarketplaceTemplateResponse, ApiError> {
        let t = find(&params.template_id).ok_or_else(|| not_found(&caller.request_id))?;
        Ok(GetMarketplaceTemplateResponse::Ok(Json(t.clone())))
    }

    async fn install_marketplace_template(
        &self, caller: Caller, params: InstallMarketplaceTemplateParams,
    ) -> Result<InstallMarketplaceTemplateResponse, ApiError> {
        let row = self.install_template(&caller, &params).await?;
        // The Location is the agent's, not the install's.
        let (agent, _, tag) = created::<Agent>(&params, &row, &caller.request_id)?;
        let location = format!("/v1/agents/{}", row.id);
        Ok(InstallMarketplaceTemplateResponse::Created(
            Json(agent),
            location,
            tag,
        ))
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
