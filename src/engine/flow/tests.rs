//! Flows: validation rules with the fields they name, and runs on a fake [`NodeEnv`].

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Barrier, watch};

use super::*;

/// The seed's CodexOS example (`entry` → `llm1`).
fn seed_flow() -> Value {
    json!({
        "nodes": [{"id": "llm1", "type": "llm", "config": {"model": "gpt-4", "prompt": "Review this code..."}}],
        "edges": [{"source": "entry", "target": "llm1"}]
    })
}

/// The spec's `codexos_branching` example, as written there.
fn branching_flow() -> Value {
    json!({
        "nodes": [
            {"id": "input", "type": "input"},
            {"id": "is_refund", "type": "condition", "config": {"expression": {"in": ["refund", {"var": "input"}]}}},
            {"id": "refund_reply", "type": "template", "config": {"template": "Refunds take 5 business days. Your request: {{input}}"}},
            {"id": "answer", "type": "llm", "config": {"prompt": "Answer this customer question: {{input}}"}},
            {"id": "done", "type": "output"}
        ],
        "edges": [
            {"source": "input", "target": "is_refund"},
            {"source": "is_refund", "target": "refund_reply", "branch": "true"},
            {"source": "is_refund", "target": "answer", "branch": "false"},
            {"source": "refund_reply", "target": "done"},
            {"source": "answer", "target": "done"}
        ]
    })
}

const KNOWN_TOOLS: [&str; 3] = ["tool_search", "tool_weather", "tool_fail"];

fn org_refs(kind: RefKind, id: &str) -> bool {
    match kind {
        RefKind::Tool => KNOWN_TOOLS.contains(&id),
        RefKind::Model => id == "model_small",
        RefKind::KnowledgeBase => id == "kb_docs",
    }
}

fn violations(flow: Value) -> Vec<(String, &'static str)> {
    match validate(&flow, &org_refs) {
        Ok(_) => Vec::new(),
        Err(found) => found.into_iter().map(|v| (v.field, v.code)).collect(),
    }
}

fn one(field: &str, code: &'static str) -> Vec<(String, &'static str)> {
    named(&[(field, code)])
}

/// The violations of the `(field, code)` pairs `expected`, as [`violations`] lists them.
fn named(expected: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
    expected
        .iter()
        .map(|&(field, code)| (field.to_string(), code))
        .collect()
}

#[test]
fn the_seed_and_the_spec_examples_are_valid_and_round_trip() {
    for flow in [seed_flow(), branching_flow()] {
        let parsed = validate(&flow, &org_refs).expect("valid");
        assert_eq!(serde_json::to_value(parsed.definition()).ok(), Some(flow));
    }
}

#[test]
fn a_cycle_is_named_by_the_edge_that_closes_it() {
    let flow = json!({
        "nodes": [
            {"id": "a", "type": "template", "config": {"template": "x"}},
            {"id": "b", "type": "template", "config": {"template": "y"}},
            {"id": "c", "type": "output"}
        ],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "c"}, {"source": "c", "target": "a"}]
    });
    let found = validate(&flow, &org_refs).err().unwrap_or_default();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].field.as_str(), found[0].code),
        ("flow.edges[2]", code::CYCLE)
    );
    assert_eq!(found[0].message, "closes a cycle: a → b → c → a");
    let self_loop = json!({
        "nodes": [{"id": "a", "type": "output"}],
        "edges": [{"source": "a", "target": "a"}]
    });
    assert_eq!(violations(self_loop), one("flow.edges[0]", code::CYCLE));
}

#[test]
fn dangling_edges_name_their_missing_end() {
    let flow = json!({
        "nodes": [{"id": "llm1", "type": "llm", "config": {"prompt": "hi"}}],
        "edges": [{"source": "entry", "target": "ghost"}, {"source": "nowhere", "target": "llm1"}]
    });
    assert_eq!(
        violations(flow),
        named(&[
            ("flow.edges[0].target", code::NOT_FOUND),
            ("flow.edges[1].source", code::NOT_FOUND)
        ])
    );
}

#[test]
fn node_ids_are_unique() {
    let flow = json!({
        "nodes": [{"id": "a", "type": "output"}, {"id": "a", "type": "output"}],
        "edges": []
    });
    assert_eq!(violations(flow), one("flow.nodes[1].id", code::UNIQUE));
}

#[test]
fn a_flow_has_one_entry_and_nothing_enters_it() {
    let two_inputs = json!({
        "nodes": [{"id": "in1", "type": "input"}, {"id": "in2", "type": "input"}],
        "edges": []
    });
    assert_eq!(
        violations(two_inputs),
        one("flow.nodes[1].type", code::ENTRY)
    );
    let into_input = json!({
        "nodes": [{"id": "in", "type": "input"}, {"id": "out", "type": "output"}],
        "edges": [{"source": "out", "target": "in"}, {"source": "entry", "target": "out"}]
    });
    assert_eq!(
        violations(into_input),
        named(&[
            ("flow.edges[0].target", code::ENTRY),
            ("flow.edges[1].source", code::ENTRY)
        ])
    );
}

#[test]
fn configs_are_checked_field_by_field() {
    let flow = json!({
        "nodes": [
            {"id": "llm1", "type": "llm", "config": {"prompt": "hi", "temperature": 3, "colour": "red"}},
            {"id": "kb", "type": "retrieval", "config": {"knowledge_base_ids": [], "top_k": 0}},
            {"id": "t", "type": "tool", "config": {"arguments": {}}},
            {"id": "bad id!", "type": "template"}
        ],
        "edges": []
    });
    assert_eq!(
        violations(flow),
        named(&[
            ("flow.nodes[0].config.temperature", code::MAXIMUM),
            ("flow.nodes[0].config.colour", code::ADDITIONAL_PROPERTIES),
            ("flow.nodes[1].config.knowledge_base_ids", code::MIN_ITEMS),
            ("flow.nodes[1].config.top_k", code::MINIMUM),
            ("flow.nodes[2].config.tool_id", code::REQUIRED),
            ("flow.nodes[3].id", code::PATTERN),
            ("flow.nodes[3].config", code::REQUIRED)
        ])
    );
    assert_eq!(
        violations(json!({"nodes": []})),
        one("flow.edges", code::REQUIRED)
    );
    assert_eq!(violations(json!([])), one("flow", code::TYPE));
}

#[test]
fn an_unknown_node_type_is_named() {
    let flow = json!({"nodes": [{"id": "x", "type": "teleport"}], "edges": []});
    let found = validate(&flow, &org_refs).err().unwrap_or_default();
    assert_eq!(
        (found[0].field.as_str(), found[0].code),
        ("flow.nodes[0].type", code::ENUM)
    );
    assert!(
        found[0].message.contains("teleport"),
        "{}",
        found[0].message
    );
}

#[test]
fn references_are_checked_through_the_caller() {
    let flow = json!({
        "nodes": [
            {"id": "in", "type": "input"},
            {"id": "llm1", "type": "llm", "config": {"model": "model_big", "prompt": "p", "tools": ["tool_search", "tool_gone"]}},
            {"id": "t", "type": "tool", "config": {"tool_id": "tool_other_org"}},
            {"id": "kb", "type": "retrieval", "config": {"knowledge_base_ids": ["kb_docs", "kb_theirs"]}},
            {"id": "named", "type": "llm", "config": {"model": "gpt-4", "prompt": "p"}}
        ],
        "edges": [{"source": "in", "target": "llm1"}]
    });
    assert_eq!(
        violations(flow),
        named(&[
            ("flow.nodes[1].config.model", code::NOT_FOUND),
            ("flow.nodes[1].config.tools[1]", code::NOT_FOUND),
            ("flow.nodes[2].config.tool_id", code::NOT_FOUND),
            (
                "flow.nodes[3].config.knowledge_base_ids[1]",
                code::NOT_FOUND
            )
        ])
    );
}

#[test]
fn conditions_take_jsonlogic_and_branches_leave_only_conditions() {
    let flow = |expression: Value| {
        json!({
            "nodes": [
                {"id": "c", "type": "condition", "config": {"expression": expression}},
                {"id": "t", "type": "template", "config": {"template": "x"}},
                {"id": "o", "type": "output"}
            ],
            "edges": [{"source": "c", "target": "t", "branch": "true"}, {"source": "t", "target": "o", "branch": "x"}]
        })
    };
    let branch = ("flow.edges[1].branch".to_string(), code::BRANCH);
    assert_eq!(violations(flow(json!(true))), vec![branch.clone()]);
    let at = "flow.nodes[0].config.expression".to_string();
    for bad in [
        json!({"frobnicate": [1]}),
        json!({"==": [1, {"nope": []}]}),
        json!({"==": [1, 2], "extra": 3}),
    ] {
        let found = violations(flow(bad.clone()));
        assert_eq!(
            found,
            vec![branch.clone(), (at.clone(), code::EXPRESSION)],
            "{bad}"
        );
    }
    // Not even the shape: reported before the graph is looked at.
    assert_eq!(violations(flow(json!("refund"))), vec![(at, code::TYPE)]);
}

#[test]
fn templates_name_only_upstream_nodes() {
    let flow = json!({
        "nodes": [
            {"id": "a", "type": "template", "config": {"template": "{{nodes.b.output}}"}},
            {"id": "b", "type": "template", "config": {"template": "{{nodes.a.output}} {{input}} {{topic}}"}},
            {"id": "c", "type": "tool", "config": {"tool_id": "tool_search", "arguments": {"q": ["{{nodes.zz.output}}"]}}},
            {"id": "with-dash", "type": "template", "config": {"template": "x"}},
            {"id": "d", "type": "output", "config": {"value": "{{ nodes.with-dash.output }}"}}
        ],
        "edges": [{"source": "a", "target": "b"}, {"source": "with-dash", "target": "d"}]
    });
    assert_eq!(
        violations(flow),
        named(&[
            ("flow.nodes[0].config.template", code::UPSTREAM),
            ("flow.nodes[2].config.arguments.q[0]", code::NOT_FOUND),
            ("flow.nodes[4].config.value", code::PATTERN)
        ])
    );
}

/// A [`NodeEnv`] that answers from its inputs and records what it was asked.
struct FakeEnv {
    log: Mutex<Vec<String>>,
    cancel: watch::Sender<bool>,
    meeting: Barrier,
}

impl FakeEnv {
    fn new() -> FakeEnv {
        FakeEnv {
            log: Mutex::new(Vec::new()),
            cancel: watch::channel(false).0,
            meeting: Barrier::new(2),
        }
    }

    fn note(&self, entry: String) {
        if let Ok(mut log) = self.log.lock() {
            log.push(entry);
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl NodeEnv for FakeEnv {
    async fn complete(&self, call: LlmCall) -> Result<Completion, String> {
        self.note(format!("complete:{}", call.prompt));
        Ok(Completion {
            text: format!("answer to: {}", call.prompt),
            input_tokens: 10,
            output_tokens: 5,
            cost_nano_usd: 7,
        })
    }

    async fn call_tool(&self, tool_id: &str, arguments: Value) -> Result<Value, String> {
        self.note(format!("tool:{tool_id}:{arguments}"));
        match tool_id {
            "tool_fail" => Err("the service answered 500".into()),
            "tool_meet" => {
                let met = tokio::time::timeout(Duration::from_secs(5), self.meeting.wait()).await;
                met.map(|_| json!("met"))
                    .map_err(|_| "ran alone".to_string())
            }
            "tool_cancel" => {
                self.cancel.send_replace(true);
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(json!("too late"))
            }
            "tool_slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(json!("too late"))
            }
            _ => Ok(json!({"tool": tool_id, "arguments": arguments})),
        }
    }

    async fn retrieve(
        &self, kb_ids: &[String], query: &str, top_k: usize,
    ) -> Result<Vec<String>, String> {
        self.note(format!("retrieve:{}:{query}:{top_k}", kb_ids.join(",")));
        Ok(vec![
            format!("passage about {query}"),
            "another passage".to_string(),
        ])
    }

    fn node_started(&self, node_id: &str, node_type: NodeType) {
        self.note(format!("started:{node_id}:{}", node_type.as_str()));
    }

    fn node_finished(&self, step: &NodeStep) {
        self.note(format!(
            "finished:{}:{}",
            step.node_id,
            step.status.as_str()
        ));
    }

    fn cancelled(&self) -> impl Future<Output = ()> + Send {
        let mut rx = self.cancel.subscribe();
        async move {
            let _ = rx.wait_for(|cancelled| *cancelled).await;
        }
    }
}

const LIMITS: Limits = Limits {
    max_steps: 8,
    deadline: None,
};

fn input(text: &str) -> FlowInput {
    FlowInput {
        input: json!(text),
        parameters: [("topic".to_string(), "billing".to_string())].into(),
    }
}

fn parse(flow: Value) -> Flow {
    match Flow::parse(&flow) {
        Ok(f) => f,
        Err(v) => panic!("invalid flow: {v:?}"),
    }
}

fn ids(steps: &[NodeStep]) -> Vec<&str> {
    steps.iter().map(|s| s.node_id.as_str()).collect()
}

#[tokio::test]
async fn the_seed_flow_runs_its_llm_node() {
    let env = FakeEnv::new();
    let (flow, input) = (parse(seed_flow()), input("fn main() {}"));
    let run = run(&flow, &input, &env, LIMITS);
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&run);
    let out = run.await.expect("ran");
    assert_eq!(out.output, "answer to: Review this code...");
    assert_eq!(ids(&out.steps), ["llm1"]);
    let step = &out.steps[0];
    assert_eq!(
        (step.node_type, step.status),
        (NodeType::Llm, NodeStatus::Succeeded)
    );
    assert_eq!(step.input["model"], "gpt-4");
    assert_eq!(step.detail()["output_tokens"], 5);
    let usage = Usage {
        input_tokens: 10,
        output_tokens: 5,
        cost_nano_usd: 7,
    };
    assert_eq!(out.usage, usage);
    assert_eq!(
        env.log(),
        [
            "started:llm1:llm",
            "complete:Review this code...",
            "finished:llm1:succeeded"
        ]
    );
}

#[tokio::test]
async fn the_branching_example_takes_one_branch_and_skips_the_other() {
    let flow = parse(branching_flow());
    let env = FakeEnv::new();
    let out = run(&flow, &input("I want a refund"), &env, LIMITS)
        .await
        .expect("ran");
    assert_eq!(
        out.output,
        "Refunds take 5 business days. Your request: I want a refund"
    );
    assert_eq!(
        ids(&out.steps),
        ["input", "is_refund", "refund_reply", "done"]
    );
    assert_eq!(out.steps[1].output, json!(true));
    assert!(
        !env.log().iter().any(|l| l.contains("answer")),
        "{:?}",
        env.log()
    );
    assert_eq!(out.usage, Usage::default());

    let env = FakeEnv::new();
    let out = run(&flow, &input("Where is my parcel?"), &env, LIMITS)
        .await
        .expect("ran");
    assert_eq!(
        out.output,
        "answer to: Answer this customer question: Where is my parcel?"
    );
    assert_eq!(ids(&out.steps), ["input", "is_refund", "answer", "done"]);
    assert!(
        !env.log().iter().any(|l| l.contains("refund_reply")),
        "{:?}",
        env.log()
    );
    assert_eq!(out.usage.input_tokens, 10);
}

#[tokio::test]
async fn a_skip_reaches_everything_after_the_branch_not_taken() {
    let flow = json!({
        "nodes": [
            {"id": "c", "type": "condition", "config": {"expression": {"==": [{"var": "parameters.topic"}, "billing"]}}},
            {"id": "a1", "type": "template", "config": {"template": "a1"}},
            {"id": "a2", "type": "template", "config": {"template": "{{nodes.a1.output}} a2"}},
            {"id": "b1", "type": "template", "config": {"template": "b1 on {{topic}}"}},
            {"id": "end", "type": "output", "config": {"value": "[{{nodes.a2.output}}][{{nodes.b1.output}}]"}}
        ],
        "edges": [
            {"source": "c", "target": "a1", "branch": "false"},
            {"source": "a1", "target": "a2"},
            {"source": "a2", "target": "end"},
            {"source": "c", "target": "b1", "branch": "true"},
            {"source": "b1", "target": "end"}
        ]
    });
    let out = run(&parse(flow), &input("hi"), &FakeEnv::new(), LIMITS)
        .await
        .expect("ran");
    assert_eq!(ids(&out.steps), ["c", "b1", "end"]);
    assert_eq!(out.output, "[][b1 on billing]");
}

#[tokio::test]
async fn independent_branches_run_at_the_same_time() {
    // Each tool call waits until the other one arrives: run one after the other, they
    // would both give up.
    let flow = json!({
        "nodes": [
            {"id": "in", "type": "input"},
            {"id": "left", "type": "tool", "config": {"tool_id": "tool_meet"}},
            {"id": "right", "type": "tool", "config": {"tool_id": "tool_meet"}},
            {"id": "join", "type": "template", "config": {"template": "{{nodes.left.output}}+{{nodes.right.output}}"}}
        ],
        "edges": [
            {"source": "in", "target": "left"}, {"source": "in", "target": "right"},
            {"source": "left", "target": "join"}, {"source": "right", "target": "join"}
        ]
    });
    let out = run(&parse(flow), &input("go"), &FakeEnv::new(), LIMITS)
        .await
        .expect("ran");
    assert_eq!(out.output, "met+met");
    assert_eq!(out.steps.len(), 4);
}

#[tokio::test]
async fn a_failing_tool_node_fails_the_flow_naming_it() {
    let flow = json!({
        "nodes": [
            {"id": "in", "type": "input"},
            {"id": "lookup", "type": "tool", "config": {"tool_id": "tool_fail", "arguments": {"city": "{{input}}"}}},
            {"id": "out", "type": "output"}
        ],
        "edges": [{"source": "in", "target": "lookup"}, {"source": "lookup", "target": "out"}]
    });
    let env = FakeEnv::new();
    let failed = run(&parse(flow), &input("Oslo"), &env, LIMITS)
        .await
        .expect_err("fails");
    assert_eq!(failed.code, FailureCode::ExecutionFailed);
    assert_eq!(failed.node_id.as_deref(), Some("lookup"));
    assert_eq!(
        failed.message,
        "node `lookup` (tool) failed: the service answered 500"
    );
    assert_eq!(ids(&failed.steps), ["in", "lookup"]);
    let step = &failed.steps[1];
    assert_eq!(step.status, NodeStatus::Failed);
    assert_eq!(
        step.input,
        json!({"tool_id": "tool_fail", "arguments": {"city": "Oslo"}})
    );
    assert_eq!(step.detail()["error"], "the service answered 500");
    assert!(env.log().contains(&"finished:lookup:failed".to_string()));
}

#[tokio::test]
async fn a_template_without_its_values_fails_its_node() {
    let flow = json!({
        "nodes": [{"id": "t", "type": "template", "config": {"template": "{{missing}} {{input}}"}}],
        "edges": []
    });
    let failed = run(&parse(flow), &input("x"), &FakeEnv::new(), LIMITS)
        .await
        .expect_err("fails");
    assert_eq!(
        failed.message,
        "node `t` (template) failed: `template` needs values for: missing"
    );
}

#[tokio::test]
async fn retrieval_and_tool_nodes_get_their_rendered_inputs() {
    let flow = json!({
        "nodes": [
            {"id": "find", "type": "retrieval", "config": {"knowledge_base_ids": ["kb_docs"], "top_k": 2}},
            {"id": "search", "type": "tool", "config": {"tool_id": "tool_search"}},
            {"id": "ask", "type": "tool", "config": {"tool_id": "tool_weather", "arguments": {"q": "{{topic}}: {{nodes.find.output}}", "n": 3}}}
        ],
        "edges": [{"source": "find", "target": "search"}, {"source": "find", "target": "ask"}]
    });
    let env = FakeEnv::new();
    let out = run(&parse(flow), &input("refunds"), &env, LIMITS)
        .await
        .expect("ran");
    let log = env.log();
    assert!(
        log.contains(&"retrieve:kb_docs:refunds:2".to_string()),
        "{log:?}"
    );
    let passages = "passage about refunds\nanother passage";
    let search = json!({"query": passages});
    assert!(
        log.contains(&format!("tool:tool_search:{search}")),
        "{log:?}"
    );
    let ask = json!({"q": format!("billing: {passages}"), "n": 3});
    assert!(log.contains(&format!("tool:tool_weather:{ask}")), "{log:?}");
    assert_eq!(out.steps.len(), 3);
}

#[tokio::test]
async fn max_steps_stops_the_flow() {
    let flow = json!({
        "nodes": [
            {"id": "a", "type": "template", "config": {"template": "a"}},
            {"id": "b", "type": "template", "config": {"template": "b"}},
            {"id": "c", "type": "template", "config": {"template": "c"}}
        ],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "c"}]
    });
    let limits = Limits {
        max_steps: 2,
        deadline: None,
    };
    let failed = run(&parse(flow), &input("x"), &FakeEnv::new(), limits)
        .await
        .expect_err("stops");
    assert_eq!(failed.code, FailureCode::MaxStepsExceeded);
    assert_eq!(failed.code.as_str(), "MAX_STEPS_EXCEEDED");
    assert_eq!(failed.node_id.as_deref(), Some("c"));
    assert_eq!(ids(&failed.steps), ["a", "b"]);
}

fn slow_flow(tool_id: &str) -> Flow {
    parse(json!({
        "nodes": [
            {"id": "first", "type": "template", "config": {"template": "started"}},
            {"id": "wait", "type": "tool", "config": {"tool_id": tool_id}},
            {"id": "never", "type": "output"}
        ],
        "edges": [{"source": "first", "target": "wait"}, {"source": "wait", "target": "never"}]
    }))
}

#[tokio::test]
async fn a_cancel_mid_flow_ends_it_at_once() {
    let env = FakeEnv::new();
    let t = std::time::Instant::now();
    let flow = slow_flow("tool_cancel");
    let failed = run(&flow, &input("x"), &env, LIMITS)
        .await
        .expect_err("cancelled");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(failed.code, FailureCode::Cancelled);
    assert_eq!(ids(&failed.steps), ["first"]);
    assert!(!env.log().iter().any(|l| l.contains("never")));
}

#[tokio::test]
async fn the_deadline_ends_a_slow_flow() {
    let deadline = Some(tokio::time::Instant::now() + Duration::from_millis(50));
    let limits = Limits {
        max_steps: 8,
        deadline,
    };
    let flow = slow_flow("tool_slow");
    let failed = run(&flow, &input("x"), &FakeEnv::new(), limits)
        .await
        .expect_err("timed out");
    assert_eq!(failed.code, FailureCode::TimedOut);
    assert_eq!(ids(&failed.steps), ["first"]);
}
