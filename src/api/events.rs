//! The event log (`GET /v1/events`) and its live WebSocket stream (`GET /v1/stream`).

use std::time::Duration;

use agentplane_api::Json;
use agentplane_api::models::{Event, EventList, StreamClientMessage, StreamClientMessageType};
use agentplane_api::*;
use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{Message, WebSocket, WebSocketStream};
use poem_openapi::types::ParseFromJSON;
use serde_json::{Value, json};

use super::Handlers;
use super::resource::Resource;
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::events::{self as store, EventFilter, EventRow};
use crate::error::{Failure, Kind};
use crate::events::{EventBus, Tail, filter_of};
/// How often a stream polls the log when nothing in this process woke it (events committed
/// by another replica).
const STREAM_POLL: Duration = Duration::from_secs(1);
/// The subprotocol a browser names beside its `bearer.<key>` one.
pub const STREAM_PROTOCOL: &str = "agentplane.v1";

impl Resource for Event {
    type Row = EventRow;
    const NOT_FOUND: &'static str = "EVENT_NOT_FOUND";

    fn from_row(row: &EventRow) -> Result<Event, StoreError> {
        Event::parse_from_json(Some(crate::events::to_json(row)))
            .map_err(|e| StoreError::Corrupt(format!("event {}: {}", row.id, e.message())))
    }
}

/// The 426 of a WebSocket operation asked without an upgrade.
pub(crate) fn upgrade_required(request_id: &str) -> Failure {
    Failure::new(
        Kind::BadRequest,
        "UPGRADE_REQUIRED",
        "this endpoint speaks WebSocket; send an upgrade request (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13, Sec-WebSocket-Key)",
        request_id,
    )
}

/// The patterns a resource channel (AIMatrix `channels`) stands for.
fn channel_pattern(channel: &str) -> Option<&'static str> {
    Some(match channel {
        "agents" => "agent.*",
        "knowledge" => "knowledge.*",
        "executions" => "execution.*",
        "simulations" | "twins" => "simulation.*",
        "evaluations" => "evaluation.*",
        "webhooks" => "webhook.*",
        _ => return None,
    })
}

/// One socket: the client's subscription, and the tail feeding it.
struct Session {
    tail: Tail,
    patterns: Vec<String>,
}

impl Session {
    fn subscribe(&mut self, patterns: Vec<String>) {
        self.tail.set_filter(filter_of(&patterns, None));
        self.patterns = patterns;
    }

    /// The answer to one text frame from the client.
    fn handle(&mut self, text: &str) -> Value {
        let parsed = serde_json::from_str::<Value>(text)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                StreamClientMessage::parse_from_json(Some(v)).map_err(|e| e.into_message())
            });
        let message = match parsed {
            Ok(m) => m,
            Err(e) => {
                return json!({"type": "error", "message": format!("not a StreamClientMessage: {e}")});
            }
        };
        match message.type_ {
            StreamClientMessageType::Ping => json!({"type": "pong"}),
            StreamClientMessageType::Subscribe => {
                let mut patterns: Vec<String> = message
                    .events
                    .unwrap_or_default()
                    .iter()
                    .map(|p| p.as_str().to_string())
                    .collect();
                for c in message.channels.unwrap_or_default() {
                    if let Some(p) = channel_pattern(c.as_str()) {
                        patterns.push(p.to_string());
                    }
                }
                patterns.sort();
                patterns.dedup();
                self.subscribe(patterns);
                json!({"type": "subscribed", "events": self.patterns})
            }
            StreamClientMessageType::Unsubscribe => {
                self.subscribe(Vec::new());
                json!({"type": "subscribed", "events": self.patterns})
            }
        }
    }
}

/// Serves one socket until the client leaves or the connection breaks.
async fn serve_socket(socket: WebSocketStream, mut session: Session, bus: EventBus) {
    let (mut sink, mut incoming) = socket.split();
    let mut wake = bus.subscribe();
    if !session.patterns.is_empty() {
        let hello = json!({"type": "subscribed", "events": session.patterns});
        if sink.send(Message::Text(hello.to_string())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let answer = session.handle(&text);
                    if sink.send(Message::Text(answer.to_string())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Ping(data))) => {
                    if sink.send(Message::Pong(data)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = wake.changed() => {}
            _ = tokio::time::sleep(STREAM_POLL) => {}
        }
        match session.tail.poll().await {
            Ok(rows) => {
                for row in rows {
                    let text = crate::events::to_json(&row).to_string();
                    if sink.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the event log for a stream"),
        }
    }
}

impl EventsApi for Handlers {
    async fn list_events(
        &self, caller: Caller, params: ListEventsParams,
    ) -> Reply<ListEventsResponse> {
        let subject_id = params.subject_id.clone();
        let filter = match params.type_ {
            Some(p) => filter_of(&[p.as_str().to_string()], subject_id),
            None => Some(EventFilter {
                types: None,
                subject_id,
            }),
        }
        .unwrap_or_default();
        let (data, pagination) = self
            .list_page::<Event>(&caller, &params, move |conn, org, page| {
                store::list(conn, org, &filter, page)
            })
            .await?;
        Ok(ListEventsResponse::Ok(Json(EventList { data, pagination })))
    }

    async fn get_event(&self, caller: Caller, params: GetEventParams) -> Reply<GetEventResponse> {
        let event = self.item::<Event>(&caller, params.event_id).await?;
        Ok(GetEventResponse::Ok(Json(event)))
    }

    async fn stream_events(
        &self, caller: Caller, params: StreamEventsParams, upgrade: Option<WebSocket>,
    ) -> Reply<Upgraded<StreamEventsResponse>> {
        let Some(ws) = upgrade else {
            // Not through `?`: the 426 names the protocol to upgrade to.
            let f = upgrade_required(&caller.request_id);
            return Ok(Upgraded::Answer(StreamEventsResponse::UpgradeRequired(
                Json(*f.envelope),
                Some("websocket".to_string()),
            )));
        };
        let patterns: Vec<String> = params
            .events
            .unwrap_or_default()
            .iter()
            .map(|p| p.as_str().to_string())
            .collect();
        let mut session = Session {
            tail: Tail::new(self.store.clone(), caller.org_id.clone(), None),
            patterns: Vec::new(),
        };
        session.subscribe(patterns);
        let bus = self.events.clone();
        Ok(Upgraded::Switching(
            ws.protocols([STREAM_PROTOCOL])
                .on_upgrade(move |socket| serve_socket(socket, session, bus))
                .boxed(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_resource_wildcards() {
        assert_eq!(channel_pattern("agents"), Some("agent.*"));
        assert_eq!(channel_pattern("twins"), Some("simulation.*"));
        assert_eq!(channel_pattern("nothing"), None);
    }
}
