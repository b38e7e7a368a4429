//! What the broken-server test suites share: answering JSON, and serving an endpoint on
//! 127.0.0.1 with a port from the OS.

use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Endpoint, Response, Server};
use serde_json::{Value, json};
use std::time::Duration;

pub fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .content_type("application/json")
        .body(body.to_string())
}

/// The error body every test spec documents: `{"message": …}`.
pub fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({"message": message}))
}

/// Serves `app` in the background; its base URL.
#[allow(dead_code)] // not every suite serves forever
pub async fn serve(app: impl Endpoint + 'static) -> String {
    serve_until(app, std::future::pending()).await
}

/// Serves `app` in the background until `exit` completes; then the listener closes and open
/// connections drop at once, as a dead process's do. Its base URL.
pub async fn serve_until(
    app: impl Endpoint + 'static, exit: impl Future<Output = ()> + Send + 'static,
) -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .expect("a socket address");
    let server = Server::new_with_acceptor(acceptor);
    tokio::spawn(server.run_with_graceful_shutdown(app, exit, Some(Duration::ZERO)));
    format!("http://{addr}")
}

/// What a test server reads of a request.
pub struct Incoming {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: poem::http::HeaderMap,
    pub body: Vec<u8>,
}

pub async fn incoming(mut req: poem::Request) -> Incoming {
    Incoming {
        method: req.method().as_str().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        headers: req.headers().clone(),
        body: req.take_body().into_vec().await.unwrap_or_default(),
    }
}

// Each suite compiles this module on its own, and not every suite validates.
#[allow(dead_code)]
impl Incoming {
    /// A request header's value, when it is text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// What `validator` makes of the request.
    pub fn validate<'v>(
        &self, validator: &'v conformance::RequestValidator,
    ) -> conformance::Outcome<'v> {
        let header = |name: &str| self.header(name);
        validator.validate(&conformance::validate::Request {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            header: &header,
            body: &self.body,
        })
    }
}
