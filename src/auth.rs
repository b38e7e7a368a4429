//! API keys, roles and scopes.
//!
//! A key is `ap_` and 40 random base-62 characters. Only its SHA-256 is stored: keys carry
//! 238 bits of entropy, so a fast hash is as safe as a slow one and keeps the per-request
//! lookup cheap. What a key may do is the intersection of its own scopes and what its user's
//! role allows, so demoting a user narrows every key they hold at once.

use std::collections::BTreeSet;
use std::sync::Arc;

use agentplane_api::models::{Role, Scope};

use crate::db::identity::{self, ApiKeyRow, OrganizationRow, UserRow};
use crate::db::{DbConnection, StoreError, StoreResult};
use crate::ids;

pub use crate::secrets::{
    API_KEY_PREFIX, NewSecret, SECRET_BODY_LEN, VAULT_TOKEN_PREFIX, generate_secret, hash_key,
};

/// Generates a new random key.
pub fn generate_key() -> NewSecret {
    generate_secret(API_KEY_PREFIX)
}

/// What a role allows.
pub fn role_scopes(role: Role) -> BTreeSet<Scope> {
    match role {
        Role::Admin | Role::Member => Scope::ALL.iter().copied().collect(),
        Role::Viewer => [
            Scope::ReadAgents,
            Scope::ReadKeys,
            Scope::ReadKnowledge,
            Scope::ReadTools,
            Scope::ReadTemplates,
            Scope::ReadModels,
            Scope::ReadExecutions,
            Scope::ReadConversations,
            Scope::ReadSecurity,
            Scope::ReadEvaluations,
            Scope::ReadEvents,
            Scope::ReadWebhooks,
            Scope::ReadMarketplace,
            Scope::ReadVault,
            Scope::ReadTwins,
            Scope::ReadUsage,
        ]
        .into_iter()
        .collect(),
    }
}

/// Parses the JSON array of scope names stored with a key; unknown names are dropped.
pub fn parse_scopes(stored: &str) -> BTreeSet<Scope> {
    serde_json::from_str::<Vec<String>>(stored)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Scope::from_wire(s))
        .collect()
}

pub fn format_scopes(scopes: &BTreeSet<Scope>) -> String {
    serde_json::Value::from(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>()).to_string()
}

/// The scopes a key really grants: its own, narrowed by its user's role.
pub fn effective_scopes(key: &ApiKeyRow, user: &UserRow) -> BTreeSet<Scope> {
    let role = Role::from_wire(&user.role).unwrap_or(Role::Viewer);
    parse_scopes(&key.scopes)
        .intersection(&role_scopes(role))
        .copied()
        .collect()
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub request_id: String,
    pub org_id: String,
    pub user_id: String,
    pub key_id: String,
    pub role: Role,
    pub scopes: BTreeSet<Scope>,
    /// The API key the request presented, so that work done on the caller's behalf (batch
    /// operations) authenticates as the caller did. Never printed.
    pub credential: Presented,
}

/// A presented secret; `Debug` does not show it.
#[derive(Clone, Default)]
pub struct Presented(pub String);

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presented(<redacted>)")
    }
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Inserts a key for `user` and returns its secret.
pub fn insert_key(
    conn: &mut DbConnection, user: &UserRow, name: &str, scopes: &BTreeSet<Scope>,
    expires_at: Option<String>,
) -> StoreResult<(ApiKeyRow, String)> {
    let secret = generate_key();
    let row = ApiKeyRow {
        id: ids::new_id("key"),
        org_id: user.org_id.clone(),
        user_id: user.id.clone(),
        name: name.to_string(),
        prefix: secret.prefix,
        key_hash: secret.hash,
        scopes: format_scopes(scopes),
        created_at: ids::now(),
        expires_at,
        last_used_at: None,
        revoked_at: None,
        rate_limit_per_hour: None,
        rate_limit_burst: None,
    };
    identity::insert_key(conn, &row)?;
    Ok((row, secret.secret))
}

/// Finds or creates an organization by name, and a user in it by name, in the caller's
/// transaction.
pub fn ensure_user(
    conn: &mut DbConnection, org_name: &str, username: &str, email: &str, role: Role,
) -> StoreResult<UserRow> {
    let org = match identity::organization_by_name(conn, org_name)? {
        Some(org) => org,
        None => {
            let org = OrganizationRow {
                id: ids::new_id("org"),
                name: org_name.to_string(),
                created_at: ids::now(),
            };
            identity::insert_organization(conn, &org)?;
            org
        }
    };
    match identity::user_by_name(conn, &org.id, username)? {
        Some(user) => Ok(user),
        None => {
            let user = UserRow::new(
                org.id,
                username.to_string(),
                email.to_string(),
                role.as_str(),
            );
            identity::insert_user(conn, &user)?;
            Ok(user)
        }
    }
}

/// On an empty database, creates the `default` organization, its `admin` user and an admin
/// key, and returns the key's secret. Returns `None` when any organization exists.
pub fn bootstrap(conn: &mut DbConnection) -> StoreResult<Option<String>> {
    let created = crate::db::write_transaction(conn, |conn| {
        if identity::count_organizations(conn)? > 0 {
            return Ok(None);
        }
        let user = ensure_user(conn, "default", "admin", "admin@localhost", Role::Admin)?;
        let (_, secret) = insert_key(
            conn,
            &user,
            "bootstrap admin key",
            &role_scopes(Role::Admin),
            None,
        )?;
        Ok(Some(secret))
    });
    match created {
        // Another replica bootstrapped the same empty database at the same moment.
        Err(StoreError::Conflict(_)) => Ok(None),
        other => other,
    }
}

/// The API keys as requests present them: parses the credential, looks the key up through
/// the [`KeyCache`] (else the database, recording its use at most once a minute). Shared by
/// authentication, the rate limiter and `/metrics`.
#[derive(Debug, Clone)]
pub struct Keys {
    store: crate::db::Store,
    cache: std::sync::Arc<KeyCache>,
    /// Failed authentications per source: summed, and throttled past their limit.
    failures: crate::security::failures::FailedAuth,
}

impl Keys {
    pub fn new(
        store: crate::db::Store, cache: std::sync::Arc<KeyCache>,
        failures: crate::security::failures::FailedAuth,
    ) -> Self {
        Self {
            store,
            cache,
            failures,
        }
    }

    /// Seconds until the source of `req` may present unknown keys again, when it has failed
    /// too often lately and the key it presents now is not one this replica knows live (a
    /// memory check: a refused source costs no database work).
    pub fn throttled(&self, req: &poem::Request) -> Option<u64> {
        let from = source(req);
        // No lock, no hashing while no source is past its limit (the common case).
        let wait = self.failures.wait(from)?;
        let secret = credential(req)?;
        let known = self
            .cache
            .get(&hash_key(&secret))
            .is_some_and(|r| !r.is_dead());
        (!known).then_some(wait)
    }

    /// Counts a request of `req`'s source refused for its failures (a [`Keys::throttled`]
    /// answer acted on), for the window's summary.
    pub fn refused_for_failures(&self, req: &poem::Request) {
        self.failures.refused(source(req));
    }

    /// Drops a key from this replica's cache (it was revoked or changed).
    pub fn forget(&self, key_id: &str) {
        self.cache.forget(key_id);
    }

    /// The live API key (not revoked, not expired) the request presents, if any.
    pub async fn live(&self, req: &poem::Request) -> Option<Arc<KeyRecord>> {
        let secret = credential(req)?;
        let record = self.record(hash_key(&secret)).await.ok()??;
        (!record.is_dead()).then_some(record)
    }

    /// Looks up the key `req` presents once for the whole request: the answer is kept in the
    /// request's extensions, where [`Keys::authenticate`] finds it rather than looking again.
    /// Returns the live key (not revoked, not expired), if any; `None` also when the key
    /// cannot be checked now (nothing is kept then, and authentication reports it).
    pub async fn look_up(&self, req: &mut poem::Request) -> Option<Arc<KeyRecord>> {
        let secret = credential(req)?;
        let record = self.record(hash_key(&secret)).await.ok()?;
        let live = record.as_ref().filter(|r| !r.is_dead()).cloned();
        req.extensions_mut().insert(LookedUp { secret, record });
        live
    }

    /// The key with this hash: from the cache, else from the database (recording its use).
    pub async fn record(&self, hash: String) -> StoreResult<Option<Arc<KeyRecord>>> {
        if let Some(record) = self.cache.get(&hash) {
            return Ok(Some(record));
        }
        let now = ids::now();
        let lookup = hash.clone();
        let found = self
            .store
            .lookup(move |conn| identity::key_by_hash(conn, &lookup))
            .await?;
        if let Some((key, _)) = &found {
            // Record use at most once a minute (and only on a cache miss), so reads stay
            // reads: the lookup itself never waits for the writer.
            let stale = key
                .last_used_at
                .as_deref()
                .is_none_or(|t| t.get(..16) != now.get(..16));
            if stale && key.revoked_at.is_none() {
                let id = key.id.clone();
                let touched = self
                    .store
                    .run(move |conn| identity::touch_key(conn, &id, &now))
                    .await;
                if let Err(e) = touched {
                    // The key was found: a missed `last_used_at` must not refuse the request.
                    tracing::warn!(error = %e, key_id = %key.id, "cannot record a key's use");
                }
            }
        }
        Ok(found.map(|(key, user)| {
            let record = Arc::new(KeyRecord::new(&key, &user));
            self.cache.put(hash, record.clone());
            record
        }))
    }
}

/// What [`Keys::look_up`] found for a request's credential (`None`: no such key), kept in
/// the request's extensions so that authentication does not look the key up again.
#[derive(Clone)]
struct LookedUp {
    secret: String,
    record: Option<Arc<KeyRecord>>,
}

/// The address the request's connection came from (a proxy's, behind one).
fn source(req: &poem::Request) -> Option<std::net::IpAddr> {
    req.remote_addr().as_socket_addr().map(|a| a.ip())
}

/// The organization of the key the request presented, when the rate-limit middleware has
/// looked it up (from memory: no second lookup, no hashing).
pub fn looked_up_org(req: &poem::Request) -> Option<&str> {
    let looked_up = req.extensions().get::<LookedUp>()?;
    looked_up.record.as_ref().map(|r| r.org_id.as_str())
}

/// Why a request was not authenticated; the HTTP layer answers it with the error envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No usable API key (401 `INVALID_API_KEY`), and the message saying why.
    Unauthorized(&'static str),
    /// The key lacks these scopes (403 `INSUFFICIENT_PERMISSIONS`).
    Forbidden(Vec<&'static str>),
    /// Keys cannot be checked right now (503).
    Unavailable,
}

impl Keys {
    /// The caller of `req` (request id `rid`) when it presents a live API key holding every
    /// scope of `scopes`. A refused key (unknown, revoked, expired, lacking a scope) is
    /// recorded as a security event; the secret itself never is.
    pub async fn authenticate(
        &self, req: &poem::Request, scopes: &[&'static str], rid: &str,
    ) -> Result<Caller, Failure> {
        let Some(secret) = credential(req) else {
            return Err(Failure::Unauthorized(
                "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            ));
        };
        let looked_up = req
            .extensions()
            .get::<LookedUp>()
            .filter(|l| l.secret == secret)
            .map(|l| l.record.clone());
        let found = match looked_up {
            Some(record) => Ok(record),
            None => self.record(hash_key(&secret)).await,
        };
        let record = match found {
            Ok(Some(record)) => record,
            Ok(None) => {
                // An unknown key names no organization.
                self.refused(req, rid, None, "unknown API key").await;
                return Err(Failure::Unauthorized("the API key is not valid"));
            }
            Err(e) => {
                tracing::warn!(error = %e, request_id = %rid, "cannot check an API key");
                return Err(Failure::Unavailable);
            }
        };
        let dead = if record.revoked {
            Some(("revoked API key", "the API key has been revoked"))
        } else if record.is_expired() {
            Some(("expired API key", "the API key has expired"))
        } else {
            None
        };
        if let Some((reason, message)) = dead {
            self.refused(req, rid, Some(record.as_ref()), reason).await;
            return Err(Failure::Unauthorized(message));
        }
        let missing: Vec<&'static str> = scopes
            .iter()
            .copied()
            .filter(|s| !record.scopes.iter().any(|g| g.as_str() == *s))
            .collect();
        if !missing.is_empty() {
            self.denied(req, rid, &record, &missing).await;
            return Err(Failure::Forbidden(missing));
        }
        Ok(Caller {
            request_id: rid.to_string(),
            org_id: record.org_id.clone(),
            user_id: record.user_id.clone(),
            key_id: record.key_id.clone(),
            role: record.role,
            scopes: record.scopes.clone(),
            credential: Presented(secret),
        })
    }

    /// Records a refused key (`authentication_failed`): of `record`'s organization when the
    /// key is known.
    async fn refused(
        &self, req: &poem::Request, rid: &str, record: Option<&KeyRecord>, reason: &str,
    ) {
        use crate::security::failures::{Verdict, prefix_of};
        use crate::security::{Event, EventType, Severity};
        let (org, from) = (record.map(|r| r.org_id.as_str()), source(req));
        let prefix = credential(req).map(|s| prefix_of(&s));
        if self.failures.failed(from, org, prefix, reason) == Verdict::Counted {
            // Summed into the source's one event for the window.
            return;
        }
        let mut event = Event::new(
            EventType::AuthenticationFailed,
            Severity::Medium,
            format!("authentication failed: {reason}"),
        )
        .details(serde_json::json!({
            "reason": reason,
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "source": from.map(|ip| ip.to_string()),
        }))
        .request(rid);
        if let Some(record) = record {
            event = event.by(&record.key_id, &record.user_id);
        }
        let org = record.map(|r| r.org_id.clone());
        crate::security::record_detached(&self.store, org, event).await;
    }

    /// Records a key lacking the `missing` scopes for `req` (`permission_denied`).
    async fn denied(&self, req: &poem::Request, rid: &str, record: &KeyRecord, missing: &[&str]) {
        use crate::security::{Event, EventType, Severity};
        let operation = format!("{} {}", req.method(), req.uri().path());
        let event = Event::new(
            EventType::PermissionDenied,
            Severity::Low,
            format!("{operation} needs the scope {}", missing.join(", ")),
        )
        .by(&record.key_id, &record.user_id)
        .on("operation", &operation)
        .details(serde_json::json!({ "missing_scopes": missing }))
        .request(rid);
        crate::security::record_detached(&self.store, Some(record.org_id.clone()), event).await;
    }
}

/// The credential of a request: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
pub fn credential(req: &poem::Request) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        let mut parts = v.trim().splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
            && !token.trim().is_empty()
        {
            return Some(token.trim().to_string());
        }
    }
    req.headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .or_else(|| stream_credential(req))
}

/// Browsers cannot set headers on a WebSocket handshake, so the streams (`GET …/stream`)
/// also take the key as the `access_token` query parameter or as a `bearer.<key>`
/// subprotocol (beside `agentplane.v1`, which the server selects).
fn stream_credential(req: &poem::Request) -> Option<String> {
    if req.method() != poem::http::Method::GET || !req.uri().path().ends_with("/stream") {
        return None;
    }
    let from_query = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    });
    from_query
        .or_else(|| {
            req.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.split(',')
                        .find_map(|p| p.trim().strip_prefix("bearer.").map(str::to_string))
                })
        })
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashed() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with("ap_") && a.secret.len() == 43);
        assert_eq!(a.hash, hash_key(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(a.secret.starts_with(&a.prefix));
    }

    #[test]
    fn roles_narrow_scopes() {
        let viewer = role_scopes(Role::Viewer);
        assert!(viewer.contains(&Scope::ReadAgents) && !viewer.contains(&Scope::WriteAgents));
        let stored = format_scopes(
            &[Scope::WriteAgents, Scope::ReadAgents]
                .into_iter()
                .collect(),
        );
        assert_eq!(parse_scopes(&stored).len(), 2);
        assert!(parse_scopes("not json").is_empty());
    }
}

/// What authentication needs to know of a key.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub key_id: String,
    pub org_id: String,
    pub user_id: String,
    pub role: Role,
    pub scopes: BTreeSet<Scope>,
    /// When the key stops working (an unreadable stored time: already).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked: bool,
    /// The key's own limits (`None`: the server's defaults).
    pub rate_limit_per_hour: Option<i64>,
    pub rate_limit_burst: Option<i64>,
}

impl KeyRecord {
    /// Whether the key is revoked or past its expiry.
    pub fn is_dead(&self) -> bool {
        self.revoked || self.is_expired()
    }

    /// Whether the key is past its expiry.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|t| t <= chrono::Utc::now())
    }

    pub fn new(key: &ApiKeyRow, user: &UserRow) -> Self {
        KeyRecord {
            key_id: key.id.clone(),
            org_id: key.org_id.clone(),
            user_id: key.user_id.clone(),
            role: Role::from_wire(&user.role).unwrap_or(Role::Viewer),
            scopes: effective_scopes(key, user),
            expires_at: key.expires_at.as_deref().map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_or(chrono::DateTime::<chrono::Utc>::MIN_UTC, |t| t.to_utc())
            }),
            revoked: key.revoked_at.is_some(),
            rate_limit_per_hour: key.rate_limit_per_hour,
            rate_limit_burst: key.rate_limit_burst,
        }
    }
}

/// Known keys by hash, so that a request costs no key lookup in the database.
///
/// Entries live `ttl`: a key revoked on this replica stops at once (the entry is dropped), on
/// other replicas within `ttl`. Unknown keys are never cached, so random keys cannot fill it.
pub struct KeyCache {
    ttl: std::time::Duration,
    capacity: usize,
    /// Sharded: a lookup locks one shard, never a lock every request shares.
    entries: dashmap::DashMap<String, (std::time::Instant, Arc<KeyRecord>)>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("ttl", &self.ttl).finish()
    }
}

impl KeyCache {
    pub fn new(ttl: std::time::Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Default::default(),
        }
    }

    pub fn get(&self, hash: &str) -> Option<Arc<KeyRecord>> {
        let entry = self.entries.get(hash)?;
        let (at, record) = entry.value();
        (at.elapsed() < self.ttl).then(|| record.clone())
    }

    pub fn put(&self, hash: String, record: Arc<KeyRecord>) {
        if self.entries.len() >= self.capacity {
            let ttl = self.ttl;
            self.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries
            .insert(hash, (std::time::Instant::now(), record));
    }

    /// Drops the entry of a key (after revocation).
    pub fn forget(&self, key_id: &str) {
        self.entries.retain(|_, (_, r)| r.key_id != key_id);
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn record(id: &str) -> Arc<KeyRecord> {
        Arc::new(KeyRecord {
            key_id: id.into(),
            org_id: "org".into(),
            user_id: "user".into(),
            role: Role::Admin,
            scopes: BTreeSet::new(),
            expires_at: None,
            revoked: false,
            rate_limit_per_hour: None,
            rate_limit_burst: None,
        })
    }

    #[test]
    fn entries_expire_are_forgotten_and_stay_bounded() {
        let cache = KeyCache::new(std::time::Duration::from_secs(60), 2);
        cache.put("h1".into(), record("k1"));
        assert!(cache.get("h1").is_some());
        cache.forget("k1");
        assert!(cache.get("h1").is_none());
        for i in 0..5 {
            cache.put(format!("h{i}"), record(&format!("k{i}")));
        }
        assert!(cache.entries.len() <= 2);
        let short = KeyCache::new(std::time::Duration::from_millis(0), 2);
        short.put("h".into(), record("k"));
        assert!(short.get("h").is_none());
    }
}
