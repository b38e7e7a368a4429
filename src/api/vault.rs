//! The vault (CodexOS): credentials whose `value` is sealed under the master key and opened
//! only by a read that carries a valid `X-Vault-Token`; vault tokens issued, listed and
//! revoked through the API, stored hashed like API keys.

use agentplane_api::Json;
use agentplane_api::models::{
    VaultCredential, VaultCredentialInput, VaultCredentialList, VaultCredentialReplace,
    VaultCredentialType, VaultToken, VaultTokenCreated, VaultTokenList,
};
use agentplane_api::*;
use poem_openapi::types::MaybeUndefined;
use serde_json::{Map, Value};

use super::Handlers;
use super::paging::etag;
use super::resource::Resource;
use crate::auth::Caller;
use crate::db::crud::Stored;
use crate::db::vault::{
    self as store, CredentialChanges, CredentialFilter, CredentialRow, TokenRow,
};
use crate::db::{DbConnection, StoreError, StoreResult};
use crate::error::{Failure, Kind, store_error};

const TOKEN_NOT_FOUND: &str = "VAULT_TOKEN_NOT_FOUND";
/// What starts a vault token's secret.
pub const TOKEN_PREFIX: &str = crate::auth::VAULT_TOKEN_PREFIX;

/// Records a decrypted read as a security event, inside the read's transaction: a value is
/// returned only if its event is recorded. The event names the credential and the token,
/// never the value.
pub fn record_decrypted_read(
    conn: &mut DbConnection, caller: &Caller, credential_id: &str, token_id: &str,
) -> StoreResult<()> {
    use crate::security::{Event, EventType, Severity};
    let event = Event::new(
        EventType::VaultSecretRead,
        Severity::Medium,
        format!("vault credential {credential_id} was read decrypted with token {token_id}"),
    )
    .by(&caller.key_id, &caller.user_id)
    .request(&caller.request_id)
    .on("vault_credential", credential_id)
    .details(serde_json::json!({ "token_id": token_id }));
    crate::security::record(conn, Some(&caller.org_id), event).map(|_| ())
}

impl Resource for VaultCredential {
    type Row = CredentialRow;
    const NOT_FOUND: &'static str = "CREDENTIAL_NOT_FOUND";

    /// The credential without its value.
    fn from_row(row: &CredentialRow) -> Result<VaultCredential, StoreError> {
        row_to_credential(row, None)
    }
}

/// The credential of `row` with `value` in clear, if given.
fn row_to_credential(
    row: &CredentialRow, value: Option<String>,
) -> Result<VaultCredential, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("credential {}: {what}", row.id));
    let body: Map<String, Value> =
        serde_json::from_str(&row.content.body).map_err(|e| corrupt(e.to_string()))?;
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
        name: row.content.name.clone(),
        type_: VaultCredentialType::from_wire(&row.content.cred_type)
            .ok_or_else(|| corrupt("unknown type".into()))?,
        description: row.content.description.clone(),
        metadata,
        tags,
        environment: row.content.environment.clone(),
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
    metadata: Option<&agentplane_api::models::VaultMetadata>, tags: Option<&Vec<String>>,
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
    input: &VaultCredentialReplace, sealed: Option<&String>, current: &CredentialRow,
) -> CredentialChanges {
    CredentialChanges {
        name: input.name.clone(),
        cred_type: input.type_.as_str().to_string(),
        environment: input.environment.clone(),
        description: input.description.clone(),
        body: body_of(input.metadata.as_ref(), input.tags.as_ref()),
        value_sealed: sealed.map_or_else(|| current.content.value_sealed.clone(), String::clone),
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
    conn: &mut DbConnection, crypto: &crate::crypto::Crypto, caller: &Caller, org_id: &str,
    credential_id: &str, token: &str,
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
        let row = store::get(conn, org_id, credential_id)?;
        let plain = crypto
            .decrypt(&row.content.value_sealed)
            .map_err(|e| StoreError::Corrupt(format!("credential {}: {e}", row.id)))?;
        let value = String::from_utf8(plain)
            .map_err(|_| StoreError::Corrupt(format!("credential {}: not UTF-8", row.id)))?;
        store::touch_token(conn, &found.id, &now)?;
        store::touch_credential(conn, &row.id, &now)?;
        record_decrypted_read(conn, caller, &row.id, &found.id)?;
        let row = store::get(conn, org_id, credential_id)?;
        Ok(Ok((row, value)))
    })
}

/// Secret values are an admin's: a member's key gets 403 naming `field`.
fn admin_only(caller: &Caller, field: &str, message: &str) -> Result<(), Failure> {
    if caller.is_admin() {
        return Ok(());
    }
    Err(Failure::on_field(
        Kind::Forbidden,
        "INSUFFICIENT_PERMISSIONS",
        field,
        "forbidden",
        message,
        &caller.request_id,
    ))
}

impl Handlers {
    /// The credential with its value in clear, for a valid vault token of the organization;
    /// the read is recorded.
    async fn decrypted_credential(
        &self, caller: &Caller, id: String, token: String,
    ) -> Result<VaultCredential, Failure> {
        let rid = caller.request_id.as_str();
        admin_only(
            caller,
            "x-vault-token",
            "only an admin key can read a secret's value",
        )?;
        let crypto = self.crypto.clone();
        let reader = caller.clone();
        let (row, value) = self
            .run_for(caller, VaultCredential::NOT_FOUND, move |conn, org| {
                decrypted_read(conn, &crypto, &reader, org, &id, &token)
            })
            .await?
            .map_err(|problem| problem.failure(rid))?;
        let credential = row_to_credential(&row, Some(value))
            .map_err(store_error(VaultCredential::NOT_FOUND, rid))?;
        tracing::info!(
            request_id = %rid,
            credential_id = %credential.id,
            "vault credential read decrypted"
        );
        Ok(credential)
    }

    /// A new vault token of the caller, with its secret (shown once).
    async fn issue_token(
        &self, caller: &Caller, params: CreateVaultTokenParams,
    ) -> Result<VaultTokenCreated, Failure> {
        admin_only(caller, "token", "only an admin key can mint vault tokens")?;
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
        self.run_for(caller, TOKEN_NOT_FOUND, move |conn, _| {
            TokenRow::insert(conn, &stored)
        })
        .await?;
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

/// A new credential of `org_id` as sent, its value sealed as `value_sealed`.
fn new_row(org_id: &str, input: &VaultCredentialInput, value_sealed: String) -> CredentialRow {
    let content = CredentialChanges {
        name: input.name.clone(),
        cred_type: input.type_.as_str().to_string(),
        environment: input.environment.clone(),
        description: input.description.clone(),
        body: body_of(input.metadata.as_ref(), input.tags.as_ref()),
        value_sealed,
    };
    CredentialRow::new(org_id, crate::ids::new_id("cred"), content)
}

impl VaultApi for Handlers {
    async fn list_vault_credentials(
        &self, caller: Caller, params: ListVaultCredentialsParams,
    ) -> Result<ListVaultCredentialsResponse, ApiError> {
        let filter = CredentialFilter {
            cred_type: params.type_.map(|t| t.as_str().to_string()),
            environment: params.environment.clone(),
            tag: params.tag.clone(),
        };
        let (data, pagination) = self
            .list_page::<VaultCredential>(&caller, &params, move |conn, org, page| {
                store::list(conn, org, &filter, page)
            })
            .await?;
        let list = VaultCredentialList { data, pagination };
        Ok(ListVaultCredentialsResponse::Ok(Json(list)))
    }

    async fn create_vault_credential(
        &self, caller: Caller, params: CreateVaultCredentialParams,
    ) -> Result<CreateVaultCredentialResponse, ApiError> {
        let sealed = self.crypto.encrypt(params.body.value.as_bytes());
        let row = new_row(&caller.org_id, &params.body, sealed);
        let (credential, location, tag) = self
            .create::<VaultCredential>(&caller, &params, row)
            .await?;
        Ok(CreateVaultCredentialResponse::Created(
            Json(credential),
            location,
            tag,
        ))
    }

    /// With an `X-Vault-Token`, the value in clear (never a 304); else without it.
    async fn get_vault_credential(
        &self, caller: Caller, params: GetVaultCredentialParams,
    ) -> Result<GetVaultCredentialResponse, ApiError> {
        let id = params.credential_id;
        let answer = match params.x_vault_token {
            Some(token) => {
                let credential = self.decrypted_credential(&caller, id, token).await?;
                let tag = etag(credential.version);
                Conditional::Fresh(credential, tag)
            }
            None => {
                self.item_if_changed::<VaultCredential>(&caller, id, params.if_none_match)
                    .await?
            }
        };
        Ok(answer.into())
    }

    async fn replace_vault_credential(
        &self, caller: Caller, params: ReplaceVaultCredentialParams,
    ) -> Result<ReplaceVaultCredentialResponse, ApiError> {
        let ReplaceVaultCredentialParams {
            credential_id,
            if_match,
            body,
        } = params;
        let sealed = body
            .value
            .as_ref()
            .map(|v| self.crypto.encrypt(v.as_bytes()));
        let (credential, tag) = self
            .replace::<VaultCredential>(&caller, credential_id, if_match, move |_, current| {
                Ok(Ok(replaced(&body, sealed.as_ref(), current)))
            })
            .await?;
        Ok(ReplaceVaultCredentialResponse::Ok(Json(credential), tag))
    }

    async fn delete_vault_credential(
        &self, caller: Caller, params: DeleteVaultCredentialParams,
    ) -> Result<DeleteVaultCredentialResponse, ApiError> {
        self.remove::<VaultCredential>(&caller, params.credential_id)
            .await?;
        Ok(DeleteVaultCredentialResponse::NoContent)
    }

    async fn list_vault_tokens(
        &self, caller: Caller, params: ListVaultTokensParams,
    ) -> Result<ListVaultTokensResponse, ApiError> {
        let (data, pagination) = self
            .page_of(&caller, &params, TOKEN_NOT_FOUND, store::list_tokens, |r| {
                Ok(token_of(r))
            })
            .await?;
        Ok(ListVaultTokensResponse::Ok(Json(VaultTokenList {
            data,
            pagination,
        })))
    }

    async fn create_vault_token(
        &self, caller: Caller, params: CreateVaultTokenParams,
    ) -> Result<CreateVaultTokenResponse, ApiError> {
        let created = self.issue_token(&caller, params).await?;
        let location = format!("/v1/vault/tokens/{}", created.id);
        Ok(CreateVaultTokenResponse::Created(Json(created), location))
    }

    async fn get_vault_token(
        &self, caller: Caller, params: GetVaultTokenParams,
    ) -> Result<GetVaultTokenResponse, ApiError> {
        let id = params.token_id;
        let row = self
            .run_for(&caller, TOKEN_NOT_FOUND, move |conn, org| {
                TokenRow::get(conn, org, &id)
            })
            .await?;
        Ok(GetVaultTokenResponse::Ok(Json(token_of(&row))))
    }

    async fn revoke_vault_token(
        &self, caller: Caller, params: RevokeVaultTokenParams,
    ) -> Result<RevokeVaultTokenResponse, ApiError> {
        let (id, now) = (params.token_id, crate::ids::now());
        let row = self
            .run_for(&caller, TOKEN_NOT_FOUND, move |conn, org| {
                crate::db::write_transaction(conn, |conn| store::revoke_token(conn, org, &id, &now))
            })
            .await?;
        Ok(RevokeVaultTokenResponse::Ok(Json(token_of(&row))))
    }
}
