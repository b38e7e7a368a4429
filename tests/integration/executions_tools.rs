//! Agents that act: tool calls in executions (api, rag and function tools, with the local
//! model and with an OpenAI-compatible model that calls tools, streamed and not), pauses for
//! client-side tools and their outputs, expiry, `max_steps`, and CodexOS flows run node by
//! node. Against loopback servers the tests start.

use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::{Json as PJson, Query};
use poem::{EndpointExt, Request, Response, Route, get, handler, post};
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::executions::{events, manuals};
use crate::support::{TestApp, fields, json};

/// Starts `app` on a loopback port; its base URL.
async fn serve(app: Route) -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .expect("addr");
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    format!("http://{addr}")
}

/// A weather service: `GET /weather?city=…` with the secret header `X-Key: s3cret`.
#[handler]
fn weather(req: &Request, Query(q): Query<std::collections::BTreeMap<String, String>>) -> Response {
    if req.headers().get("x-key").and_then(|v| v.to_str().ok()) != Some("s3cret") {
        return Response::builder()
            .status(poem::http::StatusCode::UNAUTHORIZED)
            .body("no key");
    }
    let city = q.get("city").cloned().unwrap_or_default();
    Response::builder()
        .content_type("application/json")
        .body(json!({"city": city, "temperature_c": 18}).to_string())
}

/// A chat-completions server whose model calls tools. `tooler` calls the first function it
/// is offered with `{"city": "Oslo"}`, then answers `Weather: <result>`; `looper` calls it on
/// every turn; `sloppy` first calls a function that does not exist and the first one with
/// arguments that are not JSON, then answers `Recovered: <results>`; `sleepy` takes five
/// seconds to answer. Every turn reports 10 tokens in and 5 out.
#[handler]
async fn completions(PJson(body): PJson<Value>) -> Response {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let results: Vec<String> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect();
    let function = body["tools"][0]["function"]["name"]
        .as_str()
        .unwrap_or("none")
        .to_string();
    let model = body["model"].as_str().unwrap_or("");
    if model == "sleepy" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let calls = match (model, results.is_empty()) {
        ("looper", _) | ("tooler", true) => {
            vec![(crate_id("a"), function, r#"{"city": "Oslo"}"#.to_string())]
        }
        ("sloppy", true) => vec![
            (crate_id("b"), "no_such_tool".into(), "{}".into()),
            (crate_id("c"), function, "{not json".into()),
        ],
        _ => Vec::new(),
    };
    let text = match model {
        "sloppy" => format!("Recovered: {}", results.join(" | ")),
        _ => format!("Weather: {}", results.join(" | ")),
    };
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 5});
    if body["stream"] == true {
        let mut sse = String::new();
        let mut push = |v: Value| sse.push_str(&format!("data: {v}\n\n"));
        if calls.is_empty() {
            for piece in text.split_inclusive(' ') {
                push(json!({"choices": [{"delta": {"content": piece}}]}));
            }
        }
        for (i, (id, name, args)) in calls.iter().enumerate() {
            push(json!({"choices": [{"delta": {"tool_calls": [
                {"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}
            ]}}]}));
            let (a, b) = args.split_at(args.len() / 2);
            for part in [a, b] {
                push(json!({"choices": [{"delta": {"tool_calls": [
                    {"index": i, "function": {"arguments": part}}
                ]}}]}));
            }
        }
        push(json!({"choices": [], "usage": usage}));
        sse.push_str("data: [DONE]\n\n");
        return Response::builder()
            .content_type("text/event-stream")
            .body(sse);
    }
    let message = if calls.is_empty() {
        json!({"role": "assistant", "content": text})
    } else {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function",
                       "function": {"name": name, "arguments": args}})
            })
            .collect();
        json!({"role": "assistant", "content": null, "tool_calls": calls})
    };
    Response::builder()
        .content_type("application/json")
        .body(json!({"choices": [{"message": message}], "usage": usage}).to_string())
}

fn crate_id(tag: &str) -> String {
    format!("call_{tag}{}", rand_suffix())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The weather service and the tool-calling model server; their base URL.
async fn servers() -> String {
    serve(
        Route::new()
            .at("/weather", get(weather))
            .at("/v1/chat/completions", post(completions).boxed()),
    )
    .await
}

async fn created(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, v) = json(app.send_json(Method::POST, path, &body).await).await;
    assert_eq!(status, 201, "{path} {body}: {v}");
    v
}

/// An `api` weather tool on `base`.
async fn weather_tool(app: &TestApp, base: &str) -> String {
    let tool = created(
        app,
        "/v1/tools",
        json!({"type": "api", "name": "weather", "description": "Current weather for a city",
               "url": format!("{base}/weather"), "secret_headers": {"X-Key": "s3cret"},
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                              "required": ["city"]}}),
    )
    .await;
    assert_eq!(
        tool["parameters"]["properties"]["city"]["type"], "string",
        "{tool}"
    );
    tool["id"].as_str().expect("id").to_string()
}

/// A registered model of the tool-calling server named `name`.
async fn remote_model(app: &TestApp, base: &str, name: &str) -> String {
    let m = created(
        app,
        "/v1/models",
        json!({"name": name, "provider": "openai-compatible", "model_id": name,
               "endpoint": format!("{base}/v1"), "api_key": "sk-test",
               "pricing": {"input_per_1k": 1.0, "output_per_1k": 2.0}}),
    )
    .await;
    m["id"].as_str().expect("id").to_string()
}

/// Executes `agent` with `body` (which waits): 200 with an execution in `status`.
async fn waited(app: &TestApp, agent: &str, body: Value, status: &str) -> Value {
    let path = format!("/v1/agents/{agent}/execute");
    let (code, e) = json(app.send_json(Method::POST, &path, &body).await).await;
    assert_eq!((code, e["status"].as_str()), (200, Some(status)), "{e}");
    e
}

/// Polls an execution until `done` says so.
async fn until(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let (status, e) = json(app.get(&format!("/v1/executions/{id}")).await).await;
        assert_eq!(status, 200, "{e}");
        if done(&e) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("execution {id} never got there");
}

fn settled(e: &Value) -> bool {
    !matches!(e["status"].as_str(), Some("queued" | "running"))
}

async fn streamed(app: &TestApp, path: &str, body: Option<&Value>) -> Vec<(String, Value)> {
    let req = match body {
        Some(b) => app.req(Method::POST, path).json(b),
        None => app.req(Method::GET, path),
    };
    let resp = req
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    events(&resp.bytes().await.expect("body"))
}

fn names(e: &Value) -> Vec<String> {
    e["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["name"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or("")
            )
        })
        .collect()
}

backend_test!(an_api_tool_is_called_and_answers, |app| {
    let base = servers().await;
    let tool = weather_tool(&app, &base).await;

    // The local model calls a tool whose words the input uses, then answers from its result.
    let agent = app
        .create_agent(json!({"name": "Weather", "tools": [tool]}))
        .await;
    let agent = agent["id"].as_str().expect("id").to_string();
    let e = waited(
        &app,
        &agent,
        json!({"input": "What is the weather in Oslo?", "options": {"wait": true}}),
        "succeeded",
    )
    .await;
    let answer = e["result"]["output"].as_str().expect("output");
    assert!(answer.starts_with("Based on weather:"), "{answer}");
    assert!(answer.contains("\"temperature_c\":18"), "{answer}");
    assert_eq!(
        names(&e),
        [
            "model_call:succeeded",
            "tool_call:succeeded",
            "model_call:succeeded"
        ]
    );
    let call = &e["steps"][1]["detail"];
    assert_eq!(call["tool_id"], tool.as_str());
    assert_eq!(call["name"], "weather");
    assert_eq!(call["arguments"]["city"], "What is the weather in Oslo?");
    assert!(
        call["result"].as_str().is_some_and(|r| r.contains("18")),
        "{call}"
    );

    // Streamed: the call is announced as it starts and ends, then the answer's tokens.
    let path = format!("/v1/agents/{agent}/execute");
    let evs = streamed(
        &app,
        &path,
        Some(&json!({"input": "weather in Oslo please"})),
    )
    .await;
    let kinds: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    let at = |k: &str| kinds.iter().position(|n| *n == k).unwrap_or(usize::MAX);
    assert!(
        at("tool_call.started") < at("tool_call.completed"),
        "{kinds:?}"
    );
    assert!(at("tool_call.completed") < at("token"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"execution.completed"), "{kinds:?}");
    let (_, completed) = &evs[at("tool_call.completed")];
    assert_eq!(completed["step"]["name"], "tool_call");
    assert_eq!(completed["step"]["detail"]["tool_id"], tool.as_str());

    // An OpenAI-compatible model that calls tools, not streamed and streamed: the arguments
    // it wrote reach the endpoint, the result goes back, usage adds up over both turns.
    let model = remote_model(&app, &base, "tooler").await;
    let remote = app
        .create_agent(json!({"name": "Remote weather", "model_id": model, "tools": [tool]}))
        .await;
    let remote = remote["id"].as_str().expect("id").to_string();
    let e = waited(
        &app,
        &remote,
        json!({"input": "weather?", "options": {"wait": true, "stream": false}}),
        "succeeded",
    )
    .await;
    assert_eq!(
        e["result"]["output"],
        r#"Weather: {"city":"Oslo","temperature_c":18}"#
    );
    assert_eq!(e["usage"]["input_tokens"], 20);
    assert_eq!(e["usage"]["output_tokens"], 10);
    let path = format!("/v1/agents/{remote}/execute");
    let evs = streamed(&app, &path, Some(&json!({"input": "weather?"}))).await;
    let (last, done) = evs.last().expect("events");
    assert_eq!(last, "execution.completed");
    assert_eq!(
        done["execution"]["result"]["output"],
        r#"Weather: {"city":"Oslo","temperature_c":18}"#
    );
    assert!(evs.iter().any(|(n, _)| n == "tool_call.completed"));

    // Malformed arguments and an unknown function are told to the model, never a 5xx.
    let sloppy = remote_model(&app, &base, "sloppy").await;
    let agent = app
        .create_agent(json!({"name": "Sloppy", "model_id": sloppy, "tools": [tool]}))
        .await;
    let e = waited(
        &app,
        agent["id"].as_str().expect("id"),
        json!({"input": "x", "options": {"wait": true}}),
        "succeeded",
    )
    .await;
    assert_eq!(
        names(&e),
        [
            "model_call:succeeded",
            "tool_call:failed",
            "tool_call:failed",
            "model_call:succeeded"
        ]
    );
    let output = e["result"]["output"].as_str().expect("output");
    assert!(
        output.contains("no function named `no_such_tool`"),
        "{output}"
    );
    assert!(output.contains("not valid JSON"), "{output}");

    // A model that never stops calling tools fails at max_steps.
    let looper = remote_model(&app, &base, "looper").await;
    let agent = app
        .create_agent(
            json!({"name": "Looper", "model_id": looper, "tools": [tool],
                             "configuration": {"max_steps": 2}}),
        )
        .await;
    let body = json!({"input": "x", "options": {"wait": true}});
    let e = waited(&app, agent["id"].as_str().expect("id"), body, "failed").await;
    assert_eq!(e["error"]["code"], "MAX_STEPS_EXCEEDED");
    assert_eq!(e["usage"]["input_tokens"], 20, "both turns are billed");
});

backend_test!(a_rag_tool_searches_its_knowledge_base, |app| {
    let kb = manuals(&app).await;
    let tool = created(
        &app,
        "/v1/tools",
        json!({"type": "rag", "name": "manuals", "description": "Search the router manuals",
               "knowledge_base_ids": [kb]}),
    )
    .await;
    assert_eq!(tool["parameters"]["required"], json!(["query"]), "{tool}");
    let agent = app
        .create_agent(json!({"name": "Support", "tools": [tool["id"]]}))
        .await;
    let body = json!({"input": "How long is the router warranty?", "options": {"wait": true}});
    let e = waited(&app, agent["id"].as_str().expect("id"), body, "succeeded").await;
    let answer = e["result"]["output"].as_str().expect("output");
    assert!(
        answer.contains("Based on manuals: [1] The router warranty lasts two years."),
        "{answer}"
    );
});

/// A `function` tool the caller runs, and an agent with it.
async fn order_agent(app: &TestApp) -> String {
    let tool = created(
        app,
        "/v1/tools",
        json!({"type": "function", "name": "lookup_order", "description": "Look up an order",
               "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}}),
    )
    .await;
    assert_eq!(tool["type"], "function");
    let agent = app
        .create_agent(json!({"name": "Orders", "tools": [tool["id"]]}))
        .await;
    agent["id"].as_str().expect("id").to_string()
}

backend_test!(function_tools_pause_until_their_outputs_are_posted, |app| {
    let agent = order_agent(&app).await;
    let ask = json!({"input": "Where is my order 42?", "options": {"wait": true}});
    let paused = waited(&app, &agent, ask, "requires_action").await;
    let calls = paused["required_action"]["tool_calls"]
        .as_array()
        .expect("calls");
    assert_eq!(paused["required_action"]["type"], "submit_tool_outputs");
    assert_eq!(calls.len(), 1, "{paused}");
    assert_eq!(calls[0]["name"], "lookup_order");
    assert_eq!(calls[0]["arguments"]["order_id"], "Where is my order 42?");
    let call_id = calls[0]["id"].as_str().expect("call id").to_string();
    let id = paused["id"].as_str().expect("id").to_string();
    let outputs = format!("/v1/executions/{id}/tool-outputs");

    // A call id that is not pending: 422 naming it; nothing changes.
    let (status, err) = json(
        app.send_json(
            Method::POST,
            &outputs,
            &json!({"tool_outputs": [{"tool_call_id": call_id, "output": "x"},
                                     {"tool_call_id": "call_nope", "output": "y"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(fields(&err), ["tool_outputs[1].tool_call_id"]);
    let (status, err) = json(
        app.send_json(
            Method::POST,
            &outputs,
            &json!({"tool_outputs": [{"tool_call_id": "call_nope", "output": "y"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(fields(&err), ["tool_outputs[0].tool_call_id"]);

    // The outputs resume it: 202, queued again; it answers from the output.
    let (status, resumed) = json(
        app.send_json(
            Method::POST,
            &outputs,
            &json!({"tool_outputs": [{"tool_call_id": call_id, "output": "{\"status\": \"shipped\"}"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{resumed}");
    assert!(resumed["required_action"].is_null(), "{resumed}");
    let done = until(&app, &id, settled).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["output"],
        r#"Based on lookup_order: {"status": "shipped"}"#
    );
    assert_eq!(
        names(&done),
        [
            "model_call:succeeded",
            "tool_call:succeeded",
            "model_call:succeeded"
        ]
    );

    // Not waiting any more: 409.
    let (status, err) = json(
        app.send_json(
            Method::POST,
            &outputs,
            &json!({"tool_outputs": [{"tool_call_id": call_id, "output": "again"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "EXECUTION_NOT_WAITING");

    // Streamed: `execution.requires_action` ends the stream; following the execution again
    // after the outputs are posted streams the rest.
    let path = format!("/v1/agents/{agent}/execute");
    let evs = streamed(&app, &path, Some(&json!({"input": "Where is my order 7?"}))).await;
    let (last, data) = evs.last().expect("events");
    assert_eq!(last, "execution.requires_action", "{evs:?}");
    assert!(evs.iter().any(|(n, _)| n == "tool_call.started"));
    let id = data["execution"]["id"].as_str().expect("id").to_string();
    let call_id = data["execution"]["required_action"]["tool_calls"][0]["id"]
        .as_str()
        .expect("call id")
        .to_string();
    let (status, _) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/executions/{id}/tool-outputs"),
            &json!({"tool_outputs": [{"tool_call_id": call_id, "output": "delivered"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202);
    let evs = streamed(&app, &format!("/v1/executions/{id}/events"), None).await;
    let (last, data) = evs.last().expect("events");
    assert_eq!(last, "execution.completed", "{evs:?}");
    assert_eq!(
        data["execution"]["result"]["output"],
        "Based on lookup_order: delivered"
    );

    // A conversation's message pauses the same way.
    let conv = created(&app, "/v1/conversations", json!({"agent_id": agent})).await;
    let (status, exchange) = json(
        app.send_json(
            Method::POST,
            &format!(
                "/v1/conversations/{}/messages",
                conv["id"].as_str().expect("id")
            ),
            &json!({"message": "Is order 9 late?"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{exchange}");
    assert_eq!(exchange["execution"]["status"], "requires_action");
    assert!(exchange["reply"].is_null(), "{exchange}");
});

backend_test!(a_pause_past_the_timeout_expires, |app| {
    let agent = order_agent(&app).await;
    let body = json!({"input": "Where is my order 42?", "options": {"wait": true, "timeout": 300}});
    let paused = waited(&app, &agent, body, "requires_action").await;
    let id = paused["id"].as_str().expect("id").to_string();
    let expired = until(&app, &id, |e| e["status"] != "requires_action").await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(expired["error"]["code"], "EXPIRED");
    let call_id = paused["required_action"]["tool_calls"][0]["id"].clone();
    let (status, _) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/executions/{id}/tool-outputs"),
            &json!({"tool_outputs": [{"tool_call_id": call_id, "output": "late"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 409);
});

backend_test!(a_branching_flow_runs_node_by_node, |app| {
    let llm =
        |id: &str, prompt: &str| json!({"id": id, "type": "llm", "config": {"prompt": prompt}});
    let flow = json!({
        "nodes": [
            llm("classify", "Classify this request: {{input}}"),
            {"id": "route", "type": "condition",
             "config": {"expression": {"in": ["refund", {"var": "nodes.classify.output"}]}}},
            llm("refund", "Write a refund reply to: {{input}}"),
            llm("general", "Answer: {{input}}"),
            {"id": "out", "type": "output"}
        ],
        "edges": [
            {"source": "entry", "target": "classify"},
            {"source": "classify", "target": "route"},
            {"source": "route", "target": "refund", "branch": "true"},
            {"source": "route", "target": "general", "branch": "false"},
            {"source": "refund", "target": "out"},
            {"source": "general", "target": "out"}
        ]
    });
    let agent = app
        .create_agent(json!({"name": "Triage", "flow": flow}))
        .await;
    let agent = agent["id"].as_str().expect("id").to_string();
    let e = waited(
        &app,
        &agent,
        json!({"input": "I want a refund for my order", "options": {"wait": true}}),
        "succeeded",
    )
    .await;
    let nodes: Vec<&str> = e["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            assert_eq!(s["name"], "node");
            s["node_id"].as_str().expect("node_id")
        })
        .collect();
    assert_eq!(nodes, ["classify", "route", "refund", "out"]);
    assert_eq!(e["steps"][1]["detail"]["output"], true);
    let answer = e["result"]["output"].as_str().expect("output");
    assert!(answer.contains("Write a refund reply to"), "{answer}");
    assert!(e["usage"]["input_tokens"].as_i64() > Some(0), "{e}");

    // Streamed, each node is announced as it starts and ends.
    let path = format!("/v1/agents/{agent}/execute");
    let evs = streamed(
        &app,
        &path,
        Some(&json!({"input": "What are your opening hours?"})),
    )
    .await;
    let seen: Vec<String> = evs
        .iter()
        .filter(|(n, _)| n.starts_with("node."))
        .map(|(n, d)| format!("{n} {}", d["step"]["node_id"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        seen,
        [
            "node.started classify",
            "node.completed classify",
            "node.started route",
            "node.completed route",
            "node.started general",
            "node.completed general",
            "node.started out",
            "node.completed out"
        ]
    );
    let (last, data) = evs.last().expect("events");
    assert_eq!(last, "execution.completed");
    let steps: Vec<&str> = data["execution"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["node_id"].as_str())
        .collect();
    assert_eq!(steps, ["classify", "route", "general", "out"]);

    // More nodes than max_steps: the run stops there.
    let agent = app
        .create_agent(json!({"name": "Short", "flow": flow, "configuration": {"max_steps": 2}}))
        .await;
    let body = json!({"input": "refund", "options": {"wait": true}});
    let e = waited(&app, agent["id"].as_str().expect("id"), body, "failed").await;
    assert_eq!(e["error"]["code"], "MAX_STEPS_EXCEEDED");
    assert_eq!(e["steps"].as_array().map(Vec::len), Some(2));

    // The seed's own flow (CodexOS `entry` → `llm1`, a model named by name) runs offline.
    let seed = json!({"nodes": [{"id": "llm1", "type": "llm",
                                 "config": {"model": "gpt-4", "prompt": "Review this code..."}}],
                      "edges": [{"source": "entry", "target": "llm1"}]});
    let agent = app
        .create_agent(json!({"name": "Code Review Assistant", "flow": seed}))
        .await;
    let body = json!({"input": {"code": "fn main() {}"}, "options": {"wait": true}});
    let e = waited(&app, agent["id"].as_str().expect("id"), body, "succeeded").await;
    assert_eq!(e["steps"][0]["node_id"], "llm1", "{e}");
    assert!(
        e["result"]["output"]
            .as_str()
            .is_some_and(|o| o.contains("Review this code...")),
        "{e}"
    );

    // Cancelled mid-flow, on a slow model: it stops and stays cancelled.
    let base = servers().await;
    let sleepy = remote_model(&app, &base, "sleepy").await;
    let slow = json!({"nodes": [{"id": "think", "type": "llm",
                                 "config": {"model": sleepy, "prompt": "{{input}}"}}],
                      "edges": [{"source": "entry", "target": "think"}]});
    let agent = app
        .create_agent(json!({"name": "Slow", "flow": slow}))
        .await;
    let path = format!("/v1/agents/{}/execute", agent["id"].as_str().expect("id"));
    let (status, e) = json(
        app.send_json(Method::POST, &path, &json!({"input": "x"}))
            .await,
    )
    .await;
    assert_eq!(status, 202, "{e}");
    let id = e["id"].as_str().expect("id").to_string();
    until(&app, &id, |e| e["status"] == "running").await;
    let (status, c) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/executions/{id}/cancel"),
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, c["status"].as_str()),
        (200, Some("cancelled")),
        "{c}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, after) = json(app.get(&format!("/v1/executions/{id}")).await).await;
    assert_eq!(after["status"], "cancelled");
});
