//! `GET /v1/security/events`.

use agentplane_api::models::{SecurityEvent, SecurityEventList, SecurityEventType, Severity};
use agentplane_api::*;
use poem_openapi::payload::Json;

use super::Handlers;
use super::paging::PageRequest;
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::security::{self as store, EventQuery, SecurityEventRow};
use crate::error::{Failure, Kind, detail};
use crate::failure_response;

failure_response!(ListSecurityEventsResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });

fn to_event(row: SecurityEventRow) -> Result<SecurityEvent, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("security event {}: {what}", row.id));
    Ok(SecurityEvent {
        type_: SecurityEventType::from_wire(&row.event_type).ok_or_else(|| corrupt("type"))?,
        severity: Severity::from_wire(&row.severity).ok_or_else(|| corrupt("severity"))?,
        details: serde_json::from_str(&row.details).map_err(|_| corrupt("details"))?,
        id: row.id,
        message: row.message,
        key_id: row.key_id,
        user_id: row.user_id,
        resource_type: row.resource_type,
        resource_id: row.resource_id,
        request_id: row.request_id,
        created_at: row.created_at,
    })
}

/// A `since` parameter as stored timestamps are written.
pub(super) fn since(value: Option<String>, rid: &str) -> Result<Option<String>, Failure> {
    match value {
        None => Ok(None),
        Some(text) => crate::ids::normalize_time(&text).map(Some).ok_or_else(|| {
            let message = "not an RFC 3339 date-time";
            Failure::with_details(
                Kind::BadRequest,
                "VALIDATION_ERROR",
                message,
                vec![detail("since", "format", message)],
                rid,
            )
        }),
    }
}

impl Handlers {
    async fn security_events(
        &self,
        caller: &Caller,
        params: ListSecurityEventsParams,
    ) -> Result<SecurityEventList, Failure> {
        let rid = caller.request_id.as_str();
        let page = PageRequest::new(
            params.page,
            params.per_page,
            params.cursor.as_deref(),
            params.limit,
            rid,
        )?;
        let query = EventQuery {
            severity: params.severity.map(|s| s.as_str().to_string()),
            event_type: params.type_.map(|t| t.as_str().to_string()),
            since: since(params.since, rid)?,
            after_id: page.after_id.clone(),
            offset: page.offset,
            limit: page.limit,
        };
        let org = caller.org_id.clone();
        let (rows, total) = self
            .store
            .run(move |conn| store::list_events(conn, &org, &query))
            .await
            .map_err(|e| Failure::from_store(e, "SECURITY_EVENT_NOT_FOUND", rid))?;
        let last = rows.last().map(|r| r.id.clone());
        let data = rows
            .into_iter()
            .map(to_event)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::from_store(e, "SECURITY_EVENT_NOT_FOUND", rid))?;
        Ok(SecurityEventList {
            pagination: page.pagination(data.len(), last.as_deref(), total),
            data,
        })
    }
}

impl SecurityApi for Handlers {
    async fn list_security_events(
        &self,
        caller: Caller,
        params: ListSecurityEventsParams,
    ) -> ListSecurityEventsResponse {
        match self.security_events(&caller, params).await {
            Ok(list) => ListSecurityEventsResponse::Ok(Json(list)),
            Err(f) => f.into(),
        }
    }
}
