//! Conversations (Magnet AI): CRUD, and messages the agent answers with the history, as
//! an execution on the worker pool (waited for, or streamed).

use std::time::Duration;

use agentplane_api::models::{
    Conversation, ConversationList, Message, MessageExchange, MessageList, MessageRole,
};
use agentplane_api::*;
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use serde_json::json;

use super::Handlers;
use super::executions::{follow, row_to_execution};
use super::idem::{self, Created, Keyed};
use super::paging::{PageRequest, etag, etag_matches};
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::conversations::{self as store, ConversationRow, MessageRow};
use crate::engine::runner;
use crate::error::{Failure, Kind, detail};
use crate::failure_response;

failure_response!(ListConversationsResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });
failure_response!(CreateConversationResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, Conflict => Conflict, Unprocessable => UnprocessableEntity });
failure_response!(GetConversationResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(UpdateConversationResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, PreconditionFailed => PreconditionFailed, Unprocessable => UnprocessableEntity });
failure_response!(DeleteConversationResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(ListMessagesResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(SendMessageResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Conflict => Conflict, Unprocessable => UnprocessableEntity });

pub(crate) const NOT_FOUND: &str = "CONVERSATION_NOT_FOUND";
const CREATE_OPERATION: &str = "createConversation";
/// Messages a single conversation carries.
const EMBEDDED_MESSAGES: i64 = 100;

pub(crate) fn row_to_message(row: &MessageRow) -> Message {
    Message {
        id: row.id.clone(),
        conversation_id: row.conversation_id.clone(),
        role: MessageRole::from_wire(&row.role).unwrap_or(MessageRole::User),
        content: row.content.clone(),
        execution_id: row.execution_id.clone(),
        input_tokens: row.input_tokens,
        output_tokens: row.output_tokens,
        timestamp: row.created_at.clone(),
    }
}

fn row_to_conversation(
    row: &ConversationRow,
    messages: Option<&[MessageRow]>,
) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        id: row.id.clone(),
        agent_id: row.agent_id.clone(),
        user_id: row.user_id.clone(),
        title: row.title.clone(),
        metadata: serde_json::from_str(&row.metadata)
            .map_err(|e| StoreError::Corrupt(format!("conversation {}: {e}", row.id)))?,
        message_count: row.message_count,
        messages: messages.map(|m| m.iter().map(row_to_message).collect()),
        version: row.version,
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
    })
}

impl Handlers {
    async fn conversation_with_messages(
        &self,
        caller: &Caller,
        id: String,
    ) -> Result<(ConversationRow, Vec<MessageRow>), Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| {
                let row = store::get(conn, &org, &id)?;
                let messages = store::latest(conn, &row.id, EMBEDDED_MESSAGES)?;
                Ok((row, messages))
            })
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, &caller.request_id))
    }

    async fn create_conv(
        &self,
        caller: &Caller,
        params: CreateConversationParams,
    ) -> Result<ConversationRow, Failure> {
        let rid = caller.request_id.clone();
        let body = params.body;
        let hash =
            idem::request_hash(&poem_openapi::types::ToJSON::to_json(&body).unwrap_or_default());
        let now = crate::ids::now();
        let row = ConversationRow {
            id: crate::ids::new_id("conv"),
            org_id: caller.org_id.clone(),
            agent_id: body.agent_id.clone(),
            user_id: body.user_id.clone(),
            title: body.title.clone(),
            metadata: body.metadata.clone().unwrap_or(json!({})).to_string(),
            message_count: 0,
            version: 1,
            created_at: now.clone(),
            updated_at: now,
        };
        let key = params.idempotency_key;
        let created = self
            .store
            .run(move |conn| {
                match crate::db::agents::get(conn, &row.org_id, &row.agent_id) {
                    Ok(_) => {}
                    Err(StoreError::NotFound) => return Ok(None),
                    Err(e) => return Err(e),
                }
                let keyed = Keyed {
                    org_id: &row.org_id,
                    operation: CREATE_OPERATION,
                    key: key.as_deref(),
                    request_hash: &hash,
                    resource_id: &row.id,
                };
                idem::create_once(
                    conn,
                    &keyed,
                    |conn| store::insert(conn, &row).map(|()| row.clone()),
                    |conn, id| store::get(conn, &row.org_id, id),
                )
                .map(Some)
            })
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, &rid))?;
        match created {
            None => {
                let message = "no agent with this id in the organization";
                Err(Failure::with_details(
                    Kind::Unprocessable,
                    "AGENT_NOT_FOUND",
                    message,
                    vec![detail("agent_id", "not_found", message)],
                    &rid,
                ))
            }
            Some(Created::New(row) | Created::Replayed(row)) => Ok(row),
            Some(Created::KeyReused) => Err(idem::key_reused(&rid)),
        }
    }

    async fn send(&self, caller: &Caller, params: SendMessageParams) -> SendMessageResponse {
        let rid = caller.request_id.clone();
        let org = caller.org_id.clone();
        let cid = params.conversation_id.clone();
        let conversation = match self
            .store
            .run(move |conn| store::get(conn, &org, &cid))
            .await
        {
            Ok(c) => c,
            Err(e) => return Failure::from_store(e, NOT_FOUND, &rid).into(),
        };
        let body = params.body;
        let parameters = body.parameters.clone().unwrap_or_default();
        let timeout = body.timeout.unwrap_or(runner::DEFAULT_TIMEOUT_MS);
        let request = json!({
            "input": body.message,
            "parameters": parameters,
            "options": {"timeout": timeout},
        });
        let user_message = MessageRow {
            id: crate::ids::new_id("msg"),
            org_id: caller.org_id.clone(),
            conversation_id: conversation.id.clone(),
            role: "user".into(),
            content: body.message.clone(),
            execution_id: None,
            input_tokens: 0,
            output_tokens: 0,
            created_at: crate::ids::now(),
        };
        let id = crate::ids::new_id("exec");
        let live = self.runner.live.clone();
        let heard = live.subscribe(&id);
        let message = user_message.clone();
        let also: runner::AfterFinish = std::sync::Arc::new(move |conn, execution| {
            let mut m = message.clone();
            m.execution_id = Some(execution.id.clone());
            store::add_message(conn, &m)
        });
        let started = self
            .start_execution(
                caller,
                id.clone(),
                conversation.agent_id.clone(),
                request,
                parameters,
                Some(conversation.id.clone()),
                None,
                Some(also),
            )
            .await;
        let row = match started {
            Ok(row) => row,
            Err(f) => {
                drop(heard);
                live.release(&id);
                return match f.kind {
                    // The conversation's agent is gone: the message cannot be answered.
                    Kind::NotFound => Failure::with_details(
                        Kind::Unprocessable,
                        "AGENT_NOT_FOUND",
                        "the conversation's agent no longer exists",
                        vec![detail("agent_id", "not_found", "the agent was deleted")],
                        &rid,
                    )
                    .into(),
                    _ => f.into(),
                };
            }
        };
        let stream = body.stream.unwrap_or_else(|| {
            params
                .accept
                .as_deref()
                .is_some_and(|a| a.contains("text/event-stream"))
        });
        if stream {
            return SendMessageResponse::OkEventStream(follow(
                self.store.clone(),
                live,
                caller.org_id.clone(),
                row.id,
                heard,
            ));
        }
        let limit =
            Duration::from_millis(u64::try_from(timeout).unwrap_or(0)) + Duration::from_secs(5);
        let finished = match self.wait_for(&caller.org_id, &row.id, heard, limit).await {
            Ok(r) => r,
            Err(e) => return Failure::from_store(e, NOT_FOUND, &rid).into(),
        };
        live.release(&row.id);
        let eid = finished.id.clone();
        let replies = self
            .store
            .run(move |conn| {
                Ok((
                    store::message_of(conn, &eid, "user")?,
                    store::message_of(conn, &eid, "assistant")?,
                ))
            })
            .await;
        let (asked, reply) = match replies {
            Ok(r) => r,
            Err(e) => return Failure::from_store(e, NOT_FOUND, &rid).into(),
        };
        let execution = match row_to_execution(&finished) {
            Ok(e) => e,
            Err(e) => return Failure::from_store(e, NOT_FOUND, &rid).into(),
        };
        let mut asked_fallback = user_message;
        asked_fallback.execution_id = Some(finished.id.clone());
        SendMessageResponse::Created(Json(MessageExchange {
            message: row_to_message(&asked.unwrap_or(asked_fallback)),
            reply: reply.as_ref().map(row_to_message),
            execution,
        }))
    }
}

impl ConversationsApi for Handlers {
    async fn list_conversations(
        &self,
        caller: Caller,
        params: ListConversationsParams,
    ) -> Result<ListConversationsResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let page = match PageRequest::of(&params, &rid) {
                Ok(p) => p,
                Err(f) => return f.into(),
            };
            let (org, agent, p) = (caller.org_id.clone(), params.agent_id, page.clone());
            let listed = self
                .store
                .run(move |conn| {
                    store::list(
                        conn,
                        &org,
                        agent.as_deref(),
                        p.offset,
                        p.limit,
                        p.after_id.as_deref(),
                    )
                })
                .await
                .and_then(|(rows, total)| {
                    let data = rows
                        .iter()
                        .map(|r| row_to_conversation(r, None))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((data, rows.last().map(|r| r.id.clone()), total))
                });
            match listed {
                Ok((data, last, total)) => ListConversationsResponse::Ok(Json(ConversationList {
                    pagination: page.pagination(data.len(), last.as_deref(), total),
                    data,
                })),
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn create_conversation(
        &self,
        caller: Caller,
        params: CreateConversationParams,
    ) -> Result<CreateConversationResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            match self.create_conv(&caller, params).await.and_then(|row| {
                row_to_conversation(&row, Some(&[]))
                    .map(|c| (c, row))
                    .map_err(|e| Failure::from_store(e, NOT_FOUND, &rid))
            }) {
                Ok((c, row)) => CreateConversationResponse::Created(
                    Json(c),
                    format!("/v1/conversations/{}", row.id),
                    etag(row.version),
                ),
                Err(f) => f.into(),
            }
        }
        .await)
    }

    async fn get_conversation(
        &self,
        caller: Caller,
        params: GetConversationParams,
    ) -> Result<GetConversationResponse, ApiError> {
        Ok(async {
            let (row, messages) = match self
                .conversation_with_messages(&caller, params.conversation_id)
                .await
            {
                Ok(r) => r,
                Err(f) => return f.into(),
            };
            let tag = etag(row.version);
            if params
                .if_none_match
                .as_deref()
                .is_some_and(|h| etag_matches(h, &tag))
            {
                return GetConversationResponse::NotModified(tag);
            }
            match row_to_conversation(&row, Some(&messages)) {
                Ok(c) => GetConversationResponse::Ok(Json(c), tag),
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn update_conversation(
        &self,
        caller: Caller,
        params: UpdateConversationParams,
    ) -> Result<UpdateConversationResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let (org, id, if_match, patch) = (
                caller.org_id.clone(),
                params.conversation_id,
                params.if_match,
                params.body,
            );
            let updated = self
                .store
                .run(move |conn| {
                    store::update(conn, &org, &id, |current| {
                        if let Some(h) = &if_match
                            && !etag_matches(h, &etag(current.version))
                        {
                            return Err(StoreError::PreconditionFailed);
                        }
                        let title = match &patch.title {
                            MaybeUndefined::Undefined => current.title.clone(),
                            MaybeUndefined::Null => None,
                            MaybeUndefined::Value(t) => Some(t.clone()),
                        };
                        let metadata = match &patch.metadata {
                            Some(m) => m.to_string(),
                            None => current.metadata.clone(),
                        };
                        Ok((title, metadata))
                    })
                })
                .await;
            match updated.and_then(|row| row_to_conversation(&row, None).map(|c| (c, row.version)))
            {
                Ok((c, version)) => UpdateConversationResponse::Ok(Json(c), etag(version)),
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn delete_conversation(
        &self,
        caller: Caller,
        params: DeleteConversationParams,
    ) -> Result<DeleteConversationResponse, ApiError> {
        Ok(async {
            let (org, id) = (caller.org_id.clone(), params.conversation_id);
            match self
                .store
                .run(move |conn| store::delete(conn, &org, &id))
                .await
            {
                Ok(()) => DeleteConversationResponse::NoContent,
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn list_messages(
        &self,
        caller: Caller,
        params: ListMessagesParams,
    ) -> Result<ListMessagesResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let page = match PageRequest::of(&params, &rid) {
                Ok(p) => p,
                Err(f) => return f.into(),
            };
            let (org, id, p) = (caller.org_id.clone(), params.conversation_id, page.clone());
            let listed = self
                .store
                .run(move |conn| {
                    let row = store::get(conn, &org, &id)?;
                    store::messages(conn, &row.id, p.offset, p.limit, p.after_id.as_deref())
                })
                .await;
            match listed {
                Ok((rows, total)) => ListMessagesResponse::Ok(Json(MessageList {
                    pagination: page.pagination(
                        rows.len(),
                        rows.last().map(|r| r.id.as_str()),
                        total,
                    ),
                    data: rows.iter().map(row_to_message).collect(),
                })),
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn send_message(
        &self,
        caller: Caller,
        params: SendMessageParams,
    ) -> Result<SendMessageResponse, ApiError> {
        Ok(async { self.send(&caller, params).await }.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_map_roles_and_times() {
        let row = MessageRow {
            id: "msg_1".into(),
            org_id: "org".into(),
            conversation_id: "conv_1".into(),
            role: "assistant".into(),
            content: "Hi".into(),
            execution_id: Some("exec_1".into()),
            input_tokens: 3,
            output_tokens: 1,
            created_at: "2026-01-01T00:00:00.000000Z".into(),
        };
        let m = row_to_message(&row);
        assert_eq!(m.role, MessageRole::Assistant);
        assert_eq!(m.timestamp, row.created_at);
    }
}
