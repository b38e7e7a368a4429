//! The marketplace catalog: agent templates shipped with the server as data
//! (`src/marketplace/catalog.yaml`), parsed and checked once, searched in memory.
//!
//! Each entry's `agent` must be a valid `AgentInput` and its `prompt` a template whose
//! `{{variables}}` are exactly the ones it declares; [`catalog`] checks both the first time
//! it is used (the server calls it at start) and a unit test checks them against the spec.

use std::sync::OnceLock;

use agentplane_api::models::MarketplaceTemplate;
use poem_openapi::types::ParseFromJSON;
use serde_json::Value;

const CATALOG_YAML: &str = include_str!("marketplace/catalog.yaml");
/// When the shipped catalog's versions were published.
const PUBLISHED: &str = "2026-11-01T00:00:00Z";

/// The catalog, or why the shipped data is broken.
pub fn load(text: &str) -> Result<Vec<MarketplaceTemplate>, String> {
    let entries: Vec<Value> =
        yaml_serde::from_str(text).map_err(|e| format!("the catalog is not YAML: {e}"))?;
    let mut out = Vec::with_capacity(entries.len());
    for (i, mut entry) in entries.into_iter().enumerate() {
        let Some(obj) = entry.as_object_mut() else {
            return Err(format!("entry {i} is not a mapping"));
        };
        obj.entry("price").or_insert_with(|| "free".into());
        obj.entry("updated_at").or_insert_with(|| PUBLISHED.into());
        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let template = MarketplaceTemplate::parse_from_json(Some(entry))
            .map_err(|e| format!("template {id}: {}", e.message()))?;
        let used = crate::engine::template::variables_in(&template.prompt.template);
        let mut declared = template.prompt.variables.clone();
        let mut sorted_used = used.clone();
        declared.sort();
        sorted_used.sort();
        sorted_used.dedup();
        if declared != sorted_used {
            return Err(format!(
                "template {id}: the prompt uses {sorted_used:?} but declares {declared:?}"
            ));
        }
        if template.agent.get("name").and_then(Value::as_str).is_none() {
            return Err(format!("template {id}: its agent has no name"));
        }
        if out
            .iter()
            .any(|t: &MarketplaceTemplate| t.id == template.id)
        {
            return Err(format!("template {id} is listed twice"));
        }
        out.push(template);
    }
    Ok(out)
}

/// The shipped catalog. Broken data is a bug in this build: it fails the unit test below, and
/// at run time it shows as an empty catalog with the reason logged.
pub fn catalog() -> &'static [MarketplaceTemplate] {
    static CATALOG: OnceLock<Vec<MarketplaceTemplate>> = OnceLock::new();
    CATALOG.get_or_init(|| {
        load(CATALOG_YAML).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the marketplace catalog is broken");
            Vec::new()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_is_valid_against_the_spec() {
        let templates = load(CATALOG_YAML).expect("the catalog loads");
        assert!(templates.len() >= 20, "{} templates", templates.len());
        let spec: Value = serde_json::from_str(agentplane_api::OPENAPI_JSON).expect("spec");
        let schema = |name: &str| {
            conformance::validate::compile_schema(
                &spec,
                &spec["components"]["schemas"][name],
                &format!("#/components/schemas/{name}"),
            )
            .expect("compiles")
        };
        let (template_schema, agent_schema, prompt_schema) = (
            schema("MarketplaceTemplate"),
            schema("AgentInput"),
            schema("PromptTemplateInput"),
        );
        for t in &templates {
            let json = poem_openapi::types::ToJSON::to_json(t).expect("json");
            assert!(template_schema.is_valid(&json), "{}: {json}", t.id);
            assert!(
                agent_schema.is_valid(&t.agent),
                "{}: agent {}",
                t.id,
                t.agent
            );
            let prompt = serde_json::json!({
                "name": t.prompt.name,
                "template": t.prompt.template,
                "variables": t.prompt.variables,
                "type": t.prompt.type_.as_str(),
            });
            assert!(prompt_schema.is_valid(&prompt), "{}: prompt {prompt}", t.id);
        }
    }

    #[test]
    fn broken_entries_are_refused_with_their_id() {
        let undeclared = "- {id: x, name: X, description: d, category: data, tags: [], author: a, version: 1.0.0, rating: 4, installs: 1, agent: {name: X}, prompt: {name: p, type: system, template: 'Hi {{who}}', variables: []}}";
        assert!(
            load(undeclared)
                .expect_err("refused")
                .contains("template x")
        );
        assert!(
            load("- {id: y}")
                .expect_err("refused")
                .contains("template y")
        );
    }
}
