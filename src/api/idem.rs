//! `Idempotency-Key` on creating POSTs, for any resource: the first request's resource is
//! replayed on a retry with the same key and body; another body with the key is refused.

use sha2::Digest;

use crate::db::idempotency::{self, IdempotencyRow};
use crate::db::{DbConnection, Store, StoreError, StoreResult};
use crate::error::{Failure, Kind, detail};

/// What a keyed create did.
pub enum Created<T> {
    New(T),
    /// A retry: what the first request created.
    Replayed(T),
    /// The key was used with another body, or its resource is gone.
    KeyReused,
}

/// The hash that tells two bodies apart.
pub fn request_hash(body: &serde_json::Value) -> String {
    hex::encode(sha2::Sha256::digest(body.to_string()))
}

/// The 409 of a reused key.
pub fn key_reused(request_id: &str) -> Failure {
    Failure::with_details(
        Kind::Conflict,
        "IDEMPOTENCY_KEY_REUSED",
        "this Idempotency-Key was used with a different request body, or for a resource since deleted",
        vec![detail(
            "Idempotency-Key",
            "reused",
            "use a new key for a new request",
        )],
        request_id,
    )
}

/// One keyed (or unkeyed) create.
pub struct Keyed<'a> {
    pub org_id: &'a str,
    pub operation: &'a str,
    pub key: Option<&'a str>,
    pub request_hash: &'a str,
    pub resource_id: &'a str,
}

/// Runs `insert` once per key: concurrent requests with one key agree on one resource (the
/// loser's key insert conflicts and its second pass finds the winner's resource).
pub fn create_once<T>(
    conn: &mut DbConnection,
    k: &Keyed<'_>,
    mut insert: impl FnMut(&mut DbConnection) -> StoreResult<T>,
    mut fetch: impl FnMut(&mut DbConnection, &str) -> StoreResult<T>,
) -> StoreResult<Created<T>> {
    let mut last = None;
    for _ in 0..2 {
        let attempt = crate::db::write_transaction(conn, |conn| {
            if let Some(key) = k.key
                && let Some(found) = idempotency::find(conn, k.org_id, k.operation, key)?
            {
                if found.request_hash != k.request_hash {
                    return Ok(Created::KeyReused);
                }
                return match fetch(conn, &found.resource_id) {
                    Ok(existing) => Ok(Created::Replayed(existing)),
                    Err(StoreError::NotFound) => Ok(Created::KeyReused),
                    Err(e) => Err(e),
                };
            }
            let created = insert(conn)?;
            if let Some(key) = k.key {
                idempotency::insert(
                    conn,
                    &IdempotencyRow {
                        org_id: k.org_id.to_string(),
                        operation: k.operation.to_string(),
                        idempotency_key: key.to_string(),
                        request_hash: k.request_hash.to_string(),
                        resource_id: k.resource_id.to_string(),
                        created_at: crate::ids::now(),
                    },
                )?;
            }
            Ok(Created::New(created))
        });
        match attempt {
            Err(StoreError::Conflict(reason)) if k.key.is_some() => {
                last = Some(StoreError::Conflict(reason))
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| StoreError::Unavailable("idempotent create did not settle".into())))
}

/// A keyed create, owned, for [`create_keyed`].
pub struct NewKeyed {
    pub org_id: String,
    pub operation: &'static str,
    pub key: Option<String>,
    pub request_hash: String,
    pub resource_id: String,
}

impl NewKeyed {
    /// The keyed create of `resource_id` in `org_id` that the operation `params` asks for.
    pub fn of<P: agentplane_api::Idempotent>(params: &P, org_id: &str, resource_id: &str) -> Self {
        NewKeyed {
            org_id: org_id.to_string(),
            operation: P::OPERATION_ID,
            key: params.idempotency_key().map(str::to_string),
            request_hash: request_hash(&params.request_json()),
            resource_id: resource_id.to_string(),
        }
    }
}

/// [`create_once`] on the store's blocking pool.
pub async fn create_keyed<T: Send + 'static>(
    store: &Store,
    k: NewKeyed,
    insert: impl FnMut(&mut DbConnection) -> StoreResult<T> + Send + 'static,
    fetch: impl FnMut(&mut DbConnection, &str) -> StoreResult<T> + Send + 'static,
) -> StoreResult<Created<T>> {
    store
        .run(move |conn| {
            let keyed = Keyed {
                org_id: &k.org_id,
                operation: k.operation,
                key: k.key.as_deref(),
                request_hash: &k.request_hash,
                resource_id: &k.resource_id,
            };
            create_once(conn, &keyed, insert, fetch)
        })
        .await
}

/// [`create_keyed`] for a plain create: the new or replayed resource, or the 409 of a reused
/// key; storage errors become `not_found` (a fetch of a gone resource) or their failure.
pub async fn create_resource<T: Send + 'static>(
    store: &Store,
    k: NewKeyed,
    insert: impl FnMut(&mut DbConnection) -> StoreResult<T> + Send + 'static,
    fetch: impl FnMut(&mut DbConnection, &str) -> StoreResult<T> + Send + 'static,
    not_found: &str,
    request_id: &str,
) -> Result<T, Failure> {
    match create_keyed(store, k, insert, fetch)
        .await
        .map_err(|e| Failure::from_store(e, not_found, request_id))?
    {
        Created::New(t) | Created::Replayed(t) => Ok(t),
        Created::KeyReused => Err(key_reused(request_id)),
    }
}
