//! Webhook subscriptions and their deliveries (CodexOS `POST /webhooks`).
//!
//! The secret is sealed at rest (signing needs the plaintext) and shown once, in the create
//! answer (and its idempotent replays). Deliveries themselves are made by
//! [`crate::webhooks::DeliveryWorker`].

use agentplane_api::models::{
    Webhook, WebhookCreated, WebhookDelivery, WebhookDeliveryList, WebhookList,
};
use agentplane_api::*;
use poem_openapi::payload::Json;
use poem_openapi::types::{ParseFromJSON, ToJSON};
use serde_json::{Map, Value, json};

use super::Handlers;
use super::idem::{self, Created, Keyed};
use super::paging::{PageRequest, etag, etag_matches};
use crate::auth::Caller;
use crate::db::events::Page;
use crate::db::webhooks::{self as store, DeliveryRow, WebhookChanges, WebhookRow};
use crate::db::{DbConnection, StoreError};
use crate::error::Failure;
use crate::failure_response;

failure_response!(ListWebhooksResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });
failure_response!(CreateWebhookResponse { Conflict => Conflict, BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, Unprocessable => UnprocessableEntity });
failure_response!(GetWebhookResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(UpdateWebhookResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, PreconditionFailed => PreconditionFailed, Unprocessable => UnprocessableEntity });
failure_response!(DeleteWebhookResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(ListWebhookDeliveriesResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(GetWebhookDeliveryResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(RedeliverWebhookDeliveryResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(TestWebhookResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });

const NOT_FOUND: &str = "WEBHOOK_NOT_FOUND";
const CREATE_OPERATION: &str = "createWebhook";

fn corrupt(what: &str, id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what} {id}: {e}"))
}

fn webhook_json(row: &WebhookRow) -> Result<Map<String, Value>, StoreError> {
    let events: Value =
        serde_json::from_str(&row.events).map_err(|e| corrupt("webhook", &row.id, e))?;
    let mut obj = Map::new();
    obj.insert("id".into(), row.id.clone().into());
    obj.insert("url".into(), row.url.clone().into());
    obj.insert("events".into(), events);
    obj.insert("active".into(), (row.active != 0).into());
    if let Some(d) = &row.description {
        obj.insert("description".into(), d.clone().into());
    }
    obj.insert("version".into(), row.version.into());
    obj.insert("created_at".into(), row.created_at.clone().into());
    obj.insert("updated_at".into(), row.updated_at.clone().into());
    Ok(obj)
}

fn row_to_webhook(row: &WebhookRow) -> Result<Webhook, StoreError> {
    Webhook::parse_from_json(Some(Value::Object(webhook_json(row)?)))
        .map_err(|e| corrupt("webhook", &row.id, e.message()))
}

pub(crate) fn row_to_delivery(row: &DeliveryRow) -> Result<WebhookDelivery, StoreError> {
    let v = json!({
        "id": row.id,
        "webhook_id": row.webhook_id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "max_attempts": crate::events::MAX_ATTEMPTS,
        "next_attempt_at": row.next_attempt_at,
        "last_attempt_at": row.last_attempt_at,
        "response_status": row.response_status,
        "error": row.error,
        "created_at": row.created_at,
        "completed_at": row.completed_at,
    });
    WebhookDelivery::parse_from_json(Some(v)).map_err(|e| corrupt("delivery", &row.id, e.message()))
}

fn page_of(p: &PageRequest) -> Page {
    Page {
        offset: p.offset,
        limit: p.limit,
        after_id: p.after_id.clone(),
    }
}

/// Where a queued delivery can be polled.
fn delivery_location(d: &WebhookDelivery) -> String {
    format!(
        "/v1/webhooks/{}/deliveries/{}",
        d.webhook_id.as_deref().unwrap_or_default(),
        d.id
    )
}

fn patterns_text(events: &Value) -> String {
    events.to_string()
}

impl Handlers {
    /// The created (or replayed) webhook with its secret in clear.
    async fn create_webhook_row(
        &self,
        caller: &Caller,
        params: CreateWebhookParams,
    ) -> Result<(WebhookCreated, i64, String), Failure> {
        let rid = caller.request_id.as_str();
        let body = params.body.to_json().unwrap_or(Value::Null);
        let hash = idem::request_hash(&body);
        let secret = body["secret"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(crate::webhooks::generate_secret);
        let now = crate::ids::now();
        let row = WebhookRow {
            id: crate::ids::new_id("wh"),
            org_id: caller.org_id.clone(),
            url: body["url"].as_str().unwrap_or_default().to_string(),
            events: patterns_text(&body["events"]),
            secret_encrypted: self.crypto.encrypt(secret.as_bytes()),
            active: i64::from(body["active"].as_bool().unwrap_or(true)),
            description: body["description"].as_str().map(str::to_string),
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
        let row = match created {
            Created::New(row) | Created::Replayed(row) => row,
            Created::KeyReused => return Err(idem::key_reused(rid)),
        };
        // A replay shows the secret the first request set.
        let secret = match self.crypto.decrypt(&row.secret_encrypted) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                return Err(Failure::from_store(
                    corrupt("webhook", &row.id, e),
                    NOT_FOUND,
                    rid,
                ));
            }
        };
        let mut obj = webhook_json(&row).map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        obj.insert("secret".into(), secret.into());
        let created = WebhookCreated::parse_from_json(Some(Value::Object(obj))).map_err(|e| {
            Failure::from_store(corrupt("webhook", &row.id, e.message()), NOT_FOUND, rid)
        })?;
        Ok((created, row.version, row.id))
    }

    async fn webhook(&self, caller: &Caller, id: String) -> Result<WebhookRow, Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| store::get(conn, &org, &id))
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, &caller.request_id))
    }

    /// Queues one delivery of `event_of(conn)` for the webhook, in one transaction.
    async fn queue_for(
        &self,
        caller: &Caller,
        webhook_id: String,
        event_of: impl FnOnce(
            &mut DbConnection,
            &WebhookRow,
        ) -> Result<crate::db::events::EventRow, StoreError>
        + Send
        + 'static,
    ) -> Result<WebhookDelivery, Failure> {
        let rid = caller.request_id.as_str();
        let org = caller.org_id.clone();
        let row = self
            .store
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    let hook = store::get(conn, &org, &webhook_id)?;
                    let event = event_of(conn, &hook)?;
                    let delivery = crate::events::new_delivery(&event, Some(hook.id), None);
                    store::insert_delivery(conn, &delivery)?;
                    Ok(delivery)
                })
            })
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, rid))?;
        self.events.wake();
        row_to_delivery(&row).map_err(|e| Failure::from_store(e, NOT_FOUND, rid))
    }
}

impl WebhooksApi for Handlers {
    async fn list_webhooks(
        &self,
        caller: Caller,
        params: ListWebhooksParams,
    ) -> Result<ListWebhooksResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let page = match PageRequest::of(&params, &rid) {
                Ok(p) => p,
                Err(f) => return f.into(),
            };
            let (org, q) = (caller.org_id.clone(), page_of(&page));
            let listed = self
                .store
                .run(move |conn| store::list(conn, &org, &q))
                .await
                .and_then(|(rows, total)| {
                    let data = rows
                        .iter()
                        .map(row_to_webhook)
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((data, rows.last().map(|r| r.id.clone()), total))
                });
            match listed {
                Ok((data, last, total)) => ListWebhooksResponse::Ok(Json(WebhookList {
                    pagination: page.pagination(data.len(), last.as_deref(), total),
                    data,
                })),
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn create_webhook(
        &self,
        caller: Caller,
        params: CreateWebhookParams,
    ) -> Result<CreateWebhookResponse, ApiError> {
        Ok(async {
            match self.create_webhook_row(&caller, params).await {
                Ok((created, version, id)) => CreateWebhookResponse::Created(
                    Json(created),
                    format!("/v1/webhooks/{id}"),
                    etag(version),
                ),
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn get_webhook(
        &self,
        caller: Caller,
        params: GetWebhookParams,
    ) -> Result<GetWebhookResponse, ApiError> {
        Ok(async {
            let row = match self.webhook(&caller, params.webhook_id).await {
                Ok(row) => row,
                Err(f) => return f.into(),
            };
            let tag = etag(row.version);
            if params
                .if_none_match
                .as_deref()
                .is_some_and(|h| etag_matches(h, &tag))
            {
                return GetWebhookResponse::NotModified(tag);
            }
            match row_to_webhook(&row) {
                Ok(w) => GetWebhookResponse::Ok(Json(w), tag),
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn update_webhook(
        &self,
        caller: Caller,
        params: UpdateWebhookParams,
    ) -> Result<UpdateWebhookResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let patch = params.body.to_json().unwrap_or(Value::Null);
            let sealed = patch["secret"]
                .as_str()
                .map(|s| self.crypto.encrypt(s.as_bytes()));
            let (org, id, if_match) = (caller.org_id.clone(), params.webhook_id, params.if_match);
            let updated = self
                .store
                .run(move |conn| {
                    store::update(conn, &org, &id, |current| {
                        if let Some(h) = &if_match
                            && !etag_matches(h, &etag(current.version))
                        {
                            return Err(StoreError::PreconditionFailed);
                        }
                        let description = match patch.get("description") {
                            Some(Value::Null) => None,
                            Some(Value::String(s)) => Some(s.clone()),
                            _ => current.description.clone(),
                        };
                        Ok(WebhookChanges {
                            url: patch["url"]
                                .as_str()
                                .map_or_else(|| current.url.clone(), str::to_string),
                            events: match patch.get("events") {
                                Some(events @ Value::Array(_)) => patterns_text(events),
                                _ => current.events.clone(),
                            },
                            secret_encrypted: sealed
                                .clone()
                                .unwrap_or_else(|| current.secret_encrypted.clone()),
                            active: patch["active"].as_bool().map_or(current.active, i64::from),
                            description,
                        })
                    })
                })
                .await
                .and_then(|row| Ok((row_to_webhook(&row)?, row.version)));
            match updated {
                Ok((w, version)) => UpdateWebhookResponse::Ok(Json(w), etag(version)),
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn delete_webhook(
        &self,
        caller: Caller,
        params: DeleteWebhookParams,
    ) -> Result<DeleteWebhookResponse, ApiError> {
        Ok(async {
            let (org, id) = (caller.org_id.clone(), params.webhook_id);
            match self
                .store
                .run(move |conn| store::delete(conn, &org, &id))
                .await
            {
                Ok(()) => DeleteWebhookResponse::NoContent,
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn list_webhook_deliveries(
        &self,
        caller: Caller,
        params: ListWebhookDeliveriesParams,
    ) -> Result<ListWebhookDeliveriesResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let page = match PageRequest::of(&params, &rid) {
                Ok(p) => p,
                Err(f) => return f.into(),
            };
            let (org, hook, q) = (caller.org_id.clone(), params.webhook_id, page_of(&page));
            let status = params.status.map(|s| s.as_str().to_string());
            let listed = self
                .store
                .run(move |conn| {
                    store::get(conn, &org, &hook)?;
                    store::list_deliveries(conn, &org, &hook, status.as_deref(), &q)
                })
                .await
                .and_then(|(rows, total)| {
                    let data = rows
                        .iter()
                        .map(row_to_delivery)
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((data, rows.last().map(|r| r.id.clone()), total))
                });
            match listed {
                Ok((data, last, total)) => {
                    ListWebhookDeliveriesResponse::Ok(Json(WebhookDeliveryList {
                        pagination: page.pagination(data.len(), last.as_deref(), total),
                        data,
                    }))
                }
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn get_webhook_delivery(
        &self,
        caller: Caller,
        params: GetWebhookDeliveryParams,
    ) -> Result<GetWebhookDeliveryResponse, ApiError> {
        Ok(async {
            let org = caller.org_id.clone();
            let (hook, id) = (params.webhook_id, params.delivery_id);
            match self
                .store
                .run(move |conn| store::get_delivery(conn, &org, &hook, &id))
                .await
                .and_then(|row| row_to_delivery(&row))
            {
                Ok(d) => GetWebhookDeliveryResponse::Ok(Json(d)),
                Err(e) => Failure::from_store(e, "DELIVERY_NOT_FOUND", &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn redeliver_webhook_delivery(
        &self,
        caller: Caller,
        params: RedeliverWebhookDeliveryParams,
    ) -> Result<RedeliverWebhookDeliveryResponse, ApiError> {
        Ok(async {
            let (org, delivery_id) = (caller.org_id.clone(), params.delivery_id);
            let queued = self
                .queue_for(&caller, params.webhook_id, move |conn, hook| {
                    let old = store::get_delivery(conn, &org, &hook.id, &delivery_id)?;
                    crate::db::events::get(conn, &org, &old.event_id)
                })
                .await;
            match queued {
                Ok(d) => {
                    let location = delivery_location(&d);
                    RedeliverWebhookDeliveryResponse::Accepted(Json(d), location)
                }
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn test_webhook(
        &self,
        caller: Caller,
        params: TestWebhookParams,
    ) -> Result<TestWebhookResponse, ApiError> {
        Ok(async {
        let org = caller.org_id.clone();
        let queued = self
            .queue_for(&caller, params.webhook_id, move |conn, hook| {
                let data = json!({
                    "webhook_id": hook.id,
                    "message": "A test event from agentplane: this webhook is reachable and its signatures verify.",
                });
                // Recorded in the log like any event; delivered to this webhook only (a ping
                // matches no wildcard, and `publish` is not used).
                let event = crate::db::events::EventRow {
                    id: crate::ids::new_id("evt"),
                    org_id: org.clone(),
                    event_type: "webhook.ping".to_string(),
                    subject_id: Some(hook.id.clone()),
                    data: data.to_string(),
                    created_at: crate::ids::now(),
                };
                crate::db::events::insert(conn, &event)?;
                Ok(event)
            })
            .await;
        match queued {
            Ok(d) => {
                let location = delivery_location(&d);
                TestWebhookResponse::Accepted(Json(d), location)
            }
            Err(f) => f.into(),
        }
    }
        .await)
    }
}
