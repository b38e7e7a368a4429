//! The benchmark peer: a bare poem handler answering `GET /v1/agents/:id` with fixed JSON
//! bytes (read from the file given as the second argument) and `GET /v1/agents` with those of
//! the third (a list page, when given), no validation, auth or storage.
//!
//! `cargo run --release --example bare_poem -- 127.0.0.1:18300 agent.json list.json`

use poem::listener::TcpListener;
use poem::{EndpointExt, Response, Route, Server, get, handler, web::Data};

/// The bytes of one agent and of a list page.
#[derive(Clone)]
struct Bodies {
    agent: bytes::Bytes,
    list: bytes::Bytes,
}

fn json(body: &bytes::Bytes) -> Response {
    Response::builder()
        .content_type("application/json; charset=utf-8")
        .body(body.clone())
}

#[handler]
fn agent(bodies: Data<&Bodies>) -> Response {
    json(&bodies.agent)
}

#[handler]
fn list(bodies: Data<&Bodies>) -> Response {
    json(&bodies.list)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18300".into());
    let agent_bytes = match args.next() {
        Some(path) => std::fs::read(path)?,
        None => br#"{"id":"agent_x"}"#.to_vec(),
    };
    let list_bytes = match args.next() {
        Some(path) => std::fs::read(path)?,
        None => br#"{"data":[],"pagination":{}}"#.to_vec(),
    };
    let bodies = Bodies {
        agent: agent_bytes.into(),
        list: list_bytes.into(),
    };
    let app = Route::new()
        .at("/v1/agents", get(list))
        .at("/v1/agents/:id", get(agent))
        .data(bodies);
    Server::new(TcpListener::bind(addr)).run(app).await
}
