//! The benchmark peer: a bare poem handler answering `GET /v1/agents/:id` with fixed JSON
//! bytes (read from the file given as the second argument), no validation, auth or storage.
//!
//! `cargo run --release --example bare_poem -- 127.0.0.1:18300 agent.json`

use poem::listener::TcpListener;
use poem::{EndpointExt, Response, Route, Server, get, handler, web::Data};

#[handler]
fn agent(body: Data<&bytes::Bytes>) -> Response {
    Response::builder()
        .content_type("application/json; charset=utf-8")
        .body(body.0.clone())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18300".into());
    let body = match args.next() {
        Some(path) => std::fs::read(path)?,
        None => br#"{"id":"agent_x"}"#.to_vec(),
    };
    let app = Route::new()
        .at("/v1/agents/:id", get(agent))
        .data(bytes::Bytes::from(body));
    Server::new(TcpListener::bind(addr)).run(app).await
}
