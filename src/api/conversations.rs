//! Conversations (Magnet AI): CRUD, and messages the agent answers with the history, as
//! an execution on the worker pool (waited for, or streamed).

use agentplane_api::Json;
use agentplane_api::models::{
    Conversation, ConversationList, ConversationPatch, Execution, Message, MessageExchange,
    MessageList, SendMessage,
};
use agentplane_api::*;
use poem_openapi::types::MaybeUndefined;
use serde_json::json;
use tokio::sync::broadcast::Receiver;

use super::Handlers;
use super::idem;
use super::paging::{etag, etag_matches, not_modified};
use super::run::{Listening, Start, follow, wait_limit};
use crate::auth::Caller;
use crate::db::conversations::{self as store, ConversationRow, MessageRow};
use crate::db::executions::{ExecutionRequest, ExecutionRow, RunOptions};
use crate::db::sql::Page;
use crate::db::types::Json as JsonText;
use crate::db::{DbConnection, StoreError};
use crate::engine::runner::{self, LiveEvent};
use crate::error::{Failure, Kind, detail, store_error};

pub(crate) const NOT_FOUND: &str = "CONVERSATION_NOT_FOUND";
/// Messages a single conversation carries.
const EMBEDDED_MESSAGES: i64 = 100;

/// The API form of a stored conversation, with `messages` when it carries them.
fn row_to_conversation(row: &ConversationRow, messages: Option<&[MessageRow]>) -> Conversation {
    Conversation {
        id: row.id.clone(),
        agent_id: row.agent_id.clone(),
        user_id: row.user_id.clone(),
        title: row.title.clone(),
        metadata: row.metadata.0.clone(),
        message_count: row.message_count,
        messages: messages.map(|m| m.iter().map(Message::from).collect()),
        version: row.version,
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
    }
}

/// The title and metadata of `current` changed by `patch`, when `if_match` (if any) names
/// its version.
fn patched(
    current: &ConversationRow, patch: &ConversationPatch, if_match: Option<&str>,
) -> Result<(Option<String>, JsonText<serde_json::Value>), StoreError> {
    if let Some(h) = if_match
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
        Some(m) => JsonText(m.clone()),
        None => current.metadata.clone(),
    };
    Ok((title, metadata))
}

impl Handlers {
    /// The 422 of a conversation for an agent the organization does not have.
    async fn check_agent(&self, caller: &Caller, agent_id: &str) -> Result<(), Failure> {
        let (org, agent) = (caller.org_id.clone(), agent_id.to_string());
        let found = self
            .store
            .run(move |conn| crate::db::agents::get(conn, &org, &agent).map(|_| ()))
            .await;
        if let Err(StoreError::NotFound) = found {
            return Err(Failure::on_field(
                Kind::Unprocessable,
                "AGENT_NOT_FOUND",
                "agent_id",
                "not_found",
                "no agent with this id in the organization",
                &caller.request_id,
            ));
        }
        found.map_err(store_error(NOT_FOUND, &caller.request_id))
    }

    /// Asks the conversation's agent `body`: the user's message (stored with the execution's
    /// start, linked to it) and the execution answering it, listened to.
    async fn ask(
        &self, caller: &Caller, conversation: &ConversationRow, body: SendMessage, timeout: i64,
    ) -> Result<(ExecutionRow, MessageRow, Receiver<LiveEvent>), Failure> {
        let parameters = body.parameters.unwrap_or_default();
        let request = ExecutionRequest {
            input: body.message.clone().into(),
            parameters: Some(parameters.clone()),
            options: RunOptions {
                timeout: Some(timeout),
                ..RunOptions::default()
            },
            ..ExecutionRequest::default()
        };
        let user_message = MessageRow {
            id: crate::ids::new_id("msg"),
            org_id: caller.org_id.clone(),
            conversation_id: conversation.id.clone(),
            role: "user".into(),
            content: body.message,
            execution_id: None,
            input_tokens: 0,
            output_tokens: 0,
            created_at: crate::ids::now(),
        };
        let id = crate::ids::new_id("exec");
        let listening = Listening::new(self.runner.live.clone(), id.clone());
        let message = user_message.clone();
        let also: runner::AfterFinish = std::sync::Arc::new(move |conn, execution| {
            let mut m = message.clone();
            m.execution_id = Some(execution.id.clone());
            store::add_message(conn, &m)
        });
        let start = Start {
            id,
            agent_id: conversation.agent_id.clone(),
            request,
            parameters,
            conversation_id: Some(conversation.id.clone()),
            idempotency: None,
            also: Some(also),
        };
        let row = self
            .start_execution(caller, start)
            .await
            .map_err(|f| agent_gone(f, &caller.request_id))?;
        Ok((row, user_message, listening.keep()))
    }

    /// What a waited message answers: the message asked and the reply, as stored by
    /// `finished`, the execution that answered.
    async fn exchange(
        &self, caller: &Caller, finished: ExecutionRow, user_message: MessageRow,
    ) -> Result<MessageExchange, Failure> {
        let rid = caller.request_id.as_str();
        let eid = finished.id.clone();
        let (asked, reply) = self
            .store
            .run(move |conn| {
                Ok((
                    store::message_of(conn, &eid, "user")?,
                    store::message_of(conn, &eid, "assistant")?,
                ))
            })
            .await
            .map_err(store_error(NOT_FOUND, rid))?;
        let execution = Execution::from(&finished);
        let mut asked_fallback = user_message;
        asked_fallback.execution_id = Some(finished.id.clone());
        Ok(MessageExchange {
            message: Message::from(&asked.unwrap_or(asked_fallback)),
            reply: reply.as_ref().map(Message::from),
            execution,
        })
    }
}

/// A message to a conversation whose agent is gone cannot be answered: a 422, not a 404.
fn agent_gone(f: Failure, rid: &str) -> Failure {
    if f.kind != Kind::NotFound {
        return f;
    }
    Failure::with_details(
        Kind::Unprocessable,
        "AGENT_NOT_FOUND",
        "the conversation's agent no longer exists",
        vec![detail("agent_id", "not_found", "the agent was deleted")],
        rid,
    )
}

impl ConversationsApi for Handlers {
    async fn list_conversations(
        &self, caller: Caller, params: ListConversationsParams,
    ) -> Reply<ListConversationsResponse> {
        let agent = params.agent_id.clone();
        let list = move |conn: &mut DbConnection, org: &str, page: &Page| {
            store::list(conn, org, agent.as_deref(), page)
        };
        let shown = |row: &ConversationRow| Ok(row_to_conversation(row, None));
        let (data, pagination) = self
            .page_of(&caller, &params, NOT_FOUND, list, shown)
            .await?;
        let list = ConversationList { data, pagination };
        Ok(ListConversationsResponse::Ok(Json(list)))
    }

    async fn create_conversation(
        &self, caller: Caller, params: CreateConversationParams,
    ) -> Reply<CreateConversationResponse> {
        let id = crate::ids::new_id("conv");
        let keyed = idem::NewKeyed::of(&params, &caller.org_id, &id);
        let body = params.body;
        let now = crate::ids::now();
        let row = ConversationRow {
            id,
            org_id: caller.org_id.clone(),
            agent_id: body.agent_id,
            user_id: body.user_id,
            title: body.title,
            metadata: JsonText(body.metadata.unwrap_or(json!({}))),
            message_count: 0,
            version: 1,
            created_at: now.clone(),
            updated_at: now,
        };
        self.check_agent(&caller, &row.agent_id).await?;
        let org = row.org_id.clone();
        let row = idem::create_resource(
            &self.store,
            keyed,
            move |conn| store::insert(conn, &row).map(|()| row.clone()),
            move |conn, id| store::get(conn, &org, id),
            NOT_FOUND,
            &caller.request_id,
        )
        .await?;
        let conversation = row_to_conversation(&row, Some(&[]));
        Ok(CreateConversationResponse::Created(
            Json(conversation),
            format!("/v1/conversations/{}", row.id),
            etag(row.version),
        ))
    }

    async fn get_conversation(
        &self, caller: Caller, params: GetConversationParams,
    ) -> Reply<GetConversationResponse> {
        let id = params.conversation_id;
        let (row, messages) = self
            .run_for(&caller, NOT_FOUND, move |conn, org| {
                let row = store::get(conn, org, &id)?;
                let messages = store::latest(conn, &row.id, EMBEDDED_MESSAGES)?;
                Ok((row, messages))
            })
            .await?;
        let tag = etag(row.version);
        if not_modified(params.if_none_match.as_deref(), &tag) {
            return Ok(GetConversationResponse::NotModified(tag));
        }
        let conversation = row_to_conversation(&row, Some(&messages));
        Ok(GetConversationResponse::Ok(Json(conversation), tag))
    }

    async fn update_conversation(
        &self, caller: Caller, params: UpdateConversationParams,
    ) -> Reply<UpdateConversationResponse> {
        let (id, if_match, patch) = (params.conversation_id, params.if_match, params.body);
        let row = self
            .run_for(&caller, NOT_FOUND, move |conn, org| {
                store::update(conn, org, &id, |current| {
                    patched(current, &patch, if_match.as_deref())
                })
            })
            .await?;
        let conversation = row_to_conversation(&row, None);
        Ok(UpdateConversationResponse::Ok(
            Json(conversation),
            etag(row.version),
        ))
    }

    async fn delete_conversation(
        &self, caller: Caller, params: DeleteConversationParams,
    ) -> Reply<DeleteConversationResponse> {
        let id = params.conversation_id;
        self.run_for(&caller, NOT_FOUND, move |conn, org| {
            store::delete(conn, org, &id)
        })
        .await?;
        Ok(DeleteConversationResponse::NoContent)
    }

    async fn list_messages(
        &self, caller: Caller, params: ListMessagesParams,
    ) -> Reply<ListMessagesResponse> {
        let id = params.conversation_id.clone();
        let list = move |conn: &mut DbConnection, org: &str, page: &Page| {
            let row = store::get(conn, org, &id)?;
            store::messages(conn, &row.id, page)
        };
        let (data, pagination) = self
            .page_of(&caller, &params, NOT_FOUND, list, |row| {
                Ok(Message::from(row))
            })
            .await?;
        Ok(ListMessagesResponse::Ok(Json(MessageList {
            data,
            pagination,
        })))
    }

    async fn send_message(
        &self, caller: Caller, params: SendMessageParams,
    ) -> Reply<SendMessageResponse> {
        let stream = params.body.stream.unwrap_or_else(|| {
            params
                .accept
                .as_deref()
                .is_some_and(|a| a.contains("text/event-stream"))
        });
        let timeout = params.body.timeout.unwrap_or(runner::DEFAULT_TIMEOUT_MS);
        let id = params.conversation_id;
        let conversation = self
            .run_for(&caller, NOT_FOUND, move |conn, org| {
                store::get(conn, org, &id)
            })
            .await?;
        let (row, asked, heard) = self
            .ask(&caller, &conversation, params.body, timeout)
            .await?;
        if stream {
            return Ok(SendMessageResponse::OkEventStream(follow(
                self.store.clone(),
                self.runner.live.clone(),
                caller.org_id.clone(),
                row.id,
                heard,
            )));
        }
        let finished = self
            .wait_for(&caller.org_id, &row.id, heard, wait_limit(timeout))
            .await
            .map_err(store_error(NOT_FOUND, &caller.request_id))?;
        self.runner.live.release(&row.id);
        let exchange = self.exchange(&caller, finished, asked).await?;
        Ok(SendMessageResponse::Created(Json(exchange)))
    }
}
