//! The prompt templates resource (Magnet AI prompt templates).

use agentplane_api::models::{
    PromptTemplate, PromptTemplateInput, PromptTemplateList, PromptTemplateType, RenderedPrompt,
};
use agentplane_api::*;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;

use super::Handlers;
use super::idem;
use super::paging::{PageRequest, etag, etag_matches, not_modified};
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::templates::{self as store, TemplateChanges, TemplateQuery, TemplateRow};
use crate::engine::template;
use crate::error::{Failure, Kind, detail, store_error};

pub(crate) const NOT_FOUND: &str = "TEMPLATE_NOT_FOUND";
const CREATE_OPERATION: &str = "createPromptTemplate";

pub(crate) fn row_to_template(row: &TemplateRow) -> Result<PromptTemplate, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("template {}: {what}", row.id));
    Ok(PromptTemplate {
        id: row.id.clone(),
        name: row.name.clone(),
        description: row.description.clone(),
        template: row.template.clone(),
        variables: serde_json::from_str(&row.variables).map_err(|e| corrupt(&e.to_string()))?,
        type_: PromptTemplateType::from_wire(&row.template_type)
            .ok_or_else(|| corrupt("unknown type"))?,
        version: row.version,
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
    })
}

/// The columns of a template as sent: its variables are the declared ones, or those the text
/// uses; a used variable that is not declared is a 422 naming it.
fn changes_of(input: &PromptTemplateInput, rid: &str) -> Result<TemplateChanges, Failure> {
    let used = template::variables_in(&input.template);
    let variables = match &input.variables {
        None => used,
        Some(declared) => {
            let undeclared: Vec<_> = used.iter().filter(|u| !declared.contains(u)).collect();
            if !undeclared.is_empty() {
                let details = undeclared
                    .iter()
                    .map(|name| {
                        detail(
                            "variables",
                            "undeclared",
                            format!("the template uses {{{{{name}}}}} but `variables` does not declare it"),
                        )
                    })
                    .collect();
                return Err(Failure::with_details(
                    Kind::Unprocessable,
                    "UNDECLARED_VARIABLE",
                    "the template uses variables that `variables` does not declare",
                    details,
                    rid,
                ));
            }
            declared.clone()
        }
    };
    Ok(TemplateChanges {
        name: input.name.clone(),
        description: input.description.clone(),
        template_type: input
            .type_
            .unwrap_or(PromptTemplateType::System)
            .as_str()
            .to_string(),
        template: input.template.clone(),
        variables: serde_json::Value::from(variables).to_string(),
    })
}

impl Handlers {
    async fn template_row(&self, caller: &Caller, id: String) -> Result<TemplateRow, Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| store::get(conn, &org, &id))
            .await
            .map_err(store_error(NOT_FOUND, &caller.request_id))
    }

    async fn list_templates(
        &self,
        caller: &Caller,
        params: ListPromptTemplatesParams,
    ) -> Result<PromptTemplateList, Failure> {
        let rid = caller.request_id.as_str();
        let page = PageRequest::of(&params, rid)?;
        let query = TemplateQuery {
            template_type: params.type_.map(|t| t.as_str().to_string()),
            search: params.search,
            offset: page.offset,
            limit: page.limit,
            after_id: page.after_id.clone(),
        };
        let org = caller.org_id.clone();
        let (rows, total) = self
            .store
            .run(move |conn| store::list(conn, &org, &query))
            .await
            .map_err(store_error(NOT_FOUND, rid))?;
        let data = rows
            .iter()
            .map(row_to_template)
            .collect::<Result<Vec<_>, _>>()
            .map_err(store_error(NOT_FOUND, rid))?;
        Ok(PromptTemplateList {
            pagination: page.pagination(rows.len(), rows.last().map(|r| r.id.as_str()), total),
            data,
        })
    }

    async fn create_template(
        &self,
        caller: &Caller,
        params: CreatePromptTemplateParams,
    ) -> Result<TemplateRow, Failure> {
        let rid = caller.request_id.as_str();
        let changes = changes_of(&params.body, rid)?;
        let hash = idem::request_hash(&params.body.to_json().unwrap_or_default());
        let now = crate::ids::now();
        let row = TemplateRow {
            id: crate::ids::new_id("tpl"),
            org_id: caller.org_id.clone(),
            name: changes.name,
            description: changes.description,
            template_type: changes.template_type,
            template: changes.template,
            variables: changes.variables,
            version: 1,
            created_at: now.clone(),
            updated_at: now,
        };
        let keyed = idem::NewKeyed {
            org_id: row.org_id.clone(),
            operation: CREATE_OPERATION,
            key: params.idempotency_key,
            request_hash: hash,
            resource_id: row.id.clone(),
        };
        let org = row.org_id.clone();
        idem::create_resource(
            &self.store,
            keyed,
            move |conn| store::insert(conn, &row).map(|()| row.clone()),
            move |conn, id| store::get(conn, &org, id),
            NOT_FOUND,
            rid,
        )
        .await
    }

    async fn replace_template(
        &self,
        caller: &Caller,
        params: ReplacePromptTemplateParams,
    ) -> Result<TemplateRow, Failure> {
        let rid = caller.request_id.as_str();
        let changes = changes_of(&params.body, rid)?;
        let org = caller.org_id.clone();
        let id = params.template_id;
        let if_match = params.if_match;
        self.store
            .run(move |conn| {
                store::update(
                    conn,
                    &org,
                    &id,
                    |current| match &if_match {
                        Some(h) if !etag_matches(h, &etag(current.version)) => {
                            Err(StoreError::PreconditionFailed)
                        }
                        _ => Ok(()),
                    },
                    &changes,
                )
            })
            .await
            .map_err(store_error(NOT_FOUND, rid))
    }

    async fn render_template(
        &self,
        caller: &Caller,
        params: RenderPromptTemplateParams,
    ) -> Result<RenderedPrompt, Failure> {
        let rid = caller.request_id.clone();
        let row = self.template_row(caller, params.template_id).await?;
        let tpl = row_to_template(&row).map_err(store_error(NOT_FOUND, &rid))?;
        let values = params.body.variables.unwrap_or_default();
        render_declared(&tpl, &values, "variables", &rid).map(|rendered| RenderedPrompt {
            template_id: tpl.id.clone(),
            rendered,
            variables_used: template::variables_in(&tpl.template),
        })
    }
}

/// Renders `tpl` with `values`; every declared variable without a value is a 422 detail
/// `<prefix>.<name>`.
pub(crate) fn render_declared(
    tpl: &PromptTemplate,
    values: &std::collections::BTreeMap<String, String>,
    prefix: &str,
    rid: &str,
) -> Result<String, Failure> {
    let mut missing: Vec<String> = tpl
        .variables
        .iter()
        .filter(|v| !values.contains_key(*v))
        .cloned()
        .collect();
    let rendered = template::render(&tpl.template, values);
    if let Err(more) = &rendered {
        for m in more {
            if !missing.contains(m) {
                missing.push(m.clone());
            }
        }
    }
    if !missing.is_empty() {
        let details = missing
            .iter()
            .map(|name| {
                detail(
                    &format!("{prefix}.{name}"),
                    "required",
                    format!("the template needs a value for `{name}`"),
                )
            })
            .collect();
        return Err(Failure::with_details(
            Kind::Unprocessable,
            "MISSING_VARIABLES",
            format!("missing values for: {}", missing.join(", ")),
            details,
            rid,
        ));
    }
    rendered.map_err(|_| {
        Failure::new(
            Kind::Unprocessable,
            "MISSING_VARIABLES",
            "missing values",
            rid,
        )
    })
}

impl TemplatesApi for Handlers {
    async fn list_prompt_templates(
        &self,
        caller: Caller,
        params: ListPromptTemplatesParams,
    ) -> Result<ListPromptTemplatesResponse, ApiError> {
        let list = self.list_templates(&caller, params).await?;
        Ok(ListPromptTemplatesResponse::Ok(Json(list)))
    }

    async fn create_prompt_template(
        &self,
        caller: Caller,
        params: CreatePromptTemplateParams,
    ) -> Result<CreatePromptTemplateResponse, ApiError> {
        let row = self.create_template(&caller, params).await?;
        let tpl = row_to_template(&row).map_err(store_error(NOT_FOUND, &caller.request_id))?;
        Ok(CreatePromptTemplateResponse::Created(
            Json(tpl),
            format!("/v1/prompt-templates/{}", row.id),
            etag(row.version),
        ))
    }

    async fn get_prompt_template(
        &self,
        caller: Caller,
        params: GetPromptTemplateParams,
    ) -> Result<GetPromptTemplateResponse, ApiError> {
        let row = self.template_row(&caller, params.template_id).await?;
        let tag = etag(row.version);
        if not_modified(params.if_none_match.as_deref(), &tag) {
            return Ok(GetPromptTemplateResponse::NotModified(tag));
        }
        let tpl = row_to_template(&row).map_err(store_error(NOT_FOUND, &caller.request_id))?;
        Ok(GetPromptTemplateResponse::Ok(Json(tpl), tag))
    }

    async fn replace_prompt_template(
        &self,
        caller: Caller,
        params: ReplacePromptTemplateParams,
    ) -> Result<ReplacePromptTemplateResponse, ApiError> {
        let row = self.replace_template(&caller, params).await?;
        let tpl = row_to_template(&row).map_err(store_error(NOT_FOUND, &caller.request_id))?;
        Ok(ReplacePromptTemplateResponse::Ok(
            Json(tpl),
            etag(row.version),
        ))
    }

    async fn delete_prompt_template(
        &self,
        caller: Caller,
        params: DeletePromptTemplateParams,
    ) -> Result<DeletePromptTemplateResponse, ApiError> {
        let org = caller.org_id.clone();
        let id = params.template_id;
        self.store
            .run(move |conn| store::delete(conn, &org, &id))
            .await
            .map_err(crate::error::store_error(NOT_FOUND, &caller.request_id))?;
        Ok(DeletePromptTemplateResponse::NoContent)
    }

    async fn render_prompt_template(
        &self,
        caller: Caller,
        params: RenderPromptTemplateParams,
    ) -> Result<RenderPromptTemplateResponse, ApiError> {
        let rendered = self.render_template(&caller, params).await?;
        Ok(RenderPromptTemplateResponse::Ok(Json(rendered)))
    }
}
