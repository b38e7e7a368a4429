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
    conn: &mut DbConnection, k: &Keyed<'_>,
    mut insert: impl FnMut(&mut DbConnection) -> StoreResult<T>,
    fetch: impl FnMut(&mut DbConnection, &str) -> StoreResult<T>,
) -> StoreResult<Created<T>> {
    let refusable = |conn: &mut DbConnection| insert(conn).map(Ok::<T, std::convert::Infallible>);
    match create_once_or_refuse(conn, k, refusable, fetch)? {
        Ok(created) => Ok(created),
        Err(never) => match never {},
    }
}

/// [`create_once`] whose `insert` may refuse with an `R` before it writes anything: then
/// nothing is kept, not even the key, and the refusal is the answer.
fn create_once_or_refuse<T, R>(
    conn: &mut DbConnection, k: &Keyed<'_>,
    mut insert: impl FnMut(&mut DbConnection) -> StoreResult<Result<T, R>>,
    mut fetch: impl FnMut(&mut DbConnection, &str) -> StoreResult<T>,
) -> StoreResult<Result<Created<T>, R>> {
    let mut last = None;
    for _ in 0..2 {
        let attempt = crate::db::write_transaction(conn, |conn| {
            if let Some(key) = k.key
                && let Some(found) = idempotency::find(conn, k.org_id, k.operation, key)?
            {
                if found.request_hash != k.request_hash {
                    return Ok(Ok(Created::KeyReused));
                }
                return match fetch(conn, &found.resource_id) {
                    Ok(existing) => Ok(Ok(Created::Replayed(existing))),
                    Err(StoreError::NotFound) => Ok(Ok(Created::KeyReused)),
                    Err(e) => Err(e),
                };
            }
            let created = match insert(conn)? {
                Ok(created) => created,
                Err(refused) => return Ok(Err(refused)),
            };
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
            Ok(Ok(Created::New(created)))
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

    fn keyed(&self) -> Keyed<'_> {
        Keyed {
            org_id: &self.org_id,
            operation: self.operation,
            key: self.key.as_deref(),
            request_hash: &self.request_hash,
            resource_id: &self.resource_id,
        }
    }
}

/// [`create_once`] on the store's blocking pool.
pub async fn create_keyed<T: Send + 'static>(
    store: &Store, k: NewKeyed,
    insert: impl FnMut(&mut DbConnection) -> StoreResult<T> + Send + 'static,
    fetch: impl FnMut(&mut DbConnection, &str) -> StoreResult<T> + Send + 'static,
) -> StoreResult<Created<T>> {
    store
        .run(move |conn| create_once(conn, &k.keyed(), insert, fetch))
        .await
}

/// [`create_keyed`] for a plain create: the new or replayed resource, or the 409 of a reused
/// key; storage errors become `not_found` (a fetch of a gone resource) or their failure.
pub async fn create_resource<T: Send + 'static>(
    store: &Store, k: NewKeyed,
    mut insert: impl FnMut(&mut DbConnection) -> StoreResult<T> + Send + 'static,
    fetch: impl FnMut(&mut DbConnection, &str) -> StoreResult<T> + Send + 'static, not_found: &str,
    request_id: &str,
) -> Result<T, Failure> {
    let refusable = move |conn: &mut DbConnection| insert(conn).map(Ok);
    let answer = |_: &T| {};
    create_resource_then(store, k, refusable, fetch, answer, not_found, request_id).await
}

/// [`create_resource`] whose `insert` may refuse with a [`Failure`] (a 422, say) before it
/// writes anything, in the create's transaction (nothing is kept, not even the key), and
/// whose `on_new` runs once a new resource is committed, not on a replay (to wake what the
/// create queued).
pub async fn create_resource_then<T: Send + 'static>(
    store: &Store, k: NewKeyed,
    insert: impl FnMut(&mut DbConnection) -> StoreResult<Result<T, Failure>> + Send + 'static,
    fetch: impl FnMut(&mut DbConnection, &str) -> StoreResult<T> + Send + 'static,
    on_new: impl FnOnce(&T), not_found: &str, request_id: &str,
) -> Result<T, Failure> {
    let created = store
        .run(move |conn| create_once_or_refuse(conn, &k.keyed(), insert, fetch))
        .await
        .map_err(|e| Failure::from_store(e, not_found, request_id))??;
    match created {
        Created::New(t) => {
            on_new(&t);
            Ok(t)
        }
        Created::Replayed(t) => Ok(t),
        Created::KeyReused => Err(key_reused(request_id)),
    }
}
