//! The vault (CodexOS): credentials whose `value` is sealed under the master key and opened
//! only by a read that carries a valid `X-Vault-Token`; vault tokens issued, listed and
//! revoked through the API, stored hashed like API keys.

use agentplane_api::models::{
    VaultCredential, VaultCredentialInput, VaultCredentialList, VaultCredentialReplace,
    VaultCredentialType, VaultToken, VaultTokenCreated, VaultTokenList,
};
use agentplane_api::*;
use poem_openapi::payload::Json;
use poem_openapi::types::{MaybeUndefined, ToJSON};
use serde_json::{Map, Value};

use super::Handlers;
use super::idem::{self, NewKeyed};
use super::paging::{PageRequest, etag, etag_matches, not_modified};
use crate::auth::Caller;
use crate::db::vault::{
    self as store, CredentialChanges, CredentialFilter, CredentialRow, TokenRow,
};
use crate::db::{DbConnection, StoreError, StoreResult};
use crate::error::{Failure, Kind, store_error};

const CREDENTIAL_NOT_FOUND: &str = "CREDENTIAL_NOT_FOUND";
const TOKEN_NOT_FOUND: &str = "VAULT_TOKEN_NOT_FOUND";
const CREATE_OPERATION: &str = "createVaultCredential";
/// What starts a vault token's secret.
pub const TOKEN_PREFIX: &str = crate::auth::VAULT_TOKEN_PREFIX;

/// Records a decrypted read as a security event, inside the read's transaction: a value is
/// returned only if its event is recorded. The event names the credential and the token,
/// never the value.
pub fn record_decrypted_read(
    conn: &mut DbConnection,
    org_id: &str,
    credential_id: &str,
    token_id: &str,
) -> StoreResult<()> {
    use crate::security::{Event, EventType, Severity};
    let event = Event::new(
        EventType::VaultSecretRead,
        Severity::Medium,
        format!("vault credential {credential_id} was read decrypted with token {token_id}"),
    )
    .on("vault_credential", credential_id)
    .details(serde_json::json!({ "token_id": token_id }));
    crate::security::record(conn, Some(org_id), event).map(|_| ())
}

fn row_to_credential(
    row: &CredentialRow,
    value: Option<String>,
) -> Result<VaultCredential, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("credential {}: {what}", row.id));
    let body: Map<String, Value> =
        serde_json::from_str(&row.body).map_err(|e| corrupt(e.to_string()))?;
    let metadata = match body.get("metadata") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => Default::default(),
    };
    let tags = match body.get("tags") {
        Some(Value::Array(t)) => t
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Ok(VaultCredential {
        id: row.id.clone(),
        name: row.name.clone(),
        type_: VaultCredentialType::from_wire(&row.cred_type)
            .ok_or_else(|| corrupt("unknown type".into()))?,
        description: row.description.clone(),
        metadata,
        tags,
        environment: row.environment.clone(),
        value,
        last_accessed_at: match &row.last_accessed_at {
            Some(t) => MaybeUndefined::Value(t.clone()),
            None => MaybeUndefined::Null,
        },
        version: row.version,
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
    })
}

/// The stored body of a credential: metadata, then tags (last, so a tag filter can match
/// inside the tags array only).
fn body_of(
    metadata: Option<&agentplane_api::models::VaultMetadata>,
    tags: Option<&Vec<String>>,
) -> String {
    let mut body = Map::new();
    body.insert(
        "metadata".into(),
        Value::Object(
            metadata
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        ),
    );
    body.insert(
        "tags".into(),
        Value::Array(
            tags.map(|t| t.iter().cloned().map(Value::String).collect())
                .unwrap_or_default(),
        ),
    );
    Value::Object(body).to_string()
}

/// The columns a replace writes; the sealed value stays unless a new one is sent.
fn replaced(
    input: &VaultCredentialReplace,
    sealed: Option<&String>,
    current: &CredentialRow,
) -> CredentialChanges {
    CredentialChanges {
        name: input.name.clone(),
        cred_type: input.type_.as_str().to_string(),
        environment: input.environment.clone(),
        description: input.description.clone(),
        body: body_of(input.metadata.as_ref(), input.tags.as_ref()),
        value_sealed: sealed.map_or_else(|| current.value_sealed.clone(), String::clone),
    }
}

fn token_of(row: &TokenRow) -> VaultToken {
    VaultToken {
        id: row.id.clone(),
        name: row.name.clone(),
        prefix: row.prefix.clone(),
        user_id: row.user_id.clone(),
        created_at: row.created_at.clone(),
        expires_at: row.expires_at.clone(),
        last_used_at: row.last_used_at.clone(),
        revoked_at: row.revoked_at.clone(),
    }
}

/// Why a vault token does not open a credential.
enum TokenProblem {
    Invalid(&'static str),
    OtherOrganization,
}

impl TokenProblem {
    fn failure(self, rid: &str) -> Failure {
        match self {
            TokenProblem::Invalid(message) => {
                Failure::new(Kind::Unauthorized, "VAULT_TOKEN_INVALID", message, rid)
            }
            TokenProblem::OtherOrganization => Failure::new(
                Kind::Forbidden,
                "VAULT_TOKEN_FORBIDDEN",
                "the vault token belongs to another organization",
                rid,
            ),
        }
    }
}

/// Checks the token, reads the credential, opens its value and records the read, all in one
/// transaction: nothing is returned unless the read is recorded.
fn decrypted_read(
    conn: &mut DbConnection,
    crypto: &crate::crypto::Crypto,
    org_id: &str,
    credential_id: &str,
    token: &str,
) -> StoreResult<Result<(CredentialRow, String), TokenProblem>> {
    let hash = crate::auth::hash_key(token);
    crate::db::write_transaction(conn, |conn| {
        let now = crate::ids::now();
        let Some(found) = store::token_by_hash(conn, &hash)? else {
            return Ok(Err(TokenProblem::Invalid("the vault token is not valid")));
        };
        if found.revoked_at.is_some() {
            return Ok(Err(TokenProblem::Invalid(
                "the vault token has been revoked",
            )));
        }
        if found
            .expires_at
            .as_deref()
            .is_some_and(|t| t <= now.as_str())
        {
            return Ok(Err(TokenProblem::Invalid("the vault token has expired")));
        }
        if found.org_id != org_id {
            return Ok(Err(TokenProblem::OtherOrganization));
        }
        let row = store::get_credential(conn, org_id, credential_id)?;
        let plain = crypto
            .decrypt(&row.value_sealed)
            .map_err(|e| StoreError::Corrupt(format!("credential {}: {e}", row.id)))?;
        let value = String::from_utf8(plain)
            .map_err(|_| StoreError::Corrupt(format!("credential {}: not UTF-8", row.id)))?;
        store::touch_token(conn, &found.id, &now)?;
        store::touch_credential(conn, &row.id, &now)?;
        record_decrypted_read(conn, org_id, &row.id, &found.id)?;
        let row = store::get_credential(conn, org_id, credential_id)?;
        Ok(Ok((row, value)))
    })
}

impl Handlers {
    async fn create_credential_row(
        &self,
        caller: &Caller,
        params: CreateVaultCredentialParams,
    ) -> Result<CredentialRow, Failure> {
        let rid = caller.request_id.as_str();
        let input: &VaultCredentialInput = &params.body;
        let hash = idem::request_hash(&input.to_json().unwrap_or_default());
        let now = crate::ids::now();
        let row = CredentialRow {
            id: crate::ids::new_id("cred"),
            org_id: caller.org_id.clone(),
            name: input.name.clone(),
            cred_type: input.type_.as_str().to_string(),
            environment: input.environment.clone(),
            description: input.description.clone(),
            body: body_of(input.metadata.as_ref(), input.tags.as_ref()),
            value_sealed: self.crypto.encrypt(input.value.as_bytes()),
            last_accessed_at: None,
            version: 1,
            created_at: now.clone(),
            updated_at: now,
        };
        let keyed = NewKeyed {
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
            move |conn| store::insert_credential(conn, &row).map(|()| row.clone()),
            move |conn, id| store::get_credential(conn, &org, id),
            CREDENTIAL_NOT_FOUND,
            rid,
        )
        .await
    }

    async fn list_credential_page(
        &self,
        caller: &Caller,
        params: ListVaultCredentialsParams,
    ) -> Result<VaultCredentialList, Failure> {
        let rid = caller.request_id.as_str();
        let page = PageRequest::of(&params, rid)?;
        let filter = CredentialFilter {
            cred_type: params.type_.map(|t| t.as_str().to_string()),
            environment: params.environment,
            tag: params.tag,
        };
        let (org, q) = (caller.org_id.clone(), page.page());
        let (rows, total) = self
            .store
            .run(move |conn| store::list_credentials(conn, &org, &filter, &q))
            .await
            .map_err(store_error(CREDENTIAL_NOT_FOUND, rid))?;
        let data = rows
            .iter()
            .map(|r| row_to_credential(r, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(store_error(CREDENTIAL_NOT_FOUND, rid))?;
        Ok(VaultCredentialList {
            pagination: page.pagination(rows.len(), rows.last().map(|r| r.id.as_str()), total),
            data,
        })
    }

    /// The credential with its value in clear, for a valid vault token of the organization;
    /// the read is recorded.
    async fn decrypted_credential(
        &self,
        caller: &Caller,
        id: String,
        token: String,
    ) -> Result<VaultCredential, Failure> {
        let rid = caller.request_id.as_str();
        let (org, crypto) = (caller.org_id.clone(), self.crypto.clone());
        let (row, value) = self
            .store
            .run(move |conn| decrypted_read(conn, &crypto, &org, &id, &token))
            .await
            .map_err(store_error(CREDENTIAL_NOT_FOUND, rid))?
            .map_err(|problem| problem.failure(rid))?;
        let credential =
            row_to_credential(&row, Some(value)).map_err(store_error(CREDENTIAL_NOT_FOUND, rid))?;
        tracing::info!(
            request_id = %rid,
            credential_id = %credential.id,
            "vault credential read decrypted"
        );
        Ok(credential)
    }

    async fn stored_credential(
        &self,
        caller: &Caller,
        id: String,
    ) -> Result<VaultCredential, Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| store::get_credential(conn, &org, &id))
            .await
            .and_then(|row| row_to_credential(&row, None))
            .map_err(store_error(CREDENTIAL_NOT_FOUND, &caller.request_id))
    }

    async fn replace_credential(
        &self,
        caller: &Caller,
        params: ReplaceVaultCredentialParams,
    ) -> Result<VaultCredential, Failure> {
        let org = caller.org_id.clone();
        let ReplaceVaultCredentialParams {
            credential_id,
            if_match,
            body: input,
        } = params;
        let sealed = input
            .value
            .as_ref()
            .map(|v| self.crypto.encrypt(v.as_bytes()));
        self.store
            .run(move |conn| {
                store::update_credential(conn, &org, &credential_id, |current| {
                    if let Some(h) = &if_match
                        && !etag_matches(h, &etag(current.version))
                    {
                        return Err(StoreError::PreconditionFailed);
                    }
                    Ok(replaced(&input, sealed.as_ref(), current))
                })
            })
            .await
            .and_then(|row| row_to_credential(&row, None))
            .map_err(store_error(CREDENTIAL_NOT_FOUND, &caller.request_id))
    }

    /// A new vault token of the caller, with its secret (shown once).
    async fn issue_token(
        &self,
        caller: &Caller,
        params: CreateVaultTokenParams,
    ) -> Result<VaultTokenCreated, Failure> {
        let secret = crate::auth::generate_secret(TOKEN_PREFIX);
        let now = chrono::Utc::now();
        let expires_at = params
            .body
            .ttl_seconds
            .map(|s| crate::ids::format_time(now + chrono::Duration::seconds(s)));
        let row = TokenRow {
            id: crate::ids::new_id("vtok"),
            org_id: caller.org_id.clone(),
            user_id: caller.user_id.clone(),
            name: params.body.name,
            prefix: secret.prefix.clone(),
            token_hash: secret.hash.clone(),
            created_at: crate::ids::format_time(now),
            expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        let stored = row.clone();
        self.store
            .run(move |conn| store::insert_token(conn, &stored))
            .await
            .map_err(store_error(TOKEN_NOT_FOUND, &caller.request_id))?;
        let t = token_of(&row);
        Ok(VaultTokenCreated {
            id: t.id,
            name: t.name,
            prefix: t.prefix,
            user_id: t.user_id,
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
            token: secret.secret,
        })
    }
}

impl VaultApi for Handlers {
    async fn list_vault_credentials(
        &self,
        caller: Caller,
        params: ListVaultCredentialsParams,
    ) -> Result<ListVaultCredentialsResponse, ApiError> {
        let list = self.list_credential_page(&caller, params).await?;
        Ok(ListVaultCredentialsResponse::Ok(Json(list)))
    }

    async fn create_vault_credential(
        &self,
        caller: Caller,
        params: CreateVaultCredentialParams,
    ) -> Result<CreateVaultCredentialResponse, ApiError> {
        let row = self.create_credential_row(&caller, params).await?;
        let c = row_to_credential(&row, None)
            .map_err(store_error(CREDENTIAL_NOT_FOUND, &caller.request_id))?;
        let (location, tag) = (format!("/v1/vault/credentials/{}", c.id), etag(c.version));
        Ok(CreateVaultCredentialResponse::Created(
            Json(c),
            location,
            tag,
        ))
    }

    async fn get_vault_credential(
        &self,
        caller: Caller,
        params: GetVaultCredentialParams,
    ) -> Result<GetVaultCredentialResponse, ApiError> {
        let id = params.credential_id;
        if let Some(token) = params.x_vault_token {
            let c = self.decrypted_credential(&caller, id, token).await?;
            let tag = etag(c.version);
            return Ok(GetVaultCredentialResponse::Ok(Json(c), tag));
        }
        let c = self.stored_credential(&caller, id).await?;
        let tag = etag(c.version);
        if not_modified(params.if_none_match.as_deref(), &tag) {
            return Ok(GetVaultCredentialResponse::NotModified(tag));
        }
        Ok(GetVaultCredentialResponse::Ok(Json(c), tag))
    }

    async fn replace_vault_credential(
        &self,
        caller: Caller,
        params: ReplaceVaultCredentialParams,
    ) -> Result<ReplaceVaultCredentialResponse, ApiError> {
        let c = self.replace_credential(&caller, params).await?;
        let tag = etag(c.version);
        Ok(ReplaceVaultCredentialResponse::Ok(Json(c), tag))
    }

    async fn delete_vault_credential(
        &self,
        caller: Caller,
        params: DeleteVaultCredentialParams,
    ) -> Result<DeleteVaultCredentialResponse, ApiError> {
        let (org, id) = (caller.org_id.clone(), params.credential_id);
        self.store
            .run(move |conn| store::delete_credential(conn, &org, &id))
            .await
            .map_err(store_error(CREDENTIAL_NOT_FOUND, &caller.request_id))?;
        Ok(DeleteVaultCredentialResponse::NoContent)
    }

    async fn list_vault_tokens(
        &self,
        caller: Caller,
        params: ListVaultTokensParams,
    ) -> Result<ListVaultTokensResponse, ApiError> {
        let rid = caller.request_id.as_str();
        let page = PageRequest::of(&params, rid)?;
        let (org, q) = (caller.org_id.clone(), page.page());
        let (rows, total) = self
            .store
            .run(move |conn| store::list_tokens(conn, &org, &q))
            .await
            .map_err(store_error(TOKEN_NOT_FOUND, rid))?;
        Ok(ListVaultTokensResponse::Ok(Json(VaultTokenList {
            pagination: page.pagination(rows.len(), rows.last().map(|r| r.id.as_str()), total),
            data: rows.iter().map(token_of).collect(),
        })))
    }

    async fn create_vault_token(
        &self,
        caller: Caller,
        params: CreateVaultTokenParams,
    ) -> Result<CreateVaultTokenResponse, ApiError> {
        let created = self.issue_token(&caller, params).await?;
        let location = format!("/v1/vault/tokens/{}", created.id);
        Ok(CreateVaultTokenResponse::Created(Json(created), location))
    }

    async fn get_vault_token(
        &self,
        caller: Caller,
        params: GetVaultTokenParams,
    ) -> Result<GetVaultTokenResponse, ApiError> {
        let (org, id) = (caller.org_id.clone(), params.token_id);
        let row = self
            .store
            .run(move |conn| store::get_token(conn, &org, &id))
            .await
            .map_err(store_error(TOKEN_NOT_FOUND, &caller.request_id))?;
        Ok(GetVaultTokenResponse::Ok(Json(token_of(&row))))
    }

    async fn revoke_vault_token(
        &self,
        caller: Caller,
        params: RevokeVaultTokenParams,
    ) -> Result<RevokeVaultTokenResponse, ApiError> {
        let (org, id, now) = (caller.org_id.clone(), params.token_id, crate::ids::now());
        let row = self
            .store
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    store::revoke_token(conn, &org, &id, &now)
                })
            })
            .await
            .map_err(store_error(TOKEN_NOT_FOUND, &caller.request_id))?;
        Ok(RevokeVaultTokenResponse::Ok(Json(token_of(&row))))
    }
}
