//! API keys and the caller's profile.

use std::collections::BTreeSet;

use agentplane_api::Json;
use agentplane_api::models::{
    ApiKey, ApiKeyCreated, ApiKeyInput, ApiKeyList, NotificationPreferences, Organization,
    RateLimitPolicy, Role, Scope, User, UserProfileUpdate,
};
use agentplane_api::*;
use poem_openapi::types::MaybeUndefined;

use super::{Handlers, pagination};
use crate::auth::{self, Caller};
use crate::db::identity::{self as store, ApiKeyRow, OrganizationRow, UserRow};
use crate::db::sql::Page;
use crate::db::{DbConnection, StoreError, StoreResult};
use crate::error::{Failure, Kind, detail};
use crate::security::{Event, EventType, Severity};

const NOT_FOUND: &str = "API_KEY_NOT_FOUND";
const USER_NOT_FOUND: &str = "USER_NOT_FOUND";

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

/// The user whose keys the caller may see and change: its own, or (`None`) every key of the
/// organization for an admin.
fn only_user(caller: &Caller) -> Option<String> {
    (!caller.is_admin()).then(|| caller.user_id.clone())
}

/// Rate limits are an admin's to set, and never by the key they limit: a key that could
/// change its own limits could lift them, or lock itself out.
fn may_set_limits(caller: &Caller, key_id: Option<&str>) -> Result<(), Failure> {
    let refuse = |message: &str| {
        Err(Failure::on_field(
            Kind::Forbidden,
            "INSUFFICIENT_PERMISSIONS",
            "rate_limit",
            "forbidden",
            message,
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
    conn: &mut DbConnection, row: &ApiKeyRow, event_type: EventType, message: &str, actor: &Actor,
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

/// The role and scopes of a new key. Only admins create users or set limits; a key never
/// grants more than its user's role allows, nor more than the caller has.
fn granted(caller: &Caller, body: &ApiKeyInput) -> Result<(Role, BTreeSet<Scope>), Failure> {
    let forbidden = |message: String| {
        Failure::new(
            Kind::Forbidden,
            "INSUFFICIENT_PERMISSIONS",
            message,
            &caller.request_id,
        )
    };
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
    let allowed: BTreeSet<Scope> = auth::role_scopes(role)
        .intersection(&caller.scopes)
        .copied()
        .collect();
    let Some(requested) = &body.scopes else {
        return Ok((role, allowed));
    };
    let requested: BTreeSet<Scope> = requested.iter().copied().collect();
    let excess: Vec<&str> = requested.difference(&allowed).map(|s| s.as_str()).collect();
    if !excess.is_empty() {
        return Err(forbidden(format!(
            "cannot grant {}: beyond what the role or your key allows",
            excess.join(", ")
        )));
    }
    Ok((role, requested))
}

/// A key to create, its grants checked.
struct NewKey {
    org_id: String,
    /// The key's user when the body names no new one.
    caller_user: String,
    body: ApiKeyInput,
    role: Role,
    scopes: BTreeSet<Scope>,
    expires_at: Option<String>,
    actor: Actor,
}

/// Creates the key (and its new user, if asked) with its event and its limits, in the
/// caller's transaction.
fn insert_new_key(conn: &mut DbConnection, key: &NewKey) -> StoreResult<(ApiKeyRow, String)> {
    let user = match &key.body.user {
        Some(new) => {
            let user = UserRow::new(
                key.org_id.clone(),
                new.username.clone(),
                new.email.clone(),
                key.role.as_str(),
            );
            store::insert_user(conn, &user)?;
            user
        }
        None => store::user(conn, &key.org_id, &key.caller_user)?,
    };
    let (row, secret) = auth::insert_key(
        conn,
        &user,
        &key.body.name,
        &key.scopes,
        key.expires_at.clone(),
    )?;
    key_event(
        conn,
        &row,
        EventType::ApiKeyCreated,
        &format!("API key {} ({}) created", row.id, row.prefix),
        &key.actor,
    )?;
    let Some(limits) = &key.body.rate_limit else {
        return Ok((row, secret));
    };
    let change = store::ApiKeyChange {
        name: None,
        rate_limit_per_hour: Some(limits.requests_per_hour),
        rate_limit_burst: Some(limits.burst),
    };
    let row = store::update_key(conn, &key.org_id, None, &row.id, &change)?;
    Ok((row, secret))
}

/// Changes the caller's email and notification preferences; returns the user and their
/// organization.
fn save_profile(
    conn: &mut DbConnection, user_id: &str, org_id: &str, change: &UserProfileUpdate,
) -> StoreResult<(UserRow, OrganizationRow)> {
    crate::db::write_transaction(conn, |conn| {
        let user = store::user(conn, org_id, user_id)?;
        let mut prefs = user.preferences.0;
        if let Some(n) = &change.notifications {
            prefs.email = n.email.unwrap_or(prefs.email);
            prefs.slack = n.slack.unwrap_or(prefs.slack);
        }
        let email = change.email.clone().unwrap_or(user.email);
        let user = store::update_profile(conn, org_id, user_id, &email, prefs)?;
        Ok((user, store::organization(conn, org_id)?))
    })
}

impl Handlers {
    async fn create_key(
        &self, caller: &Caller, params: CreateApiKeyParams,
    ) -> Result<(ApiKeyRow, String), Failure> {
        let rid = caller.request_id.as_str();
        let body = params.body;
        let expires_at = body
            .expires_in_days
            .map(|days| crate::ids::format_time(chrono::Utc::now() + chrono::Duration::days(days)));
        let (role, scopes) = granted(caller, &body)?;
        let key = NewKey {
            org_id: caller.org_id.clone(),
            caller_user: caller.user_id.clone(),
            expires_at,
            body,
            role,
            scopes,
            actor: Actor::of(caller),
        };
        self.store
            .run(move |conn| crate::db::write_transaction(conn, |conn| insert_new_key(conn, &key)))
            .await
            .map_err(|e| match e {
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

    /// Changes the caller's live key `id` as `change` does (given the organization and the
    /// user the caller is limited to) and records the event it names, in one transaction.
    async fn change_key(
        &self, caller: &Caller, id: String,
        change: impl FnOnce(&mut DbConnection, &str, Option<&str>, &str) -> StoreResult<KeyChanged>
        + Send
        + 'static,
    ) -> Result<ApiKeyRow, Failure> {
        let (only_user, actor) = (only_user(caller), Actor::of(caller));
        self.run_for(caller, NOT_FOUND, move |conn, org| {
            crate::db::write_transaction(conn, |conn| {
                let (row, event_type, message) = change(conn, org, only_user.as_deref(), &id)?;
                key_event(conn, &row, event_type, &message, &actor)?;
                Ok(row)
            })
        })
        .await
    }

    async fn patch_api_key(
        &self, caller: &Caller, params: UpdateApiKeyParams,
    ) -> Result<ApiKeyRow, Failure> {
        if !params.body.rate_limit.is_undefined() {
            may_set_limits(caller, Some(&params.key_id))?;
        }
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
        self.change_key(caller, params.key_id, move |conn, org, user, id| {
            let row = store::update_key(conn, org, user, id, &change)?;
            let message = format!("API key {} updated", row.id);
            Ok((row, EventType::ApiKeyUpdated, message))
        })
        .await
    }

    async fn revoke_live_key(&self, caller: &Caller, id: String) -> Result<(), Failure> {
        let now = crate::ids::now();
        self.change_key(caller, id, move |conn, org, user, id| {
            let row = store::revoke_key(conn, org, user, id, &now)?;
            let message = format!("API key {} ({}) revoked", row.id, row.prefix);
            Ok((row, EventType::ApiKeyRevoked, message))
        })
        .await
        .map(|_| ())
    }
}

/// A changed key, the type of its event and the event's message.
type KeyChanged = (ApiKeyRow, EventType, String);

impl IdentityApi for Handlers {
    async fn list_api_keys(
        &self, caller: Caller, params: ListApiKeysParams,
    ) -> Reply<ListApiKeysResponse> {
        let user = only_user(&caller);
        let (page, per_page) = (params.page, params.per_page);
        let q = Page {
            after_id: None,
            offset: (page - 1).saturating_mul(per_page),
            limit: per_page,
        };
        let (rows, total) = self
            .run_for(&caller, NOT_FOUND, move |conn, org| {
                store::list_keys(conn, org, user.as_deref(), &q)
            })
            .await?;
        Ok(ListApiKeysResponse::Ok(Json(ApiKeyList {
            data: rows.iter().map(|r| to_api_key(r, self.limits)).collect(),
            pagination: pagination(page, per_page, total, None),
        })))
    }

    async fn create_api_key(
        &self, caller: Caller, params: CreateApiKeyParams,
    ) -> Reply<CreateApiKeyResponse> {
        let (row, secret) = self.create_key(&caller, params).await?;
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
        Ok(CreateApiKeyResponse::Created(Json(created), location))
    }

    async fn get_api_key(
        &self, caller: Caller, params: GetApiKeyParams,
    ) -> Reply<GetApiKeyResponse> {
        let (user, id) = (only_user(&caller), params.key_id);
        let row = self
            .run_for(&caller, NOT_FOUND, move |conn, org| {
                store::get_key(conn, org, user.as_deref(), &id)
            })
            .await?;
        Ok(GetApiKeyResponse::Ok(Json(to_api_key(&row, self.limits))))
    }

    async fn update_api_key(
        &self, caller: Caller, params: UpdateApiKeyParams,
    ) -> Reply<UpdateApiKeyResponse> {
        let forget = params.key_id.clone();
        let row = self.patch_api_key(&caller, params).await?;
        // This replica applies the new limits at once; others within the cache's TTL.
        self.keys.forget(&forget);
        Ok(UpdateApiKeyResponse::Ok(Json(to_api_key(
            &row,
            self.limits,
        ))))
    }

    async fn revoke_api_key(
        &self, caller: Caller, params: RevokeApiKeyParams,
    ) -> Reply<RevokeApiKeyResponse> {
        self.revoke_live_key(&caller, params.key_id.clone()).await?;
        self.keys.forget(&params.key_id);
        Ok(RevokeApiKeyResponse::NoContent)
    }

    async fn get_current_user(
        &self, caller: Caller, _params: GetCurrentUserParams,
    ) -> Reply<GetCurrentUserResponse> {
        let user_id = caller.user_id.clone();
        let (user, org) = self
            .run_for(&caller, USER_NOT_FOUND, move |conn, org| {
                Ok((
                    store::user(conn, org, &user_id)?,
                    store::organization(conn, org)?,
                ))
            })
            .await?;
        Ok(GetCurrentUserResponse::Ok(Json(profile(
            user, org, &caller,
        ))))
    }

    async fn update_current_user(
        &self, caller: Caller, params: UpdateCurrentUserParams,
    ) -> Reply<UpdateCurrentUserResponse> {
        let (user_id, change) = (caller.user_id.clone(), params.body);
        let (user, org) = self
            .run_for(&caller, USER_NOT_FOUND, move |conn, org| {
                save_profile(conn, &user_id, org, &change)
            })
            .await?;
        Ok(UpdateCurrentUserResponse::Ok(Json(profile(
            user, org, &caller,
        ))))
    }
}

/// The caller's profile as the API shows it: the role and scopes are those of the key used.
fn profile(user: UserRow, org: OrganizationRow, caller: &Caller) -> User {
    User {
        notifications: NotificationPreferences {
            email: user.preferences.email,
            slack: user.preferences.slack,
        },
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
