//! Webhook subscriptions and their deliveries (CodexOS `POST /webhooks`).
//!
//! The secret is sealed at rest (signing needs the plaintext) and shown once, in the create
//! answer (and its idempotent replays). Deliveries themselves are made by
//! [`crate::webhooks::DeliveryWorker`].

use agentplane_api::Json;
use agentplane_api::models::{
    Webhook, WebhookCreated, WebhookDelivery, WebhookDeliveryAttempt, WebhookDeliveryAttemptList,
    WebhookDeliveryList, WebhookList,
};
use agentplane_api::*;
use poem_openapi::types::{ParseFromJSON, ToJSON};
use serde_json::{Map, Value, json};

use super::Handlers;
use super::paging::etag;
use super::resource::{Resource, location};
use crate::auth::Caller;
use crate::db::crud::Child;
use crate::db::events::EventRow;
use crate::db::sql::Page;
use crate::db::webhooks::{self as store, AttemptRow, DeliveryRow, WebhookChanges, WebhookRow};
use crate::db::{DbConnection, StoreError};
use crate::error::{Failure, store_error};

const DELIVERY_NOT_FOUND: &str = "DELIVERY_NOT_FOUND";

fn corrupt(what: &str, id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what} {id}: {e}"))
}

fn webhook_json(row: &WebhookRow) -> Result<Map<String, Value>, StoreError> {
    let events: Value =
        serde_json::from_str(&row.content.events).map_err(|e| corrupt("webhook", &row.id, e))?;
    let mut obj = Map::new();
    obj.insert("id".into(), row.id.clone().into());
    obj.insert("url".into(), row.content.url.clone().into());
    obj.insert("events".into(), events);
    obj.insert("active".into(), (row.content.active != 0).into());
    if let Some(d) = &row.content.description {
        obj.insert("description".into(), d.clone().into());
    }
    obj.insert("version".into(), row.version.into());
    obj.insert("created_at".into(), row.created_at.clone().into());
    obj.insert("updated_at".into(), row.updated_at.clone().into());
    Ok(obj)
}

impl Resource for Webhook {
    type Row = WebhookRow;
    const NOT_FOUND: &'static str = "WEBHOOK_NOT_FOUND";

    fn from_row(row: &WebhookRow) -> Result<Webhook, StoreError> {
        Webhook::parse_from_json(Some(Value::Object(webhook_json(row)?)))
            .map_err(|e| corrupt("webhook", &row.id, e.message()))
    }
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

/// The new row of a create: the body's fields, its secret (or a generated one) sealed.
fn new_webhook(org_id: &str, body: &Value, secret_encrypted: String) -> WebhookRow {
    let content = WebhookChanges {
        url: body["url"].as_str().unwrap_or_default().to_string(),
        events: patterns_text(&body["events"]),
        secret_encrypted,
        active: i64::from(body["active"].as_bool().unwrap_or(true)),
        description: body["description"].as_str().map(str::to_string),
    };
    WebhookRow::new(org_id, crate::ids::new_id("wh"), content)
}

/// The columns a patch writes: what it sends, else what `current` has (`description: null`
/// clears it; `sealed` is the new secret, if any).
fn patched(patch: &Value, sealed: Option<&String>, current: &WebhookRow) -> WebhookChanges {
    let description = match patch.get("description") {
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        _ => current.content.description.clone(),
    };
    WebhookChanges {
        url: patch["url"]
            .as_str()
            .map_or_else(|| current.content.url.clone(), str::to_string),
        events: match patch.get("events") {
            Some(events @ Value::Array(_)) => patterns_text(events),
            _ => current.content.events.clone(),
        },
        secret_encrypted: sealed
            .map_or_else(|| current.content.secret_encrypted.clone(), String::clone),
        active: patch["active"]
            .as_bool()
            .map_or(current.content.active, i64::from),
        description,
    }
}

/// The test event of a webhook: recorded in the log like any event, delivered to this webhook
/// only (a ping matches no wildcard, and `publish` is not used).
fn ping_event(
    conn: &mut DbConnection, org_id: &str, hook: &WebhookRow,
) -> Result<EventRow, StoreError> {
    let data = json!({
        "webhook_id": hook.id,
        "message": "A test event from agentplane: this webhook is reachable and its signatures verify.",
    });
    let event = EventRow {
        id: crate::ids::new_id("evt"),
        org_id: org_id.to_string(),
        event_type: "webhook.ping".to_string(),
        subject_id: Some(hook.id.clone()),
        data: data.to_string(),
        created_at: crate::ids::now(),
    };
    crate::db::events::insert(conn, &event)?;
    Ok(event)
}

impl Handlers {
    /// The created (or replayed) webhook with its secret in clear, and its row.
    async fn create_webhook_row(
        &self, caller: &Caller, params: &CreateWebhookParams,
    ) -> Result<(WebhookCreated, WebhookRow), Failure> {
        let rid = caller.request_id.as_str();
        let body = params.request_json();
        self.outbound("url", body["url"].as_str(), rid)?;
        let secret = body["secret"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(crate::webhooks::generate_secret);
        let row = new_webhook(
            &caller.org_id,
            &body,
            self.crypto.encrypt(secret.as_bytes()),
        );
        let row = self
            .create_row::<Webhook>(caller, params, row, store::insert)
            .await?;
        // A replay (the same body) shows the secret the first request generated.
        let secret = self
            .crypto
            .decrypt(&row.content.secret_encrypted)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| corrupt("webhook", &row.id, e))
            .map_err(store_error(Webhook::NOT_FOUND, rid))?;
        let mut obj = webhook_json(&row).map_err(store_error(Webhook::NOT_FOUND, rid))?;
        // A secret the caller chose is never echoed; a generated one is shown (once per key).
        if body.get("secret").is_none_or(Value::is_null) {
            obj.insert("secret".into(), secret.into());
        }
        let created = WebhookCreated::parse_from_json(Some(Value::Object(obj)))
            .map_err(|e| corrupt("webhook", &row.id, e.message()))
            .map_err(store_error(Webhook::NOT_FOUND, rid))?;
        Ok((created, row))
    }

    /// Queues one delivery of `event_of(conn)` for the webhook, in one transaction.
    async fn queue_for(
        &self, caller: &Caller, webhook_id: String,
        event_of: impl FnOnce(&mut DbConnection, &WebhookRow) -> Result<EventRow, StoreError>
        + Send
        + 'static,
    ) -> Result<WebhookDelivery, Failure> {
        let row = self
            .run_for(caller, Webhook::NOT_FOUND, move |conn, org| {
                crate::db::write_transaction(conn, |conn| {
                    let hook = store::get(conn, org, &webhook_id)?;
                    let event = event_of(conn, &hook)?;
                    let delivery = crate::events::new_delivery(&event, Some(hook.id), None);
                    store::insert_delivery(conn, &delivery)?;
                    Ok(delivery)
                })
            })
            .await?;
        self.events.wake();
        row_to_delivery(&row).map_err(store_error(Webhook::NOT_FOUND, &caller.request_id))
    }
}

impl WebhooksApi for Handlers {
    async fn list_webhooks(
        &self, caller: Caller, params: ListWebhooksParams,
    ) -> Result<ListWebhooksResponse, ApiError> {
        let (data, pagination) = self
            .list_page::<Webhook>(&caller, &params, store::list)
            .await?;
        Ok(ListWebhooksResponse::Ok(Json(WebhookList {
            data,
            pagination,
        })))
    }

    async fn create_webhook(
        &self, caller: Caller, params: CreateWebhookParams,
    ) -> Result<CreateWebhookResponse, ApiError> {
        let (created, row) = self.create_webhook_row(&caller, &params).await?;
        let (location, tag) = (location(&params, &row.id), etag(row.version));
        Ok(CreateWebhookResponse::Created(Json(created), location, tag))
    }

    async fn get_webhook(
        &self, caller: Caller, params: GetWebhookParams,
    ) -> Result<GetWebhookResponse, ApiError> {
        let (id, if_none_match) = (params.webhook_id, params.if_none_match);
        let answer = self.item_if_changed::<Webhook>(&caller, id, if_none_match);
        Ok(answer.await?.into())
    }

    async fn update_webhook(
        &self, caller: Caller, params: UpdateWebhookParams,
    ) -> Result<UpdateWebhookResponse, ApiError> {
        let patch = params.body.to_json().unwrap_or(Value::Null);
        self.outbound("url", patch["url"].as_str(), &caller.request_id)?;
        let sealed = patch["secret"]
            .as_str()
            .map(|s| self.crypto.encrypt(s.as_bytes()));
        let (id, if_match) = (params.webhook_id, params.if_match);
        let (hook, tag) = self
            .replace::<Webhook>(&caller, id, if_match, move |_, current| {
                Ok(Ok(patched(&patch, sealed.as_ref(), current)))
            })
            .await?;
        Ok(UpdateWebhookResponse::Ok(Json(hook), tag))
    }

    async fn delete_webhook(
        &self, caller: Caller, params: DeleteWebhookParams,
    ) -> Result<DeleteWebhookResponse, ApiError> {
        self.remove::<Webhook>(&caller, params.webhook_id).await?;
        Ok(DeleteWebhookResponse::NoContent)
    }

    async fn list_webhook_deliveries(
        &self, caller: Caller, params: ListWebhookDeliveriesParams,
    ) -> Result<ListWebhookDeliveriesResponse, ApiError> {
        let hook = params.webhook_id.clone();
        let status = params.status.map(|s| s.as_str());
        let list = move |conn: &mut DbConnection, org: &str, page: &Page| {
            store::get(conn, org, &hook)?;
            store::list_deliveries(conn, org, &hook, status, page)
        };
        let (data, pagination) = self
            .page_of(&caller, &params, Webhook::NOT_FOUND, list, row_to_delivery)
            .await?;
        let list = WebhookDeliveryList { data, pagination };
        Ok(ListWebhookDeliveriesResponse::Ok(Json(list)))
    }

    async fn get_webhook_delivery(
        &self, caller: Caller, params: GetWebhookDeliveryParams,
    ) -> Result<GetWebhookDeliveryResponse, ApiError> {
        let (hook, id) = (params.webhook_id, params.delivery_id);
        let delivery = self
            .run_for(&caller, DELIVERY_NOT_FOUND, move |conn, org| {
                row_to_delivery(&DeliveryRow::get(conn, org, &hook, &id)?)
            })
            .await?;
        Ok(GetWebhookDeliveryResponse::Ok(Json(delivery)))
    }

    async fn list_webhook_delivery_attempts(
        &self, caller: Caller, params: ListWebhookDeliveryAttemptsParams,
    ) -> Reply<ListWebhookDeliveryAttemptsResponse> {
        let (hook, id) = (params.webhook_id, params.delivery_id);
        let rows = self
            .read_for(&caller, DELIVERY_NOT_FOUND, move |conn, org| {
                DeliveryRow::get(conn, org, &hook, &id)?;
                store::attempts(conn, org, &id)
            })
            .await?;
        let data = rows.into_iter().map(attempt_model).collect();
        Ok(ListWebhookDeliveryAttemptsResponse::Ok(Json(
            WebhookDeliveryAttemptList { data },
        )))
    }

    async fn redeliver_webhook_delivery(
        &self, caller: Caller, params: RedeliverWebhookDeliveryParams,
    ) -> Result<RedeliverWebhookDeliveryResponse, ApiError> {
        let (org, delivery_id) = (caller.org_id.clone(), params.delivery_id);
        let delivery = self
            .queue_for(&caller, params.webhook_id, move |conn, hook| {
                let old = DeliveryRow::get(conn, &org, &hook.id, &delivery_id)?;
                crate::db::events::get(conn, &org, &old.event_id)
            })
            .await?;
        let location = delivery_location(&delivery);
        Ok(RedeliverWebhookDeliveryResponse::Accepted(
            Json(delivery),
            location,
        ))
    }

    async fn test_webhook(
        &self, caller: Caller, params: TestWebhookParams,
    ) -> Result<TestWebhookResponse, ApiError> {
        let org = caller.org_id.clone();
        let delivery = self
            .queue_for(&caller, params.webhook_id, move |conn, hook| {
                ping_event(conn, &org, hook)
            })
            .await?;
        let location = delivery_location(&delivery);
        Ok(TestWebhookResponse::Accepted(Json(delivery), location))
    }
}

/// An attempt as the API shows it.
fn attempt_model(row: AttemptRow) -> WebhookDeliveryAttempt {
    WebhookDeliveryAttempt {
        attempt: row.attempt,
        started_at: row.started_at,
        duration_ms: row.duration_ms,
        response_status: row.response_status,
        error: row.error,
    }
}
