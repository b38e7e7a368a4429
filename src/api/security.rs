//! `GET /v1/security/events` and the security scans of agents
//! (`POST /v1/security/scan/{agent_id}`, `GET /v1/security/scans[/{scan_id}]`).

use agentplane_api::Json;
use agentplane_api::models::{
    SecurityEvent, SecurityEventList, SecurityEventType, SecurityFinding, SecurityScan,
    SecurityScanList, SecurityScanRule, SecurityScanStatus, Severity, SeverityCounts,
};
use agentplane_api::*;
use serde_json::{Map, Value, json};

use super::Handlers;
use super::idem;
use super::paging::{etag, not_modified};
use super::resource::Resource;
use crate::auth::Caller;
use crate::db::security::{self as store, EventQuery, SecurityEventRow};
use crate::db::security_scans::{self as scans, ScanQuery, ScanRow};
use crate::db::types::same_variants;
use crate::db::{DbConnection, StoreError, StoreResult};
use crate::error::{Failure, Kind, store_error};
use crate::security::scan::{self, Finding, Reference, ReferenceKind, Subject};
use crate::security::{self as events, Event, EventType};

const EVENT_NOT_FOUND: &str = "SECURITY_EVENT_NOT_FOUND";
const SCAN_OPERATION: &str = "scanAgent";
/// A scan never changes: every scan's version is its first.
const SCAN_VERSION: i64 = 1;

same_variants!(EventType <=> SecurityEventType {
    AuthenticationFailed,
    ApiKeyCreated,
    ApiKeyRevoked,
    ApiKeyUpdated,
    PermissionDenied,
    RateLimitExceeded,
    SecurityScanFindings,
    VaultSecretRead,
});

same_variants!(events::Severity <=> Severity { Low, Medium, High, Critical });

fn to_event(row: &SecurityEventRow) -> Result<SecurityEvent, StoreError> {
    let row = row.clone();
    Ok(SecurityEvent {
        type_: row.event_type.into(),
        severity: row.severity.into(),
        details: row.details.0,
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
            Failure::on_field(
                Kind::BadRequest,
                "VALIDATION_ERROR",
                "since",
                "format",
                "not an RFC 3339 date-time",
                rid,
            )
        }),
    }
}

/// A JSON object of `pairs` and the `body` document (an object) of a stored resource.
fn document(pairs: Vec<(&str, Value)>, body: &str) -> Value {
    let mut obj: Map<String, Value> = serde_json::from_str(body).unwrap_or_default();
    for (k, v) in pairs {
        if !v.is_null() {
            obj.insert(k.to_string(), v);
        }
    }
    Value::Object(obj)
}

/// A reference, looked up in the organization (`None` when it does not exist).
fn lookup(
    conn: &mut DbConnection, org: &str, kind: ReferenceKind, id: &str,
) -> StoreResult<Option<Value>> {
    let found = match kind {
        ReferenceKind::Model => crate::db::models::get(conn, org, id).map(|m| {
            document(
                vec![
                    ("name", m.content.name.into()),
                    ("provider", m.content.provider.into()),
                    ("model_name", m.content.model_name.into()),
                    ("endpoint", m.content.endpoint.into()),
                ],
                &m.content.body,
            )
        }),
        ReferenceKind::PromptTemplate => crate::db::templates::get(conn, org, id)
            .map(|t| json!({"name": t.content.name, "description": t.content.description, "template": t.content.template})),
        ReferenceKind::KnowledgeBase => crate::db::knowledge::get_kb(conn, org, id).map(|k| {
            document(
                vec![
                    ("name", k.content.name.into()),
                    ("description", k.content.description.into()),
                ],
                &k.content.body,
            )
        }),
        ReferenceKind::Tool => crate::db::tools::get(conn, org, id).map(|t| {
            document(
                vec![
                    ("name", t.content.name.into()),
                    ("type", t.content.tool_type.into()),
                    ("description", t.content.description.into()),
                ],
                &t.content.body,
            )
        }),
    };
    crate::db::Found::found(found)
}

/// What the agent references: kind, id and where in the agent (a JSON pointer).
fn references_of(agent: &Value) -> Vec<(ReferenceKind, String, String)> {
    let mut wanted: Vec<(ReferenceKind, String, String)> = Vec::new();
    let text = |p: &str| agent.pointer(p).and_then(Value::as_str).map(str::to_string);
    if let Some(id) = text("/model_id") {
        wanted.push((ReferenceKind::Model, id, "/model_id".into()));
    }
    if let Some(id) = text("/prompt_template_id") {
        wanted.push((
            ReferenceKind::PromptTemplate,
            id,
            "/prompt_template_id".into(),
        ));
    }
    let listed = |field: &str| -> Vec<(usize, String)> {
        agent
            .get(field)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.as_str().map(|s| (i, s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (i, id) in listed("knowledge_bases") {
        wanted.push((
            ReferenceKind::KnowledgeBase,
            id,
            format!("/knowledge_bases/{i}"),
        ));
    }
    for (i, id) in listed("tools") {
        wanted.push((ReferenceKind::Tool, id, format!("/tools/{i}")));
    }
    // Flow nodes that call a tool name it in their config.
    if let Some(nodes) = agent.pointer("/flow/nodes").and_then(Value::as_array) {
        for (i, node) in nodes.iter().enumerate() {
            if let Some(id) = node.pointer("/config/tool_id").and_then(Value::as_str) {
                wanted.push((
                    ReferenceKind::Tool,
                    id.to_string(),
                    format!("/flow/nodes/{i}/config/tool_id"),
                ));
            }
        }
    }
    wanted
}

/// The agent and everything it references, as the scanner reads them.
fn subject_of(conn: &mut DbConnection, org: &str, agent: Value) -> StoreResult<Subject> {
    let wanted = references_of(&agent);
    let mut references = Vec::with_capacity(wanted.len());
    let mut seen = std::collections::HashMap::new();
    for (kind, id, location) in wanted {
        let key = (kind.label(), id.clone());
        let found = match seen.get(&key) {
            Some(found) => {
                // Scanned once; a second mention only needs to exist.
                if Option::is_none(found) {
                    None
                } else {
                    Some(Value::Null)
                }
            }
            None => {
                let found = lookup(conn, org, kind, &id)?;
                seen.insert(key, found.clone());
                found
            }
        };
        references.push(Reference {
            kind,
            id,
            location,
            found,
        });
    }
    Ok(Subject { agent, references })
}

fn scan_row(org: &str, agent_id: &str, agent_version: i64, findings: &[Finding]) -> ScanRow {
    let [critical, high, medium, low] = scan::counts(findings);
    ScanRow {
        id: crate::ids::new_id("scan"),
        org_id: org.to_string(),
        agent_id: agent_id.to_string(),
        agent_version,
        findings: serde_json::to_string(findings).unwrap_or_else(|_| "[]".into()),
        critical_count: critical,
        high_count: high,
        medium_count: medium,
        low_count: low,
        max_severity: findings
            .iter()
            .map(|f| f.severity.rank())
            .max()
            .unwrap_or(0),
        created_at: crate::ids::now(),
    }
}

/// The security event of a scan that did not pass: ids, counts, rules and locations only.
fn scan_event(row: &ScanRow, findings: &[Finding], caller: &Caller) -> Event {
    let worst = findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(events::Severity::High);
    let mut rules: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity >= events::Severity::High)
        .map(|f| f.rule.as_str())
        .collect();
    rules.dedup();
    let locations: Vec<&str> = findings
        .iter()
        .filter(|f| f.severity >= events::Severity::High)
        .map(|f| f.location.as_str())
        .collect();
    Event::new(
        EventType::SecurityScanFindings,
        worst,
        format!(
            "security scan {} of agent {} found {} critical and {} high findings",
            row.id, row.agent_id, row.critical_count, row.high_count
        ),
    )
    .by(&caller.key_id, &caller.user_id)
    .on("agent", &row.agent_id)
    .details(json!({
        "scan_id": row.id,
        "counts": {
            "critical": row.critical_count,
            "high": row.high_count,
            "medium": row.medium_count,
            "low": row.low_count,
        },
        "rules": rules,
        "locations": locations,
    }))
    .request(&caller.request_id)
}

impl Resource for SecurityScan {
    type Row = ScanRow;
    const NOT_FOUND: &'static str = "SECURITY_SCAN_NOT_FOUND";

    fn from_row(row: &ScanRow) -> Result<SecurityScan, StoreError> {
        to_scan(row)
    }
}

fn to_scan(row: &ScanRow) -> Result<SecurityScan, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("security scan {}: {what}", row.id));
    let stored: Vec<Finding> =
        serde_json::from_str(&row.findings).map_err(|e| corrupt(&e.to_string()))?;
    let mut recommendations: Vec<String> = Vec::new();
    let mut findings = Vec::with_capacity(stored.len());
    for f in stored {
        if !recommendations.contains(&f.recommendation) {
            recommendations.push(f.recommendation.clone());
        }
        findings.push(SecurityFinding {
            rule: SecurityScanRule::from_wire(f.rule.as_str()).ok_or_else(|| corrupt("rule"))?,
            severity: f.severity.into(),
            location: f.location,
            message: f.message,
            recommendation: f.recommendation,
        });
    }
    Ok(SecurityScan {
        id: row.id.clone(),
        agent_id: row.agent_id.clone(),
        agent_version: row.agent_version,
        status: SecurityScanStatus::Completed,
        passed: row.critical_count == 0 && row.high_count == 0,
        counts: SeverityCounts {
            critical: row.critical_count,
            high: row.high_count,
            medium: row.medium_count,
            low: row.low_count,
        },
        findings,
        recommendations,
        created_at: row.created_at.clone(),
    })
}

impl Handlers {
    /// Scans the agent as stored now: the row to store and its findings.
    async fn scan_of(
        &self, caller: &Caller, agent_id: String,
    ) -> Result<(ScanRow, Vec<Finding>), Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| {
                let agent = crate::db::agents::get(conn, &org, &agent_id)?;
                let doc = super::agents::row_to_json(&agent)?;
                let subject = subject_of(conn, &org, Value::Object(doc))?;
                let findings = scan::scan(&subject);
                let row = scan_row(&org, &agent.id, agent.version, &findings);
                Ok((row, findings))
            })
            .await
            .map_err(store_error(super::agents::NOT_FOUND, &caller.request_id))
    }

    /// Scans the agent and stores the scan once per `Idempotency-Key`; a scan that did not
    /// pass records a security event with it.
    async fn run_scan(&self, caller: &Caller, params: ScanAgentParams) -> Result<ScanRow, Failure> {
        let rid = caller.request_id.as_str();
        let hash = idem::request_hash(&json!({ "agent_id": params.agent_id }));
        let (row, findings) = self.scan_of(caller, params.agent_id).await?;
        let event =
            (row.critical_count + row.high_count > 0).then(|| scan_event(&row, &findings, caller));
        let keyed = idem::NewKeyed {
            org_id: caller.org_id.clone(),
            operation: SCAN_OPERATION,
            key: params.idempotency_key,
            request_hash: hash,
            resource_id: row.id.clone(),
        };
        let org = caller.org_id.clone();
        let insert = move |conn: &mut DbConnection| {
            scans::insert(conn, &row)?;
            if let Some(event) = &event {
                events::record(conn, Some(&row.org_id), event.clone())?;
            }
            Ok(row.clone())
        };
        let fetch = move |conn: &mut DbConnection, id: &str| scans::get(conn, &org, id);
        let not_found = super::agents::NOT_FOUND;
        idem::create_resource(&self.store, keyed, insert, fetch, not_found, rid).await
    }
}

impl SecurityApi for Handlers {
    async fn scan_agent(
        &self, caller: Caller, params: ScanAgentParams,
    ) -> Reply<ScanAgentResponse> {
        let row = self.run_scan(&caller, params).await?;
        let not_found = SecurityScan::NOT_FOUND;
        let scan = to_scan(&row).map_err(store_error(not_found, &caller.request_id))?;
        Ok(ScanAgentResponse::Created(
            Json(scan),
            format!("/v1/security/scans/{}", row.id),
            etag(SCAN_VERSION),
        ))
    }

    async fn list_security_scans(
        &self, caller: Caller, params: ListSecurityScansParams,
    ) -> Reply<ListSecurityScansResponse> {
        let query = ScanQuery {
            agent_id: params.agent_id.clone(),
            min_severity: params
                .min_severity
                .map(|s| events::Severity::from(s).rank()),
        };
        let (data, pagination) = self
            .list_page::<SecurityScan>(&caller, &params, move |conn, org, page| {
                scans::list(conn, org, &query, page)
            })
            .await?;
        let list = SecurityScanList { data, pagination };
        Ok(ListSecurityScansResponse::Ok(Json(list)))
    }

    async fn get_security_scan(
        &self, caller: Caller, params: GetSecurityScanParams,
    ) -> Reply<GetSecurityScanResponse> {
        let row = self.row::<SecurityScan>(&caller, params.scan_id).await?;
        let tag = etag(SCAN_VERSION);
        if not_modified(params.if_none_match.as_deref(), &tag) {
            return Ok(GetSecurityScanResponse::NotModified(tag));
        }
        let scan =
            to_scan(&row).map_err(store_error(SecurityScan::NOT_FOUND, &caller.request_id))?;
        Ok(GetSecurityScanResponse::Ok(Json(scan), tag))
    }

    async fn get_security_event(
        &self, caller: Caller, params: GetSecurityEventParams,
    ) -> Reply<GetSecurityEventResponse> {
        let id = params.event_id;
        let get = move |conn: &mut DbConnection, org: &str| store::get_event(conn, org, &id);
        let row = self.read_for(&caller, EVENT_NOT_FOUND, get).await?;
        let event = to_event(&row).map_err(store_error(EVENT_NOT_FOUND, &caller.request_id))?;
        Ok(GetSecurityEventResponse::Ok(Json(event)))
    }

    async fn list_security_events(
        &self, caller: Caller, params: ListSecurityEventsParams,
    ) -> Reply<ListSecurityEventsResponse> {
        let query = EventQuery {
            severity: params.severity.map(Into::into),
            event_type: params.type_.map(Into::into),
            since: since(params.since.clone(), &caller.request_id)?,
        };
        let list = move |conn: &mut DbConnection, org: &str, page: &crate::db::sql::Page| {
            store::list_events(conn, org, &query, page)
        };
        let (data, pagination) = self
            .page_of(&caller, &params, EVENT_NOT_FOUND, list, to_event)
            .await?;
        let list = SecurityEventList { data, pagination };
        Ok(ListSecurityEventsResponse::Ok(Json(list)))
    }
}
