//! `GET /v1/stream`: the organization's events over a WebSocket.

use std::time::Duration;

use agentplane_api::models::{Role, Scope};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::backend_test;
use crate::support::{TestApp, json};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(app: &TestApp, query: &str) -> String {
    format!(
        "{}/v1/stream{query}",
        app.base.replacen("http://", "ws://", 1)
    )
}

/// The next JSON text frame, within five seconds.
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("JSON");
        }
    }
}

backend_test!(
    the_stream_carries_subscribed_events_of_the_organization_only,
    |app| {
        // A plain request is told to upgrade; no credentials is 401, a key without read:events 403.
        let (status, err) = json(app.get("/v1/stream").await).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (426, Some("UPGRADE_REQUIRED"))
        );
        let resp = app
            .client
            .get(app.url("/v1/stream"))
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 401);
        let narrow = app
            .key_for("narrow-org", "nat", Role::Admin, Some(&[Scope::ReadAgents]))
            .await;
        let resp = app
            .as_key(&narrow, Method::GET, "/v1/stream")
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 403);
        let denied = tokio_tungstenite::connect_async(ws_url(&app, "?access_token=ap_wrong")).await;
        assert!(denied.is_err(), "a wrong key cannot open the stream");

        // A browser-style connection: the key as access_token, AIMatrix channels.
        let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(
            &app,
            &format!("?access_token={}", app.admin_key),
        ))
        .await
        .expect("the stream opens");
        socket
            .send(Message::Text(
                json!({"type": "subscribe", "channels": ["agents"]})
                    .to_string()
                    .into(),
            ))
            .await
            .expect("send");
        let ack = next_json(&mut socket).await;
        assert_eq!(ack, json!({"type": "subscribed", "events": ["agent.*"]}));
        socket
            .send(Message::Text(json!({"type": "ping"}).to_string().into()))
            .await
            .expect("send");
        assert_eq!(next_json(&mut socket).await, json!({"type": "pong"}));
        socket
            .send(Message::Text("{\"type\": \"dance\"}".into()))
            .await
            .expect("send");
        assert_eq!(next_json(&mut socket).await["type"], "error");

        // Another organization's agent never shows up; ours does, as the webhook payload.
        let other = app.key_for("other-org", "eve", Role::Admin, None).await;
        let resp = app
            .as_key(&other, Method::POST, "/v1/agents")
            .json(&json!({"name": "Theirs"}))
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 201);
        let ours = app.create_agent(json!({"name": "Streamed"})).await;
        let event = next_json(&mut socket).await;
        assert_eq!(event["type"], "agent.created");
        assert_eq!(event["event"], "agent.created");
        assert_eq!(event["subject_id"], ours["id"]);
        assert_eq!(event["data"]["name"], "Streamed");
        let (status, logged) = json(
            app.get(&format!("/v1/events/{}", event["id"].as_str().expect("id")))
                .await,
        )
        .await;
        assert_eq!((status, &logged), (200, &event));

        // The subprotocol form, with the patterns in the query.
        let mut request = ws_url(&app, "?events=agent.deleted")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            format!("agentplane.v1, bearer.{}", app.admin_key)
                .parse()
                .expect("header"),
        );
        let (mut second, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the stream opens with a subprotocol key");
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "agentplane.v1"
        );
        assert_eq!(next_json(&mut second).await["type"], "subscribed");
        let path = format!("/v1/agents/{}", ours["id"].as_str().expect("id"));
        assert_eq!(
            app.req(Method::DELETE, &path)
                .send()
                .await
                .expect("req")
                .status(),
            204
        );
        let deleted = next_json(&mut second).await;
        assert_eq!(deleted["type"], "agent.deleted");
        assert_eq!(next_json(&mut socket).await["type"], "agent.deleted");
    }
);

backend_test!(an_execution_streams_over_its_websocket_then_closes, |app| {
    let agent = app.create_agent(json!({"name": "Streamed"})).await;
    let agent = agent["id"].as_str().expect("id");
    let (status, done) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/agents/{agent}/execute"),
            &json!({"input": "hello there", "options": {"wait": true}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{done}");
    let id = done["id"].as_str().expect("id");
    let path = format!("/v1/executions/{id}/stream");

    // Without an upgrade 426; an unknown execution 404 before any upgrade.
    let (status, err) = json(app.get(&path).await).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (426, Some("UPGRADE_REQUIRED"))
    );
    let (status, _) = json(app.get("/v1/executions/exec_nope/stream").await).await;
    assert_eq!(status, 404);

    // The finished execution's events, as text frames, then a close.
    let url = format!(
        "{}{path}?access_token={}",
        app.base.replacen("http://", "ws://", 1),
        app.admin_key
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    let mut types = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame within 5 s");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let e: Value = serde_json::from_str(text.as_str()).expect("JSON");
                assert_eq!(e["execution_id"], id);
                types.push(e["type"].as_str().unwrap_or_default().to_string());
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error: {e}"),
        }
    }
    assert_eq!(
        types.first().map(String::as_str),
        Some("execution.started"),
        "{types:?}"
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("execution.completed"),
        "{types:?}"
    );

    // Another organization cannot follow it.
    let other = app.key_for("other-org", "olga", Role::Admin, None).await;
    let resp = app
        .as_key(&other, Method::GET, &path)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 404);
});
