//! The prompt templates resource (Magnet AI prompt templates).

use agentplane_api::models::{
    PromptTemplate, PromptTemplateInput, PromptTemplateList, PromptTemplateType, RenderedPrompt,
};
use agentplane_api::*;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;

use super::Handlers;
use super::idem::{self, Created, Keyed};
use super::paging::{PageRequest, etag, etag_matches};
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::templates::{self as store, TemplateChanges, TemplateQuery, TemplateRow};
use crate::engine::template;
use crate::error::{Failure, Kind, detail};
use crate::failure_response;

failure_response!(ListPromptTemplatesResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });
failure_response!(CreatePromptTemplateResponse { Conflict => Conflict, BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, Unprocessable => UnprocessableEntity });
failure_response!(GetPromptTemplateResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(ReplacePromptTemplateResponse { Conflict => Conflict, BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, PreconditionFailed => PreconditionFailed, Unprocessable => UnprocessableEntity });
failure_response!(DeletePromptTemplateResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(RenderPromptTemplateResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Unprocessable => UnprocessableEntity });

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
            .map_err(|e| Failure::from_store(e, NOT_FOUND, &caller.request_id))
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
            .map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        let data = rows
            .iter()
            .map(row_to_template)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
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
        let key = params.idempotency_key;
        let created = self
            .store
            .run(move |conn| {
                let keyed = Keyed {
                    org_id: &row.org_id,
                    operation: CREATE_OPERATION,
                    key: key.as_deref(),
                    request_hash: &hash,
                    resource_id: &row.id,
                };
                idem::create_once(
                    conn,
                    &keyed,
                    |conn| store::insert(conn, &row).map(|()| row.clone()),
                    |conn, id| store::get(conn, &row.org_id, id),
                )
            })
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        match created {
            Created::New(row) | Created::Replayed(row) => Ok(row),
            Created::KeyReused => Err(idem::key_reused(rid)),
        }
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
            .map_err(|e| Failure::from_store(e, NOT_FOUND, rid))
    }

    async fn render_template(
        &self,
        caller: &Caller,
        params: RenderPromptTemplateParams,
    ) -> Result<RenderedPrompt, Failure> {
        let rid = caller.request_id.clone();
        let row = self.template_row(caller, params.template_id).await?;
        let tpl = row_to_template(&row).map_err(|e| Failure::from_store(e, NOT_FOUND, &rid))?;
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
    ) -> ListPromptTemplatesResponse {
        match self.list_templates(&caller, params).await {
            Ok(list) => ListPromptTemplatesResponse::Ok(Json(list)),
            Err(f) => f.into(),
        }
    }

    async fn create_prompt_template(
        &self,
        caller: Caller,
        params: CreatePromptTemplateParams,
    ) -> CreatePromptTemplateResponse {
        let rid = caller.request_id.clone();
        match self.create_template(&caller, params).await.and_then(|row| {
            row_to_template(&row)
                .map(|t| (t, row))
                .map_err(|e| Failure::from_store(e, NOT_FOUND, &rid))
        }) {
            Ok((tpl, row)) => CreatePromptTemplateResponse::Created(
                Json(tpl),
                format!("/v1/prompt-templates/{}", row.id),
                etag(row.version),
            ),
            Err(f) => f.into(),
        }
    }

    async fn get_prompt_template(
        &self,
        caller: Caller,
        params: GetPromptTemplateParams,
    ) -> GetPromptTemplateResponse {
        let row = match self.template_row(&caller, params.template_id).await {
            Ok(row) => row,
            Err(f) => return f.into(),
        };
        let tag = etag(row.version);
        if params
            .if_none_match
            .as_deref()
            .is_some_and(|h| etag_matches(h, &tag))
        {
            return GetPromptTemplateResponse::NotModified(tag);
        }
        match row_to_template(&row) {
            Ok(t) => GetPromptTemplateResponse::Ok(Json(t), tag),
            Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
        }
    }

    async fn replace_prompt_template(
        &self,
        caller: Caller,
        params: ReplacePromptTemplateParams,
    ) -> ReplacePromptTemplateResponse {
        let rid = caller.request_id.clone();
        match self
            .replace_template(&caller, params)
            .await
            .and_then(|row| {
                row_to_template(&row)
                    .map(|t| (t, row.version))
                    .map_err(|e| Failure::from_store(e, NOT_FOUND, &rid))
            }) {
            Ok((tpl, version)) => ReplacePromptTemplateResponse::Ok(Json(tpl), etag(version)),
            Err(f) => f.into(),
        }
    }

    async fn delete_prompt_template(
        &self,
        caller: Caller,
        params: DeletePromptTemplateParams,
    ) -> DeletePromptTemplateResponse {
        let org = caller.org_id.clone();
        let id = params.template_id;
        match self
            .store
            .run(move |conn| store::delete(conn, &org, &id))
            .await
        {
            Ok(()) => DeletePromptTemplateResponse::NoContent,
            Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
        }
    }

    async fn render_prompt_template(
        &self,
        caller: Caller,
        params: RenderPromptTemplateParams,
    ) -> RenderPromptTemplateResponse {
        match self.render_template(&caller, params).await {
            Ok(r) => RenderPromptTemplateResponse::Ok(Json(r)),
            Err(f) => f.into(),
        }
    }
}
