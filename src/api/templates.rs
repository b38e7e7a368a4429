//! The prompt templates resource (Magnet AI prompt templates).

use agentplane_api::Json;
use agentplane_api::models::{
    PromptTemplate, PromptTemplateInput, PromptTemplateList, PromptTemplateType, RenderedPrompt,
};
use agentplane_api::*;

use super::Handlers;
use super::resource::Resource;
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::templates::{self as store, TemplateChanges, TemplateFilter, TemplateRow};
use crate::engine::template;
use crate::error::{Failure, Kind, detail};

impl Resource for PromptTemplate {
    type Row = TemplateRow;
    const NOT_FOUND: &'static str = "TEMPLATE_NOT_FOUND";

    fn from_row(row: &TemplateRow) -> Result<PromptTemplate, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("template {}: {what}", row.id));
        Ok(PromptTemplate {
            id: row.id.clone(),
            name: row.content.name.clone(),
            description: row.content.description.clone(),
            template: row.content.template.clone(),
            variables: serde_json::from_str(&row.content.variables)
                .map_err(|e| corrupt(&e.to_string()))?,
            type_: PromptTemplateType::from_wire(&row.content.template_type)
                .ok_or_else(|| corrupt("unknown type"))?,
            version: row.version,
            created_at: row.created_at.clone(),
            updated_at: row.updated_at.clone(),
        })
    }
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

/// A new template of `org_id` with the columns `c`.
fn new_row(org_id: &str, c: TemplateChanges) -> TemplateRow {
    TemplateRow::new(org_id, crate::ids::new_id("tpl"), c)
}

/// Renders `tpl` with `values`; every declared variable without a value is a 422 detail
/// `<prefix>.<name>`.
pub(crate) fn render_declared(
    tpl: &PromptTemplate, values: &std::collections::BTreeMap<String, String>, prefix: &str,
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
        &self, caller: Caller, params: ListPromptTemplatesParams,
    ) -> Reply<ListPromptTemplatesResponse> {
        let filter = TemplateFilter {
            template_type: params.type_.map(|t| t.as_str().to_string()),
            search: params.search.clone(),
        };
        let (data, pagination) = self
            .list_page::<PromptTemplate>(&caller, &params, move |conn, org, page| {
                store::list(conn, org, &filter, page)
            })
            .await?;
        let list = PromptTemplateList { data, pagination };
        Ok(ListPromptTemplatesResponse::Ok(Json(list)))
    }

    async fn create_prompt_template(
        &self, caller: Caller, params: CreatePromptTemplateParams,
    ) -> Reply<CreatePromptTemplateResponse> {
        let row = new_row(
            &caller.org_id,
            changes_of(&params.body, &caller.request_id)?,
        );
        let (tpl, location, tag) = self.create::<PromptTemplate>(&caller, &params, row).await?;
        Ok(CreatePromptTemplateResponse::Created(
            Json(tpl),
            location,
            tag,
        ))
    }

    async fn get_prompt_template(
        &self, caller: Caller, params: GetPromptTemplateParams,
    ) -> Reply<GetPromptTemplateResponse> {
        let (id, if_none_match) = (params.template_id, params.if_none_match);
        let answer = self.item_if_changed::<PromptTemplate>(&caller, id, if_none_match);
        Ok(answer.await?.into())
    }

    async fn replace_prompt_template(
        &self, caller: Caller, params: ReplacePromptTemplateParams,
    ) -> Reply<ReplacePromptTemplateResponse> {
        let changes = changes_of(&params.body, &caller.request_id)?;
        let (id, if_match) = (params.template_id, params.if_match);
        let (tpl, tag) = self
            .replace::<PromptTemplate>(&caller, id, if_match, |_, _| Ok(Ok(changes)))
            .await?;
        Ok(ReplacePromptTemplateResponse::Ok(Json(tpl), tag))
    }

    async fn delete_prompt_template(
        &self, caller: Caller, params: DeletePromptTemplateParams,
    ) -> Reply<DeletePromptTemplateResponse> {
        self.remove::<PromptTemplate>(&caller, params.template_id)
            .await?;
        Ok(DeletePromptTemplateResponse::NoContent)
    }

    async fn render_prompt_template(
        &self, caller: Caller, params: RenderPromptTemplateParams,
    ) -> Reply<RenderPromptTemplateResponse> {
        let tpl = self
            .item::<PromptTemplate>(&caller, params.template_id)
            .await?;
        let values = params.body.variables.unwrap_or_default();
        let rid = &caller.request_id;
        let rendered = RenderedPrompt {
            rendered: render_declared(&tpl, &values, "variables", rid)?,
            template_id: tpl.id.clone(),
            variables_used: template::variables_in(&tpl.template),
        };
        Ok(RenderPromptTemplateResponse::Ok(Json(rendered)))
    }
}
