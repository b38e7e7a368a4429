//! The model registry (Magnet AI models). `api_key` is write-only: sealed with
//! [`crate::crypto::Crypto`] into its own column, reported only as `api_key_set`.

use agentplane_api::Json;
use agentplane_api::models::{Model, ModelInput, ModelList, ModelPricing, ModelProvider};
use agentplane_api::*;
use serde_json::{Map, Value, json};

use super::Handlers;
use super::paging::{PageRequest, conditional};
use super::resource::{Resource, items};
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::models::{self as store, ModelChanges, ModelRow};
use crate::error::{Failure, Kind};

/// The id of the built-in local model, which every organization has.
pub const BUILTIN_ID: &str = "model_local";
/// The endpoint of an `openai-compatible` model registered without one.
pub const DEFAULT_OPENAI_ENDPOINT: &str = "https://api.openai.com/v1";

/// The built-in model: local, free, offline.
pub fn builtin() -> Model {
    Model {
        id: BUILTIN_ID.to_string(),
        name: "Local (built in)".to_string(),
        description: Some(
            "Deterministic and offline: answers from the agent's prompt and retrieved passages."
                .to_string(),
        ),
        provider: ModelProvider::Local,
        model_id: crate::engine::provider::LOCAL_MODEL_NAME.to_string(),
        endpoint: None,
        api_key_set: false,
        pricing: ModelPricing {
            input_per_1k: 0.0,
            output_per_1k: 0.0,
        },
        context_window: Some(32_768),
        max_output_tokens: Some(1024),
        built_in: true,
        version: 1,
        created_at: "2026-01-01T00:00:00.000000Z".to_string(),
        updated_at: "2026-01-01T00:00:00.000000Z".to_string(),
    }
}

impl Resource for Model {
    type Row = ModelRow;
    const NOT_FOUND: &'static str = "MODEL_NOT_FOUND";

    fn from_row(row: &ModelRow) -> Result<Model, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("model {}: {what}", row.id));
        let body: Map<String, Value> =
            serde_json::from_str(&row.content.body).map_err(|e| corrupt(e.to_string()))?;
        let pricing = body.get("pricing").cloned().unwrap_or(Value::Null);
        Ok(Model {
            id: row.id.clone(),
            name: row.content.name.clone(),
            description: body
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            provider: ModelProvider::from_wire(&row.content.provider)
                .ok_or_else(|| corrupt("unknown provider".into()))?,
            model_id: row.content.model_name.clone(),
            endpoint: row.content.endpoint.clone(),
            api_key_set: row.content.api_key_encrypted.is_some(),
            pricing: ModelPricing {
                input_per_1k: pricing["input_per_1k"].as_f64().unwrap_or(0.0),
                output_per_1k: pricing["output_per_1k"].as_f64().unwrap_or(0.0),
            },
            context_window: body.get("context_window").and_then(Value::as_i64),
            max_output_tokens: body.get("max_output_tokens").and_then(Value::as_i64),
            built_in: false,
            version: row.version,
            created_at: row.created_at.clone(),
            updated_at: row.updated_at.clone(),
        })
    }
}

/// The columns of a model as sent; a key left out keeps `previous_key`.
fn changes_of(
    input: &ModelInput, previous_key: Option<String>, crypto: &crate::crypto::Crypto, rid: &str,
) -> Result<ModelChanges, Failure> {
    if let Some(e) = &input.endpoint
        && url_is_bad(e)
    {
        return Err(Failure::on_field(
            Kind::Unprocessable,
            "VALIDATION_ERROR",
            "endpoint",
            "format",
            "not an http(s) URL",
            rid,
        ));
    }
    let mut body = Map::new();
    if let Some(d) = &input.description {
        body.insert("description".into(), d.clone().into());
    }
    let pricing = input.pricing.clone().unwrap_or(ModelPricing {
        input_per_1k: 0.0,
        output_per_1k: 0.0,
    });
    body.insert(
        "pricing".into(),
        json!({"input_per_1k": pricing.input_per_1k, "output_per_1k": pricing.output_per_1k}),
    );
    if let Some(c) = input.context_window {
        body.insert("context_window".into(), c.into());
    }
    if let Some(c) = input.max_output_tokens {
        body.insert("max_output_tokens".into(), c.into());
    }
    Ok(ModelChanges {
        name: input.name.clone(),
        provider: input.provider.as_str().to_string(),
        model_name: input.model_id.clone(),
        endpoint: match (&input.endpoint, input.provider) {
            (Some(e), _) => Some(e.trim_end_matches('/').to_string()),
            (None, ModelProvider::OpenaiCompatible) => Some(DEFAULT_OPENAI_ENDPOINT.to_string()),
            (None, _) => None,
        },
        api_key_encrypted: match &input.api_key {
            Some(k) => Some(crypto.encrypt(k.as_bytes())),
            None => previous_key,
        },
        body: Value::Object(body).to_string(),
    })
}

fn url_is_bad(text: &str) -> bool {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    match rest {
        None => true,
        Some(r) => r.is_empty() || r.starts_with('/'),
    }
}

/// A new model of `org_id` with the columns `c`.
fn new_row(org_id: &str, c: ModelChanges) -> ModelRow {
    ModelRow::new(org_id, crate::ids::new_id("model"), c)
}

impl ModelRegistryApi for Handlers {
    /// A page of the organization's models; the built-in one is the last item of the last
    /// page (of every list it matches).
    async fn list_models(
        &self, caller: Caller, params: ListModelsParams,
    ) -> Reply<ListModelsResponse> {
        let rid = caller.request_id.as_str();
        let page = PageRequest::of(&params, rid)?;
        let provider = params.provider.map(|p| p.as_str().to_string());
        let with_builtin = provider.as_deref().is_none_or(|p| p == "local");
        let (rows, stored) = self
            .rows_on(&caller, &page, Model::NOT_FOUND, move |conn, org, q| {
                store::list(conn, org, provider.as_deref(), q)
            })
            .await?;
        let mut data = items::<Model>(&rows, rid)?;
        let total = stored + i64::from(with_builtin);
        let end = page.offset + i64::try_from(data.len()).unwrap_or(0);
        if with_builtin
            && i64::try_from(data.len()).unwrap_or(0) < page.limit
            && end == stored
            && page.after_id.as_deref() != Some(BUILTIN_ID)
        {
            data.push(builtin());
        }
        let last = data.last().map(|m| m.id.clone());
        let pagination = page.pagination(data.len(), last.as_deref(), total);
        Ok(ListModelsResponse::Ok(Json(ModelList { data, pagination })))
    }

    async fn create_model(
        &self, caller: Caller, params: CreateModelParams,
    ) -> Reply<CreateModelResponse> {
        let rid = caller.request_id.as_str();
        self.outbound("endpoint", params.body.endpoint.as_deref(), rid)?;
        let changes = changes_of(&params.body, None, &self.crypto, rid)?;
        let row = new_row(&caller.org_id, changes);
        let (model, location, tag) = self.create::<Model>(&caller, &params, row).await?;
        Ok(CreateModelResponse::Created(Json(model), location, tag))
    }

    async fn get_model(&self, caller: Caller, params: GetModelParams) -> Reply<GetModelResponse> {
        let if_none_match = params.if_none_match;
        if params.model_id == BUILTIN_ID {
            let local = builtin();
            let version = local.version;
            return Ok(conditional(local, version, if_none_match.as_deref()).into());
        }
        let answer = self.item_if_changed::<Model>(&caller, params.model_id, if_none_match);
        Ok(answer.await?.into())
    }

    async fn replace_model(
        &self, caller: Caller, params: ReplaceModelParams,
    ) -> Reply<ReplaceModelResponse> {
        let ReplaceModelParams {
            model_id,
            if_match,
            body,
        } = params;
        let rid = caller.request_id.clone();
        // Validate before touching the row; the sealed key is chosen inside the transaction.
        self.outbound("endpoint", body.endpoint.as_deref(), &rid)?;
        changes_of(&body, None, &self.crypto, &rid)?;
        let crypto = self.crypto.clone();
        let (model, tag) = self
            .replace::<Model>(&caller, model_id, if_match, move |_, current| {
                let key = current.content.api_key_encrypted.clone();
                Ok(changes_of(&body, key, &crypto, &rid))
            })
            .await?;
        Ok(ReplaceModelResponse::Ok(Json(model), tag))
    }

    async fn delete_model(
        &self, caller: Caller, params: DeleteModelParams,
    ) -> Reply<DeleteModelResponse> {
        self.remove::<Model>(&caller, params.model_id).await?;
        Ok(DeleteModelResponse::NoContent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(!url_is_bad("http://127.0.0.1:9/v1"));
        assert!(!url_is_bad("https://api.example.com"));
        assert!(url_is_bad("ftp://x"));
        assert!(url_is_bad("https://"));
        assert!(url_is_bad("http:///path"));
    }
}
