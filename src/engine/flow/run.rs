//! Running a validated flow: nodes in dependency order, independent branches concurrently.
//!
//! A node runs once every edge into it is settled (its source finished or was skipped) and at
//! least one of them is taken; an edge out of a `condition` node is taken when it names no
//! branch or its `branch` equals the condition's value as text, any other edge when its
//! source finished. A node none of whose edges is taken is skipped, and so, in turn, may be
//! the nodes after it. What a node does with the model, tools and knowledge goes through
//! [`NodeEnv`], which the execution runner implements; so does what it records and streams.

use std::collections::BTreeMap;
use std::future::Future;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::expr;
use super::model::{FlowNode, LlmConfig, NodeKind, NodeType, RetrievalConfig};
use super::validate::Flow;
use crate::engine::template;

/// What a flow runs on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowInput {
    /// The execution's input: a string, or the object a CodexOS client sent.
    pub input: Value,
    /// The execution's parameters, which templates use by name.
    pub parameters: BTreeMap<String, String>,
}

/// How far a run may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Nodes run at most; the next one fails the flow with `MAX_STEPS_EXCEEDED`.
    pub max_steps: usize,
    /// When the run fails with `TIMED_OUT`, if ever.
    pub deadline: Option<Instant>,
}

/// One model call an `llm` node asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmCall {
    /// The node's `model` (a `model_…` id or a name), `None` for the agent's.
    pub model: Option<String>,
    pub system: Option<String>,
    pub prompt: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
    /// Ids of tools the model may call.
    pub tools: Vec<String>,
}

/// A model's answer to an [`LlmCall`] (after any tool calls it made).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// What the call cost, in billionths of a dollar (0 when the model has no pricing).
    pub cost_nano_usd: i64,
}

/// Tokens and cost, summed over a run's model calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_nano_usd += other.cost_nano_usd;
    }
}

/// How a node's step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Succeeded,
    Failed,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Succeeded => "succeeded",
            NodeStatus::Failed => "failed",
        }
    }
}

/// One node run: the execution's `node` step.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStep {
    pub node_id: String,
    pub node_type: NodeType,
    pub status: NodeStatus,
    /// What the node worked on (the rendered prompt, the tool's arguments, ...).
    pub input: Value,
    /// What it produced (`null` when it failed).
    pub output: Value,
    /// RFC 3339.
    pub started_at: String,
    pub duration_ms: i64,
    pub error: Option<String>,
    /// The tokens and cost of an `llm` node's call.
    pub usage: Usage,
}

impl NodeStep {
    /// The step's `detail` as the execution records it: `type`, `input`, `output`, and
    /// `error` or the tokens when there are some.
    pub fn detail(&self) -> Value {
        let mut detail = json!({
            "type": self.node_type.as_str(),
            "input": self.input,
            "output": self.output,
        });
        if let Some(error) = &self.error {
            detail["error"] = json!(error);
        }
        if self.usage != Usage::default() {
            detail["input_tokens"] = json!(self.usage.input_tokens);
            detail["output_tokens"] = json!(self.usage.output_tokens);
        }
        detail
    }
}

/// A finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowOutcome {
    /// The value of the `output` node reached (the last one to finish), else of the last
    /// node to finish, as text.
    pub output: String,
    /// One step per node run, in the order they finished.
    pub steps: Vec<NodeStep>,
    pub usage: Usage,
}

/// Why a run failed, as the execution's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCode {
    /// A node failed.
    ExecutionFailed,
    MaxStepsExceeded,
    Cancelled,
    TimedOut,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::ExecutionFailed => "EXECUTION_FAILED",
            FailureCode::MaxStepsExceeded => "MAX_STEPS_EXCEEDED",
            FailureCode::Cancelled => "CANCELLED",
            FailureCode::TimedOut => "TIMED_OUT",
        }
    }
}

/// A failed run: why, the node it failed at, and the steps and usage so far (the model calls
/// made are billed all the same).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowFailure {
    pub code: FailureCode,
    pub message: String,
    pub node_id: Option<String>,
    pub steps: Vec<NodeStep>,
    pub usage: Usage,
}

/// What the nodes of a flow run on, and where their steps go. The execution runner
/// implements it over the model providers, the tools, knowledge search and the event log.
pub trait NodeEnv: Sync {
    /// Runs one model call (which may call the call's tools).
    fn complete(&self, call: LlmCall) -> impl Future<Output = Result<Completion, String>> + Send;
    /// Calls one tool with `arguments`; its result.
    fn call_tool(
        &self, tool_id: &str, arguments: Value,
    ) -> impl Future<Output = Result<Value, String>> + Send;
    /// Searches knowledge bases; the passages' texts, best first.
    fn retrieve(
        &self, knowledge_base_ids: &[String], query: &str, top_k: usize,
    ) -> impl Future<Output = Result<Vec<String>, String>> + Send;
    /// A node started (`node.started`).
    fn node_started(&self, node_id: &str, node_type: NodeType);
    /// A node finished (`node.completed` or `node.failed`, and its `step`).
    fn node_finished(&self, step: &NodeStep);
    /// Resolves when the execution is cancelled; never otherwise.
    fn cancelled(&self) -> impl Future<Output = ()> + Send;
}

/// Runs `flow` on `input`.
pub async fn run<E: NodeEnv>(
    flow: &Flow, input: &FlowInput, env: &E, limits: Limits,
) -> Result<FlowOutcome, FlowFailure> {
    let mut run = Run::new(flow, input, limits);
    let mut running = FuturesUnordered::new();
    let mut check: Vec<usize> = (0..flow.definition.nodes.len()).rev().collect();
    let cancelled = env.cancelled();
    let deadline = async {
        match limits.deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(cancelled, deadline);
    loop {
        for job in run.start_ready(&mut check)? {
            env.node_started(&job.node.id, job.node.node_type());
            running.push(execute(env, job));
        }
        if running.is_empty() {
            return Ok(run.outcome());
        }
        tokio::select! {
            biased;
            () = &mut cancelled => {
                return Err(run.fail(FailureCode::Cancelled, "the execution was cancelled".into(), None));
            }
            () = &mut deadline => {
                let message = "the flow ran past its deadline".to_string();
                return Err(run.fail(FailureCode::TimedOut, message, None));
            }
            Some(finished) = running.next() => {
                let step = run.finish(finished, &mut check);
                env.node_finished(&step);
                if step.status == NodeStatus::Failed {
                    let message = format!(
                        "node `{}` ({}) failed: {}",
                        step.node_id,
                        step.node_type.as_str(),
                        step.error.as_deref().unwrap_or("unknown error")
                    );
                    let node_id = Some(step.node_id.clone());
                    return Err(run.fail(FailureCode::ExecutionFailed, message, node_id));
                }
            }
        }
    }
}

/// Where a node is in a run.
#[derive(Debug, Clone, PartialEq)]
enum State {
    Waiting,
    Running,
    Done(Value),
    Skipped,
}

/// What starting a node needs, decided when all it depends on is settled.
struct Job<'f> {
    index: usize,
    node: &'f FlowNode,
    input: Value,
    started_at: String,
    work: Work,
}

/// What a node does once started.
enum Work {
    Done(Value),
    Failed(String),
    Llm(LlmCall),
    Tool {
        tool_id: String,
        arguments: Value,
    },
    Retrieve {
        kb_ids: Vec<String>,
        query: String,
        top_k: usize,
    },
}

/// A node's work, done.
struct Finished {
    index: usize,
    input: Value,
    started_at: String,
    duration_ms: i64,
    result: Result<(Value, Usage), String>,
}

async fn execute<E: NodeEnv>(env: &E, job: Job<'_>) -> Finished {
    let t = Instant::now();
    let result = match job.work {
        Work::Done(value) => Ok((value, Usage::default())),
        Work::Failed(message) => Err(message),
        Work::Llm(call) => env.complete(call).await.map(|c| {
            let usage = Usage {
                input_tokens: c.input_tokens,
                output_tokens: c.output_tokens,
                cost_nano_usd: c.cost_nano_usd,
            };
            (Value::String(c.text), usage)
        }),
        Work::Tool { tool_id, arguments } => env
            .call_tool(&tool_id, arguments)
            .await
            .map(|v| (v, Usage::default())),
        Work::Retrieve {
            kb_ids,
            query,
            top_k,
        } => env
            .retrieve(&kb_ids, &query, top_k)
            .await
            .map(|found| (Value::String(found.join("\n")), Usage::default())),
    };
    Finished {
        index: job.index,
        input: job.input,
        started_at: job.started_at,
        duration_ms: i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX),
        result,
    }
}

/// Whether a waiting node can be decided yet.
enum Readiness {
    NotYet,
    Run,
    Skip,
}

/// The state of one run.
struct Run<'f> {
    flow: &'f Flow,
    input: &'f FlowInput,
    limits: Limits,
    state: Vec<State>,
    steps: Vec<NodeStep>,
    usage: Usage,
    started: usize,
    last: Option<Value>,
    output: Option<Value>,
}

impl<'f> Run<'f> {
    fn new(flow: &'f Flow, input: &'f FlowInput, limits: Limits) -> Run<'f> {
        Run {
            flow,
            input,
            limits,
            state: vec![State::Waiting; flow.definition.nodes.len()],
            steps: Vec::new(),
            usage: Usage::default(),
            started: 0,
            last: None,
            output: None,
        }
    }

    /// Settles the nodes in `check`: starts those ready (their jobs), skips those no taken
    /// edge reaches (and checks what follows them).
    fn start_ready(&mut self, check: &mut Vec<usize>) -> Result<Vec<Job<'f>>, FlowFailure> {
        let mut jobs = Vec::new();
        while let Some(v) = check.pop() {
            if self.state[v] != State::Waiting {
                continue;
            }
            match self.readiness(v) {
                Readiness::NotYet => {}
                Readiness::Skip => {
                    self.state[v] = State::Skipped;
                    check.extend(self.successors(v));
                }
                Readiness::Run => {
                    let node = &self.flow.definition.nodes[v];
                    if self.started >= self.limits.max_steps {
                        let message = format!(
                            "the flow needs more than its max_steps of {} nodes (next: `{}`)",
                            self.limits.max_steps, node.id
                        );
                        let node_id = Some(node.id.clone());
                        return Err(self.fail(FailureCode::MaxStepsExceeded, message, node_id));
                    }
                    self.started += 1;
                    self.state[v] = State::Running;
                    jobs.push(self.prepare(v));
                }
            }
        }
        Ok(jobs)
    }

    fn successors(&self, v: usize) -> Vec<usize> {
        let graph = &self.flow.graph;
        let targets = graph.outgoing[v].iter().filter_map(|&e| graph.ends[e]);
        targets.map(|(_, t)| t).collect()
    }

    /// Whether edge `e`, whose source finished with `value`, is followed.
    fn taken(&self, e: usize, source: usize, value: &Value) -> bool {
        let is_condition = matches!(
            self.flow.definition.nodes[source].kind,
            NodeKind::Condition(_)
        );
        match &self.flow.definition.edges[e].branch {
            Some(branch) if is_condition => *branch == as_text(value),
            _ => true,
        }
    }

    fn readiness(&self, v: usize) -> Readiness {
        let incoming = &self.flow.graph.incoming[v];
        let mut any_taken = incoming.is_empty();
        for &e in incoming {
            match self.flow.graph.source(e) {
                None => any_taken = true,
                Some(s) => match &self.state[s] {
                    State::Done(value) => any_taken |= self.taken(e, s, value),
                    State::Skipped => {}
                    State::Waiting | State::Running => return Readiness::NotYet,
                },
            }
        }
        if any_taken {
            Readiness::Run
        } else {
            Readiness::Skip
        }
    }

    /// The outputs of the taken edges into `v` (the input for the entry's), as one value:
    /// the one output, or several joined as text.
    fn upstream(&self, v: usize) -> Value {
        let mut sources: Vec<Option<usize>> = Vec::new();
        let mut values: Vec<&Value> = Vec::new();
        for &e in &self.flow.graph.incoming[v] {
            let source = self.flow.graph.source(e);
            let value = match source {
                None => &self.input.input,
                Some(s) => match &self.state[s] {
                    State::Done(value) if self.taken(e, s, value) => value,
                    _ => continue,
                },
            };
            if !sources.contains(&source) {
                sources.push(source);
                values.push(value);
            }
        }
        match values.as_slice() {
            [] => self.input.input.clone(),
            [one] => (*one).clone(),
            many => Value::String(
                many.iter()
                    .map(|v| as_text(v))
                    .collect::<Vec<_>>()
                    .join("\n\n"),
            ),
        }
    }

    /// The values templates see: parameters, `input`, and `nodes.<id>.output` of every node
    /// settled so far (empty for a skipped one).
    fn variables(&self) -> BTreeMap<String, String> {
        let mut vars = self.input.parameters.clone();
        vars.insert("input".into(), as_text(&self.input.input));
        for (node, state) in self.flow.definition.nodes.iter().zip(&self.state) {
            let text = match state {
                State::Done(value) => as_text(value),
                State::Skipped => String::new(),
                State::Waiting | State::Running => continue,
            };
            vars.insert(format!("nodes.{}.output", node.id), text);
        }
        vars
    }

    /// The data a condition's JSONLogic sees: `{input, parameters, nodes: {<id>: {output}}}`.
    fn logic_data(&self) -> Value {
        let mut nodes = Map::new();
        for (node, state) in self.flow.definition.nodes.iter().zip(&self.state) {
            if let State::Done(value) = state {
                nodes.insert(node.id.clone(), json!({ "output": value }));
            }
        }
        json!({"input": self.input.input, "parameters": self.input.parameters, "nodes": nodes})
    }

    /// Records a finished node: its step, and on success its output and what to check next.
    fn finish(&mut self, f: Finished, check: &mut Vec<usize>) -> NodeStep {
        let node = &self.flow.definition.nodes[f.index];
        let (status, output, error, usage) = match f.result {
            Ok((value, usage)) => {
                if node.node_type() == NodeType::Output {
                    self.output = Some(value.clone());
                }
                self.last = Some(value.clone());
                self.state[f.index] = State::Done(value.clone());
                check.extend(self.successors(f.index));
                (NodeStatus::Succeeded, value, None, usage)
            }
            Err(message) => (
                NodeStatus::Failed,
                Value::Null,
                Some(message),
                Usage::default(),
            ),
        };
        self.usage.add(usage);
        let step = NodeStep {
            node_id: node.id.clone(),
            node_type: node.node_type(),
            status,
            input: f.input,
            output,
            started_at: f.started_at,
            duration_ms: f.duration_ms,
            error,
            usage,
        };
        self.steps.push(step.clone());
        step
    }

    fn fail(&mut self, code: FailureCode, message: String, node_id: Option<String>) -> FlowFailure {
        FlowFailure {
            code,
            message,
            node_id,
            steps: std::mem::take(&mut self.steps),
            usage: self.usage,
        }
    }

    fn outcome(&mut self) -> FlowOutcome {
        let output = self.output.as_ref().or(self.last.as_ref());
        FlowOutcome {
            output: output.map(as_text).unwrap_or_default(),
            steps: std::mem::take(&mut self.steps),
            usage: self.usage,
        }
    }
}

/// Passages a `retrieval` node asks for when its config names no `top_k`.
const DEFAULT_TOP_K: usize = 5;

/// The values a node's templates are rendered with.
struct Vars(BTreeMap<String, String>);

impl Vars {
    fn render(&self, field: &str, text: &str) -> Result<String, String> {
        template::render(text, &self.0)
            .map_err(|missing| format!("`{field}` needs values for: {}", missing.join(", ")))
    }

    /// `value` with every string in it rendered.
    fn render_value(&self, field: &str, value: &Value) -> Result<Value, String> {
        Ok(match value {
            Value::String(s) => Value::String(self.render(field, s)?),
            Value::Array(items) => {
                let rendered = items.iter().map(|i| self.render_value(field, i));
                Value::Array(rendered.collect::<Result<_, _>>()?)
            }
            Value::Object(map) => {
                let mut rendered = Map::new();
                for (key, item) in map {
                    rendered.insert(
                        key.clone(),
                        self.render_value(&format!("{field}.{key}"), item)?,
                    );
                }
                Value::Object(rendered)
            }
            other => other.clone(),
        })
    }
}

impl<'f> Run<'f> {
    /// The job of node `v`, all it depends on being settled. A template that cannot be
    /// rendered or a condition that cannot be evaluated fails the node.
    fn prepare(&self, v: usize) -> Job<'f> {
        let node = &self.flow.definition.nodes[v];
        let (input, work) = self
            .work(node, v)
            .unwrap_or_else(|message| (Value::Null, Work::Failed(message)));
        Job {
            index: v,
            node,
            input,
            started_at: crate::ids::now(),
            work,
        }
    }

    /// What node `v` works on (its step's `input`) and what it does.
    fn work(&self, node: &FlowNode, v: usize) -> Result<(Value, Work), String> {
        let vars = Vars(self.variables());
        Ok(match &node.kind {
            NodeKind::Input(_) => (
                self.input.input.clone(),
                Work::Done(self.input.input.clone()),
            ),
            NodeKind::Llm(c) => llm_work(&vars, c)?,
            NodeKind::Retrieval(c) => {
                let query = match &c.query {
                    Some(q) => vars.render("query", q)?,
                    None => as_text(&self.upstream(v)),
                };
                retrieval_work(c, query)
            }
            NodeKind::Tool(c) => {
                let arguments = match &c.arguments {
                    Some(args) => vars.render_value("arguments", &Value::Object(args.clone()))?,
                    None => json!({"query": as_text(&self.upstream(v))}),
                };
                let input = json!({"tool_id": c.tool_id, "arguments": arguments});
                (
                    input,
                    Work::Tool {
                        tool_id: c.tool_id.clone(),
                        arguments,
                    },
                )
            }
            NodeKind::Condition(c) => {
                let value = expr::evaluate(&c.expression, &self.logic_data())?;
                (json!({"expression": c.expression}), Work::Done(value))
            }
            NodeKind::Template(c) => {
                let text = vars.render("template", &c.template)?;
                (
                    json!({"template": c.template}),
                    Work::Done(Value::String(text)),
                )
            }
            NodeKind::Output(c) => {
                let upstream = self.upstream(v);
                let value = match &c.value {
                    Some(t) => Value::String(vars.render("value", t)?),
                    None => upstream.clone(),
                };
                (upstream, Work::Done(value))
            }
        })
    }
}

fn llm_work(vars: &Vars, c: &LlmConfig) -> Result<(Value, Work), String> {
    let prompt = vars.render("prompt", &c.prompt)?;
    let system = c.system.as_deref().map(|s| vars.render("system", s));
    let system = system.transpose()?;
    let input = json!({"model": c.model, "system": system, "prompt": prompt});
    let call = LlmCall {
        model: c.model.clone(),
        system,
        prompt,
        temperature: c.temperature,
        max_tokens: c.max_tokens,
        tools: c.tools.clone(),
    };
    Ok((input, Work::Llm(call)))
}

fn retrieval_work(c: &RetrievalConfig, query: String) -> (Value, Work) {
    let top_k = c.top_k.and_then(|k| usize::try_from(k).ok());
    let top_k = top_k.unwrap_or(DEFAULT_TOP_K);
    let kb_ids = c.knowledge_base_ids.clone();
    let input = json!({"knowledge_base_ids": kb_ids, "query": query, "top_k": top_k});
    let work = Work::Retrieve {
        kb_ids,
        query,
        top_k,
    };
    (input, work)
}

/// A value as text: a string as it is, anything else as JSON (`true`, `3`, `null`).
pub fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
