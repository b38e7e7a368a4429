//! The loop against a chat-completions server on loopback that answers from a script, and
//! with the local model.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::{Data, Json};
use poem::{EndpointExt, Response, Route, handler, post};
use serde_json::{Value, json};
use tokio::sync::{Barrier, mpsc};

use super::*;
use crate::egress::{Egress, Policy};

/// What the scripted server answers to one request.
#[derive(Debug, Clone)]
enum Reply {
    Json(Value),
    /// Each value an SSE event, then `[DONE]`.
    Sse(Vec<Value>),
    Status(u16, String),
}

#[derive(Default)]
struct Script {
    /// Answered in order; the last one again once they run out.
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Value>>,
}

#[handler]
async fn completions(Data(script): Data<&Arc<Script>>, Json(body): Json<Value>) -> Response {
    script.seen.lock().expect("seen").push(body);
    let reply = {
        let mut replies = script.replies.lock().expect("replies");
        match replies.len() {
            0 => Reply::Status(500, "the script is empty".into()),
            1 => replies[0].clone(),
            _ => replies.pop_front().expect("a reply"),
        }
    };
    match reply {
        Reply::Json(v) => Response::builder()
            .content_type("application/json")
            .body(v.to_string()),
        Reply::Sse(events) => {
            let mut body = String::from(": keep-alive\n\n");
            for e in events {
                body.push_str(&format!("data: {e}\n\n"));
            }
            body.push_str("data: [DONE]\n\n");
            Response::builder()
                .content_type("text/event-stream")
                .body(body)
        }
        Reply::Status(status, message) => Response::builder()
            .status(poem::http::StatusCode::from_u16(status).expect("a status"))
            .content_type("application/json")
            .body(json!({"error": {"message": message}}).to_string()),
    }
}

/// A scripted chat-completions server on loopback: its base URL and what it was sent.
async fn chat_server(replies: Vec<Reply>) -> (String, Arc<Script>) {
    let script = Arc::new(Script {
        replies: Mutex::new(replies.into()),
        ..Script::default()
    });
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .expect("addr");
    let app = Route::new().at(
        "/v1/chat/completions",
        post(completions).data(script.clone()),
    );
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    (format!("http://{addr}/v1"), script)
}

fn seen(script: &Script) -> Vec<Value> {
    script.seen.lock().expect("seen").clone()
}

const PRICING: (f64, f64) = (0.01, 0.03);

fn openai(url: &str) -> OpenAiToolModel {
    let egress = Egress::new(Policy::with_loopback(Duration::from_secs(10)));
    let settings = ModelSettings {
        model: "gpt-test".into(),
        pricing: PRICING,
        ..ModelSettings::default()
    };
    OpenAiToolModel::new(
        url,
        Some("sk-test".into()),
        Duration::from_secs(5),
        egress,
        settings,
    )
}

fn calls(calls: &[(&str, &str, &str)], usage: (i64, i64)) -> Reply {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, arguments)| {
            json!({"id": id, "type": "function",
                   "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    Reply::Json(json!({
        "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": calls},
                     "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1}
    }))
}

fn answer(text: &str, usage: (i64, i64)) -> Reply {
    Reply::Json(json!({
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1}
    }))
}

fn tools() -> Tools {
    let city = json!({"type": "object", "properties": {"city": {"type": "string"},
                      "days": {"type": "integer"}}, "required": ["city"]});
    let refund = json!({"type": "object", "properties": {"order_id": {"type": "string"},
                        "amount": {"type": "number"}}});
    Tools::new(vec![
        ToolSpec::new(
            "tool_weather",
            "weather",
            "The weather now",
            Some(city),
            ToolKind::Api,
        ),
        ToolSpec::new(
            "tool_faq",
            "faq",
            "Shipping questions",
            None,
            ToolKind::Knowledge,
        ),
        ToolSpec::new(
            "tool_refund",
            "approve refund",
            "",
            Some(refund),
            ToolKind::Function,
        ),
        ToolSpec::new("tool_broken", "broken", "", None, ToolKind::Api),
    ])
}

fn ask(question: &str) -> LoopState {
    LoopState::new(vec![
        Message::System {
            content: "You are helpful.".into(),
        },
        Message::User {
            content: question.into(),
        },
    ])
}

/// Runs `weather` and `faq` (waiting at the barrier when there is one); `broken` fails.
#[derive(Default)]
struct FakeTools {
    barrier: Option<Barrier>,
    calls: Mutex<Vec<(String, Value)>>,
}

impl ToolExecutor for FakeTools {
    async fn execute(&self, tool: &ToolSpec, call: &ToolCall) -> Result<Value, String> {
        self.calls
            .lock()
            .expect("calls")
            .push((tool.function_name.clone(), call.arguments.clone()));
        if let Some(barrier) = &self.barrier {
            barrier.wait().await;
        }
        match tool.function_name.as_str() {
            "weather" => Ok(json!({"temperature_c": 18, "city": call.arguments["city"]})),
            "faq" => Ok(json!("Shops open at 9.")),
            _ => Err("the service answered HTTP 503".into()),
        }
    }
}

impl FakeTools {
    fn called(&self) -> Vec<(String, Value)> {
        self.calls.lock().expect("calls").clone()
    }
}

/// Records what the loop reports.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    deltas: Option<mpsc::Sender<String>>,
    cancelled: AtomicBool,
}

impl Recorder {
    fn note(&self, event: String) {
        self.events.lock().expect("events").push(event);
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().expect("events").clone()
    }
}

impl LoopSink for Recorder {
    fn deltas(&self) -> Option<&mpsc::Sender<String>> {
        self.deltas.as_ref()
    }
    fn model_called(&self, step: &ModelCallStep) {
        self.note(format!("model:{}:{}", step.turn, step.status.as_str()));
    }
    fn tool_call_started(&self, call: &ToolCall) {
        self.note(format!("started:{}", call.name));
    }
    fn tool_call_completed(&self, step: &ToolCallStep) {
        self.note(format!("completed:{}", step.call.name));
    }
    fn tool_call_failed(&self, step: &ToolCallStep) {
        self.note(format!("failed:{}", step.call.name));
    }
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// Runs the loop on the scripted server for `question`, with the default limits.
async fn ask_openai(
    url: &str, question: &str, executor: &FakeTools, sink: &Recorder,
) -> Result<LoopOutcome, LoopFailure> {
    let limits = Limits::default();
    run_with_tools(
        &openai(url),
        ask(question),
        &tools(),
        executor,
        limits,
        sink,
    )
    .await
}

fn answered(outcome: Result<LoopOutcome, LoopFailure>) -> (String, LoopState, Vec<LoopStep>) {
    match outcome {
        Ok(LoopOutcome::Answered { text, state, steps }) => (text, state, steps),
        other => panic!("not answered: {other:?}"),
    }
}

/// [`ask_openai`] with new tools and a new sink, which must answer: the answer's text, state
/// and steps, and the tools and the sink to look into.
async fn answered_fresh(
    url: &str, question: &str,
) -> (String, LoopState, Vec<LoopStep>, FakeTools, Recorder) {
    let (executor, sink) = (FakeTools::default(), Recorder::default());
    let (text, state, steps) = answered(ask_openai(url, question, &executor, &sink).await);
    (text, state, steps, executor, sink)
}

fn tool_steps(steps: &[LoopStep]) -> Vec<&ToolCallStep> {
    steps
        .iter()
        .filter_map(|s| match s {
            LoopStep::ToolCall(t) => Some(t),
            LoopStep::ModelCall(_) => None,
        })
        .collect()
}

/// The `tool` messages of a request, as `(tool_call_id, content)`.
fn tool_messages(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            let text = |k: &str| m[k].as_str().unwrap_or_default().to_string();
            (text("tool_call_id"), text("content"))
        })
        .collect()
}

#[tokio::test]
async fn a_tool_call_then_an_answer_sums_usage_and_sends_the_result_back() {
    let (url, script) = chat_server(vec![
        calls(&[("call_1", "weather", r#"{"city":"Paris"}"#)], (10, 5)),
        answer("It is 18 °C in Paris.", (20, 7)),
    ])
    .await;
    let (text, state, steps, _, sink) = answered_fresh(&url, "What is the weather in Paris?").await;
    assert_eq!(text, "It is 18 °C in Paris.");
    assert_eq!(state.turns, 2);
    let mut usage = Usage::priced(10, 5, PRICING);
    usage.add(Usage::priced(20, 7, PRICING));
    assert_eq!(state.usage, usage);
    assert_eq!((usage.input_tokens, usage.output_tokens), (30, 12));
    let tool = tool_steps(&steps)[0];
    assert_eq!(tool.status, StepStatus::Succeeded);
    assert_eq!(tool.call.tool_id.as_deref(), Some("tool_weather"));
    assert_eq!(tool.call.arguments, json!({"city": "Paris"}));
    assert!(tool.result.contains("temperature_c"), "{}", tool.result);
    assert_eq!(tool.detail()["call_id"], "call_1");
    assert_eq!(
        sink.events(),
        [
            "model:1:succeeded",
            "started:weather",
            "completed:weather",
            "model:2:succeeded"
        ]
    );

    let requests = seen(&script);
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["tool_choice"], "auto");
    let functions: Vec<&Value> = requests[0]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| &t["function"]["name"])
        .collect();
    assert_eq!(functions, ["weather", "faq", "approve_refund", "broken"]);
    assert_eq!(
        requests[0]["tools"][1]["function"]["parameters"],
        knowledge_parameters()
    );
    let assistant = &requests[1]["messages"][2];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(assistant["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        assistant["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris"}"#
    );
    let results = tool_messages(&requests[1]);
    assert_eq!(results[0].0, "call_1");
    assert!(
        results[0].1.contains(r#""temperature_c":18"#),
        "{results:?}"
    );
}

fn chunk(delta: Value) -> Value {
    json!({"choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
}

fn argument_delta(fragment: &str) -> Value {
    chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}))
}

#[tokio::test]
async fn streamed_argument_deltas_are_assembled_into_one_call() {
    let first = vec![
        chunk(
            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_s",
            "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
        ),
        argument_delta("{\"ci"),
        argument_delta("ty\": \"Os"),
        argument_delta("lo\"}"),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
    ];
    let second = vec![
        chunk(json!({"content": "Oslo"})),
        chunk(json!({"content": " is cold."})),
        json!({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 3}}),
    ];
    let (url, script) = chat_server(vec![Reply::Sse(first), Reply::Sse(second)]).await;
    let (tx, mut rx) = mpsc::channel(64);
    let sink = Recorder {
        deltas: Some(tx),
        ..Recorder::default()
    };
    let executor = FakeTools::default();
    let outcome = ask_openai(&url, "Weather in Oslo?", &executor, &sink).await;
    let (text, state, steps) = answered(outcome);
    drop(sink);
    assert_eq!(text, "Oslo is cold.");
    assert_eq!(
        executor.called(),
        [("weather".to_string(), json!({"city": "Oslo"}))]
    );
    assert_eq!(tool_steps(&steps)[0].call.id, "call_s");
    assert_eq!(
        (state.usage.input_tokens, state.usage.output_tokens),
        (39, 7)
    );
    let mut pieces = Vec::new();
    while let Some(p) = rx.recv().await {
        pieces.push(p);
    }
    assert_eq!(pieces, ["Oslo", " is cold."]);
    let requests = seen(&script);
    assert_eq!(requests[0]["stream"], true);
    assert_eq!(tool_messages(&requests[1])[0].0, "call_s");
}

#[tokio::test]
async fn the_calls_of_one_turn_run_concurrently_and_answer_in_order() {
    let (url, script) = chat_server(vec![
        calls(
            &[
                ("call_a", "weather", r#"{"city":"Rome"}"#),
                ("call_b", "faq", r#"{"query":"opening hours"}"#),
            ],
            (10, 8),
        ),
        answer("Sunny, and shops open at 9.", (30, 8)),
    ])
    .await;
    // Each call waits until the other has started: one at a time, they would wait forever.
    let executor = FakeTools {
        barrier: Some(Barrier::new(2)),
        ..FakeTools::default()
    };
    let (model, tools) = (openai(&url), tools());
    let run = run_with_tools(
        &model,
        ask("Weather in Rome, and when do shops open?"),
        &tools,
        &executor,
        Limits::default(),
        &(),
    );
    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the two calls did not run concurrently");
    let (text, _, steps) = answered(outcome);
    assert_eq!(text, "Sunny, and shops open at 9.");
    assert_eq!(tool_steps(&steps).len(), 2);
    let results = tool_messages(&seen(&script)[1]);
    assert_eq!(results[0].0, "call_a");
    assert_eq!(
        results[1],
        ("call_b".to_string(), "Shops open at 9.".to_string())
    );
}

#[tokio::test]
async fn malformed_arguments_unknown_functions_and_failing_tools_are_told_to_the_model() {
    let (url, script) = chat_server(vec![
        calls(
            &[
                ("call_m", "weather", r#"{"city": "#),
                ("call_u", "launch_rockets", "{}"),
                ("call_b", "broken", ""),
                ("call_n", "weather", "[1, 2]"),
            ],
            (10, 5),
        ),
        answer("Sorry, I could not check.", (40, 5)),
    ])
    .await;
    let (text, _, steps, executor, sink) = answered_fresh(&url, "Weather?").await;
    assert_eq!(text, "Sorry, I could not check.");
    assert_eq!(executor.called(), [("broken".to_string(), json!({}))]);
    let steps = tool_steps(&steps);
    assert!(steps.iter().all(|s| s.status == StepStatus::Failed));
    assert_eq!(steps[0].call.arguments, json!(r#"{"city": "#));
    assert_eq!(steps[1].call.tool_id, None);
    let results = tool_messages(&seen(&script)[1]);
    assert!(results[0].1.contains("not valid JSON"), "{results:?}");
    assert!(
        results[1].1.contains("no function named `launch_rockets`"),
        "{results:?}"
    );
    assert!(
        results[1]
            .1
            .contains("weather, faq, approve_refund, broken"),
        "{results:?}"
    );
    assert!(results[2].1.contains("HTTP 503"), "{results:?}");
    assert!(results[3].1.contains("not a JSON object"), "{results:?}");
    assert_eq!(
        sink.events()
            .iter()
            .filter(|e| e.starts_with("failed:"))
            .count(),
        4
    );
}

#[tokio::test]
async fn a_model_that_keeps_calling_tools_fails_at_max_steps() {
    let (url, script) = chat_server(vec![calls(
        &[("call_1", "weather", r#"{"city":"Paris"}"#)],
        (10, 5),
    )])
    .await;
    let executor = FakeTools::default();
    let outcome = run_with_tools(
        &openai(&url),
        ask("Weather?"),
        &tools(),
        &executor,
        Limits { max_steps: 3 },
        &(),
    )
    .await;
    let Err(failure) = outcome else {
        panic!("a model that never answers succeeded: {outcome:?}");
    };
    assert_eq!(failure.code, LoopFailureCode::MaxStepsExceeded);
    assert_eq!(failure.code.as_str(), "MAX_STEPS_EXCEEDED");
    assert_eq!(failure.state.turns, 3);
    assert_eq!(
        failure.state.usage.input_tokens, 30,
        "every model call is billed"
    );
    assert_eq!(seen(&script).len(), 3);
    assert_eq!(
        executor.called().len(),
        2,
        "the last turn's calls are not run"
    );
}

#[tokio::test]
async fn an_upstream_error_fails_the_loop_with_the_model_step_failed() {
    let (url, _) = chat_server(vec![Reply::Status(500, "upstream exploded".into())]).await;
    let sink = Recorder::default();
    let outcome = ask_openai(&url, "Hi", &FakeTools::default(), &sink).await;
    let Err(failure) = outcome else {
        panic!("an upstream 500 succeeded: {outcome:?}");
    };
    assert_eq!(failure.code, LoopFailureCode::ExecutionFailed);
    assert!(
        failure.message.contains("upstream exploded"),
        "{}",
        failure.message
    );
    assert_eq!(sink.events(), ["model:1:failed"]);
}

#[tokio::test]
async fn a_function_tool_pauses_the_loop_and_the_callers_output_resumes_it() {
    let (url, script) = chat_server(vec![
        calls(
            &[
                ("call_w", "weather", r#"{"city":"Paris"}"#),
                (
                    "call_f",
                    "approve_refund",
                    r#"{"order_id":"A1","amount":30}"#,
                ),
            ],
            (10, 5),
        ),
        answer("Your refund of 30 is approved.", (50, 6)),
    ])
    .await;
    let (model, executor) = (openai(&url), FakeTools::default());
    let outcome = run_with_tools(
        &model,
        ask("Refund order A1"),
        &tools(),
        &executor,
        Limits::default(),
        &(),
    )
    .await;
    let Ok(LoopOutcome::RequiresAction { paused, steps }) = outcome else {
        panic!("no pause: {outcome:?}");
    };
    assert_eq!(paused.pending.len(), 1);
    assert_eq!(paused.pending[0].id, "call_f");
    assert_eq!(paused.pending[0].tool_id.as_deref(), Some("tool_refund"));
    assert_eq!(
        paused.pending[0].arguments,
        json!({"order_id": "A1", "amount": 30})
    );
    let statuses: Vec<StepStatus> = tool_steps(&steps).iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        [StepStatus::Succeeded, StepStatus::RequiresAction]
    );

    // Stored and read back, as another replica would.
    let stored = serde_json::to_string(&paused).expect("serialise");
    let paused: Paused = serde_json::from_str(&stored).expect("deserialise");
    let output = |id: &str| ToolOutput {
        tool_call_id: id.into(),
        output: "approved".into(),
    };
    let wrong = paused
        .clone()
        .resume(&[output("call_x")])
        .expect_err("wrong id");
    assert_eq!(wrong.field(), "tool_outputs[0].tool_call_id");
    let twice = paused.clone().resume(&[output("call_f"), output("call_f")]);
    assert!(matches!(
        twice,
        Err(ResumeError::Duplicate { index: 1, .. })
    ));
    let none = paused.clone().resume(&[]).expect_err("missing");
    assert_eq!(
        none,
        ResumeError::Missing {
            id: "call_f".into()
        }
    );
    let (state, resumed) = paused.resume(&[output("call_f")]).expect("resume");
    assert_eq!(resumed[0].status, StepStatus::Succeeded);
    assert_eq!(resumed[0].result, "approved");

    let outcome = run_with_tools(&model, state, &tools(), &executor, Limits::default(), &()).await;
    let (text, state, _) = answered(outcome);
    assert_eq!(text, "Your refund of 30 is approved.");
    assert_eq!((state.turns, state.usage.input_tokens), (2, 60));
    let results = tool_messages(&seen(&script)[1]);
    assert_eq!(results[1], ("call_f".to_string(), "approved".to_string()));
}

fn local() -> LocalToolModel {
    LocalToolModel::new(
        ModelSettings {
            model: crate::engine::provider::LOCAL_MODEL_NAME.into(),
            ..ModelSettings::default()
        },
        Vec::new(),
    )
}

#[tokio::test]
async fn the_local_model_calls_the_tool_named_in_the_input_and_answers_with_its_result() {
    let question = "What is the weather in Paris for 3 days?";
    let executor = FakeTools::default();
    let (model, tools) = (local(), tools());
    let run = || {
        run_with_tools(
            &model,
            ask(question),
            &tools,
            &executor,
            Limits::default(),
            &(),
        )
    };
    let (text, state, steps) = answered(run().await);
    assert_eq!(
        text,
        r#"Based on weather: {"temperature_c":18,"city":"What is the weather in Paris for 3 days?"}"#
    );
    assert_eq!(state.turns, 2);
    assert!(state.usage.input_tokens > 0 && state.usage.output_tokens > 0);
    assert_eq!(tool_steps(&steps).len(), 1);
    assert_eq!(
        executor.called()[0],
        ("weather".to_string(), json!({"city": question, "days": 3}))
    );
    assert_eq!(answered(run().await).0, text, "deterministic");

    let (text, state, _) = answered(
        run_with_tools(
            &model,
            ask("Hello there"),
            &tools,
            &executor,
            Limits::default(),
            &(),
        )
        .await,
    );
    assert!(text.starts_with("I have no knowledge passages"), "{text}");
    assert_eq!(state.turns, 1);
}

#[tokio::test]
async fn the_local_model_pauses_for_a_function_tool_and_answers_with_the_output() {
    let executor = FakeTools::default();
    let outcome = run_with_tools(
        &local(),
        ask("Please approve my refund for order 7"),
        &tools(),
        &executor,
        Limits::default(),
        &(),
    )
    .await;
    let Ok(LoopOutcome::RequiresAction { paused, .. }) = outcome else {
        panic!("no pause: {outcome:?}");
    };
    assert_eq!(paused.pending[0].name, "approve_refund");
    assert_eq!(paused.pending[0].arguments["amount"], json!(7.0));
    let id = paused.pending[0].id.clone();
    let outputs = [ToolOutput {
        tool_call_id: id,
        output: "refund approved".into(),
    }];
    let (state, _) = paused.resume(&outputs).expect("resume");
    let (model, tools) = (local(), tools());
    let outcome = run_with_tools(&model, state, &tools, &executor, Limits::default(), &());
    assert_eq!(
        answered(outcome.await).0,
        "Based on approve_refund: refund approved"
    );
    assert!(executor.called().is_empty());
}

#[tokio::test]
async fn a_cancelled_execution_stops_before_the_next_model_turn() {
    let sink = Recorder::default();
    sink.cancelled.store(true, Ordering::SeqCst);
    let outcome = run_with_tools(
        &local(),
        ask("weather"),
        &tools(),
        &FakeTools::default(),
        Limits::default(),
        &sink,
    )
    .await;
    let Err(failure) = outcome else {
        panic!("a cancelled loop ran: {outcome:?}");
    };
    assert_eq!(failure.code, LoopFailureCode::Cancelled);
    assert!(sink.events().is_empty());
}

#[test]
fn function_names_are_sanitised_and_unique() {
    let long = "x".repeat(70);
    let tools = Tools::new(
        [
            "Weather lookup!",
            "Weather lookup?",
            "天気",
            "",
            &long,
            &long,
        ]
        .iter()
        .enumerate()
        .map(|(i, name)| ToolSpec::new(&format!("tool_{i}"), name, "", None, ToolKind::Api))
        .collect(),
    );
    let names: Vec<&str> = tools.iter().map(|t| t.function_name.as_str()).collect();
    assert_eq!(
        names[..4],
        ["Weather_lookup", "Weather_lookup_2", "tool", "tool_2"]
    );
    assert_eq!(names[4], "x".repeat(64));
    assert_eq!(names[5], format!("{}_2", "x".repeat(62)));
    let valid = regex::Regex::new("^[a-zA-Z0-9_-]{1,64}$").expect("a pattern");
    assert!(names.iter().all(|n| valid.is_match(n)), "{names:?}");
}

#[test]
fn messages_store_as_tagged_json() {
    let m = Message::Assistant {
        content: String::new(),
        tool_calls: vec![RequestedCall {
            id: "call_1".into(),
            name: "weather".into(),
            arguments: "{}".into(),
        }],
    };
    let v = serde_json::to_value(&m).expect("serialise");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["tool_calls"][0]["arguments"], "{}");
    assert_eq!(serde_json::from_value::<Message>(v).expect("read back"), m);
}

#[tokio::test]
async fn the_loop_can_be_spawned() {
    fn spawnable<T: Send + 'static>(_: &T) {}
    let (url, _) = chat_server(vec![answer("Hi.", (1, 1))]).await;
    let task = tokio::spawn(async move {
        let (model, tools, executor) = (openai(&url), tools(), FakeTools::default());
        let sink = Recorder::default();
        let state = ask("Hello");
        run_with_tools(&model, state, &tools, &executor, Limits::default(), &sink)
            .await
            .map(|_| ())
            .map_err(|f| f.message)
    });
    spawnable(&task);
    task.await.expect("joined").expect("answered");
}
