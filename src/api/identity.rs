//! API keys and the caller's profile.

use std::collections::BTreeSet;

use agentplane_api::models::{
    ApiKey, ApiKeyCreated, ApiKeyList, NotificationPreferences, Organization, RateLimitPolicy,
    Role, Scope, User,
};
use agentplane_api::*;
use poem_openapi::payload::Json;

use super::{Handlers, pagination};
use crate::auth::{self, Caller};
use crate::db::StoreError;
use crate::db::identity::{self as store, ApiKeyRow, OrganizationRow, UserRow};
use crate::error::{Failure, Kind, detail};
use crate::security::{Event, EventType, Severity};

use crate::failure_response;

failure_response!(ListApiKeysResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });
failure_response!(CreateApiKeyResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, Conflict => Conflict, Unprocessable => UnprocessableEntity });
failure_response!(GetApiKeyResponse {
    BadRequest => BadRequest,
    Unauthorized => Unauthorized,
    Forbidden => Forbidden,
    NotFound => NotFound
});
failure_response!(UpdateApiKeyResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Unprocessable => UnprocessableEntity });
failure_response!(RevokeApiKeyResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(GetCurrentUserResponse { Unauthorized => Unauthorized });
failure_response!(UpdateCurrentUserResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Unprocessable => UnprocessableEntity });

const NOT_FOUND: &str = "API_KEY_NOT_FOUND";

/// Who changed a key, for its security event.
struct Actor {
    key_id: String,
    user_id: String,
    request_id: String,
}

impl Actor {
    fn of(caller: &Caller) -> Self {
        Actor {
            key_id: caller.key_id.clone(),
            user_id: caller.user_id.clone(),
            request_id: caller.request_id.clone(),
        }
    }
}

/// Rate limits are an admin's to set, and never by the key they limit: a key that could
/// change its own limits could lift them, or lock itself out.
fn may_set_limits(caller: &Caller, key_id: Option<&str>) -> Result<(), Failure> {
    let refuse = |message: &str| {
        Err(Failure::with_details(
            Kind::Forbidden,
            "INSUFFICIENT_PERMISSIONS",
            message,
            vec![detail("rate_limit", "forbidden", message)],
            &caller.request_id,
        ))
    };
    if !caller.is_admin() {
        return refuse("only admins can set rate limits");
    }
    if key_id == Some(caller.key_id.as_str()) {
        return refuse("a key cannot change its own rate limits; use another admin key");
    }
    Ok(())
}

/// Records a key's life-cycle event in the transaction that changed the key.
fn key_event(
    conn: &mut crate::db::DbConnection,
    row: &ApiKeyRow,
    event_type: EventType,
    message: &str,
    actor: &Actor,
) -> Result<(), StoreError> {
    let event = Event::new(event_type, Severity::Low, message)
        .by(&actor.key_id, &actor.user_id)
        .on("api_key", &row.id)
        .details(serde_json::json!({
            "prefix": row.prefix,
            "owner_user_id": row.user_id,
            "scopes": auth::parse_scopes(&row.scopes).iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        }))
        .request(&actor.request_id);
    crate::security::record(conn, Some(&row.org_id), event).map(|_| ())
}

fn to_api_key(row: &ApiKeyRow, defaults: crate::ratelimit::Limits) -> ApiKey {
    ApiKey {
        rate_limit: RateLimitPolicy {
            requests_per_hour: row
                .rate_limit_per_hour
                .unwrap_or(defaults.requests_per_hour),
            burst: row.rate_limit_burst.unwrap_or(defaults.burst),
            custom: row.rate_limit_per_hour.is_some() || row.rate_limit_burst.is_some(),
        },
        id: row.id.clone(),
        name: row.name.clone(),
        prefix: row.prefix.clone(),
        scopes: auth::parse_scopes(&row.scopes).into_iter().collect(),
        user_id: row.user_id.clone(),
        created_at: row.created_at.clone(),
        expires_at: row.expires_at.clone(),
        last_used_at: row.last_used_at.clone(),
    }
}

impl Handlers {
    async fn create_key(
        &self,
        caller: &Caller,
        params: CreateApiKeyParams,
    ) -> Result<(ApiKeyRow, String), Failure> {
        let rid = caller.request_id.as_str();
        let body = params.body;
        let forbidden = |message: String| {
            Failure::new(Kind::Forbidden, "INSUFFICIENT_PERMISSIONS", message, rid)
        };
        let expires_at = body
            .expires_in_days
            .map(|days| crate::ids::format_time(chrono::Utc::now() + chrono::Duration::days(days)));
        if body.user.is_some() && !caller.is_admin() {
            return Err(forbidden("only admins can create users".into()));
        }
        if body.rate_limit.is_some() {
            may_set_limits(caller, None)?;
        }
        let role = body
            .user
            .as_ref()
            .map(|u| u.role.unwrap_or(Role::Member))
            .unwrap_or(caller.role);
        // A key never grants more than its user's role allows, nor more than the caller has.
        let allowed: BTreeSet<Scope> = auth::role_scopes(role)
            .intersection(&caller.scopes)
            .copied()
            .collect();
        let scopes: BTreeSet<Scope> = match &body.scopes {
            Some(requested) => {
                let requested: BTreeSet<Scope> = requested.iter().copied().collect();
                let excess: Vec<&str> =
                    requested.difference(&allowed).map(|s| s.as_str()).collect();
                if !excess.is_empty() {
                    return Err(forbidden(format!(
                        "cannot grant {}: beyond what the role or your key allows",
                        excess.join(", ")
                    )));
                }
                requested
            }
            None => allowed,
        };
        let caller_user = caller.user_id.clone();
        let org_id = caller.org_id.clone();
        let actor = Actor::of(caller);
        let result = self
            .store
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    let user = match &body.user {
                        Some(new) => {
                            let user = UserRow::new(
                                org_id.clone(),
                                new.username.clone(),
                                new.email.clone(),
                                role.as_str(),
                            );
                            store::insert_user(conn, &user)?;
                            user
                        }
                        None => store::user(conn, &caller_user)?,
                    };
                    let (row, secret) =
                        auth::insert_key(conn, &user, &body.name, &scopes, expires_at)?;
                    key_event(
                        conn,
                        &row,
                        EventType::ApiKeyCreated,
                        &format!("API key {} ({}) created", row.id, row.prefix),
                        &actor,
                    )?;
                    match &body.rate_limit {
                        Some(limits) => {
                            let change = store::ApiKeyChange {
                                name: None,
                                rate_limit_per_hour: Some(limits.requests_per_hour),
                                rate_limit_burst: Some(limits.burst),
                            };
                            let row = store::update_key(conn, &org_id, None, &row.id, &change)?;
                            Ok((row, secret))
                        }
                        None => Ok((row, secret)),
                    }
                })
            })
            .await;
        result.map_err(|e| match e {
            StoreError::Conflict(_) => Failure::with_details(
                Kind::Conflict,
                "USER_EXISTS",
                "a user with this username already exists in the organization",
                vec![detail("user.username", "unique", "already taken")],
                rid,
            ),
            other => Failure::from_store(other, NOT_FOUND, rid),
        })
    }
}

impl IdentityApi for Handlers {
    async fn list_api_keys(
        &self,
        caller: Caller,
        params: ListApiKeysParams,
    ) -> Result<ListApiKeysResponse, ApiError> {
        Ok(async {
            let org = caller.org_id.clone();
            let only_user = (!caller.is_admin()).then(|| caller.user_id.clone());
            let (page, per_page) = (params.page, params.per_page);
            let offset = (page - 1).saturating_mul(per_page);
            let result = self
                .store
                .run(move |conn| {
                    store::list_keys(conn, &org, only_user.as_deref(), offset, per_page)
                })
                .await;
            match result {
                Ok((rows, total)) => ListApiKeysResponse::Ok(Json(ApiKeyList {
                    data: rows.iter().map(|r| to_api_key(r, self.limits)).collect(),
                    pagination: pagination(page, per_page, total, None),
                })),
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn create_api_key(
        &self,
        caller: Caller,
        params: CreateApiKeyParams,
    ) -> Result<CreateApiKeyResponse, ApiError> {
        Ok(async {
            match self.create_key(&caller, params).await {
                Ok((row, secret)) => {
                    let key = to_api_key(&row, self.limits);
                    let created = ApiKeyCreated {
                        id: key.id,
                        name: key.name,
                        prefix: key.prefix,
                        scopes: key.scopes,
                        user_id: key.user_id,
                        created_at: key.created_at,
                        expires_at: key.expires_at,
                        last_used_at: key.last_used_at,
                        rate_limit: key.rate_limit,
                        key: secret,
                    };
                    let location = format!("/v1/auth/keys/{}", row.id);
                    CreateApiKeyResponse::Created(Json(created), location)
                }
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn get_api_key(
        &self,
        caller: Caller,
        params: GetApiKeyParams,
    ) -> Result<GetApiKeyResponse, ApiError> {
        Ok(async {
            let org = caller.org_id.clone();
            let only_user = (!caller.is_admin()).then(|| caller.user_id.clone());
            let id = params.key_id;
            match self
                .store
                .run(move |conn| store::get_key(conn, &org, only_user.as_deref(), &id))
                .await
            {
                Ok(row) => GetApiKeyResponse::Ok(Json(to_api_key(&row, self.limits))),
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn update_api_key(
        &self,
        caller: Caller,
        params: UpdateApiKeyParams,
    ) -> Result<UpdateApiKeyResponse, ApiError> {
        Ok(async {
            use poem_openapi::types::MaybeUndefined;
            if !params.body.rate_limit.is_undefined()
                && let Err(f) = may_set_limits(&caller, Some(&params.key_id))
            {
                return f.into();
            }
            let org = caller.org_id.clone();
            let only_user = (!caller.is_admin()).then(|| caller.user_id.clone());
            let id = params.key_id;
            let body = params.body;
            let (per_hour, burst) = match body.rate_limit {
                MaybeUndefined::Undefined => (None, None),
                MaybeUndefined::Null => (Some(None), Some(None)),
                MaybeUndefined::Value(l) => (Some(l.requests_per_hour), Some(l.burst)),
            };
            let change = store::ApiKeyChange {
                name: body.name,
                rate_limit_per_hour: per_hour,
                rate_limit_burst: burst,
            };
            let forget = id.clone();
            let actor = Actor::of(&caller);
            let result = self
                .store
                .run(move |conn| {
                    crate::db::write_transaction(conn, |conn| {
                        let row =
                            store::update_key(conn, &org, only_user.as_deref(), &id, &change)?;
                        key_event(
                            conn,
                            &row,
                            EventType::ApiKeyUpdated,
                            &format!("API key {} updated", row.id),
                            &actor,
                        )?;
                        Ok(row)
                    })
                })
                .await;
            match result {
                Ok(row) => {
                    // This replica applies the new limits at once; others within the cache's TTL.
                    self.keys.forget(&forget);
                    UpdateApiKeyResponse::Ok(Json(to_api_key(&row, self.limits)))
                }
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn revoke_api_key(
        &self,
        caller: Caller,
        params: RevokeApiKeyParams,
    ) -> Result<RevokeApiKeyResponse, ApiError> {
        Ok(async {
            let org = caller.org_id.clone();
            let only_user = (!caller.is_admin()).then(|| caller.user_id.clone());
            let id = params.key_id;
            let forget = id.clone();
            let now = crate::ids::now();
            let actor = Actor::of(&caller);
            match self
                .store
                .run(move |conn| {
                    crate::db::write_transaction(conn, |conn| {
                        let row = store::get_key(conn, &org, only_user.as_deref(), &id)?;
                        store::revoke_key(conn, &org, only_user.as_deref(), &id, &now)?;
                        key_event(
                            conn,
                            &row,
                            EventType::ApiKeyRevoked,
                            &format!("API key {} ({}) revoked", row.id, row.prefix),
                            &actor,
                        )
                    })
                })
                .await
            {
                Ok(()) => {
                    self.keys.forget(&forget);
                    RevokeApiKeyResponse::NoContent
                }
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn get_current_user(
        &self,
        caller: Caller,
        _params: GetCurrentUserParams,
    ) -> Result<GetCurrentUserResponse, ApiError> {
        Ok(async {
            let (user_id, org_id) = (caller.user_id.clone(), caller.org_id.clone());
            let result = self
                .store
                .run(move |conn| {
                    Ok((
                        store::user(conn, &user_id)?,
                        store::organization(conn, &org_id)?,
                    ))
                })
                .await;
            match result {
                Ok((user, org)) => GetCurrentUserResponse::Ok(Json(profile(user, org, &caller))),
                Err(e) => Failure::from_store(e, "USER_NOT_FOUND", &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn update_current_user(
        &self,
        caller: Caller,
        params: UpdateCurrentUserParams,
    ) -> Result<UpdateCurrentUserResponse, ApiError> {
        Ok(async {
            let (user_id, org_id) = (caller.user_id.clone(), caller.org_id.clone());
            let change = params.body;
            let result = self
                .store
                .run(move |conn| {
                    crate::db::write_transaction(conn, |conn| {
                        let user = store::user(conn, &user_id)?;
                        let mut prefs = preferences(&user.preferences);
                        if let Some(n) = &change.notifications {
                            prefs.email = n.email.unwrap_or(prefs.email);
                            prefs.slack = n.slack.unwrap_or(prefs.slack);
                        }
                        let email = change.email.clone().unwrap_or(user.email);
                        let stored =
                            serde_json::json!({"email": prefs.email, "slack": prefs.slack});
                        let user = store::update_profile(
                            conn,
                            &user_id,
                            &email,
                            &stored.to_string(),
                            &crate::ids::now(),
                        )?;
                        Ok((user, store::organization(conn, &org_id)?))
                    })
                })
                .await;
            match result {
                Ok((user, org)) => UpdateCurrentUserResponse::Ok(Json(profile(user, org, &caller))),
                Err(e) => Failure::from_store(e, "USER_NOT_FOUND", &caller.request_id).into(),
            }
        }
        .await)
    }
}

/// The stored notification preferences; unreadable or missing channels take the defaults.
fn preferences(stored: &str) -> NotificationPreferences {
    let value: serde_json::Value = serde_json::from_str(stored).unwrap_or_default();
    let flag =
        |name: &str, default: bool| value.get(name).and_then(|v| v.as_bool()).unwrap_or(default);
    NotificationPreferences {
        email: flag("email", true),
        slack: flag("slack", false),
    }
}

/// The caller's profile as the API shows it: the role and scopes are those of the key used.
fn profile(user: UserRow, org: OrganizationRow, caller: &Caller) -> User {
    User {
        notifications: preferences(&user.preferences),
        id: user.id,
        username: user.username,
        email: user.email,
        role: caller.role,
        organization: Organization {
            id: org.id,
            name: org.name,
        },
        scopes: caller.scopes.iter().copied().collect(),
        created_at: user.created_at,
        updated_at: user.updated_at,
    }
}
