//! Runs executions as jobs ([`crate::jobs`]): resolves what the agent is configured with
//! (template, knowledge bases, model, tools, flow), runs it, and records the outcome with its
//! usage. An agent without tools runs the [`pipeline`]; with tools, the pipeline's template
//! and retrieval, then the model ⇄ tools loop ([`super::tools::run_with_tools`]); with a
//! `flow`, the flow ([`super::flow::run`]) node by node. A run ends on its own, on
//! `options.timeout` (`timed_out`), on a cancel written to its row by any replica, or when its
//! lease is lost; an execution whose worker died is failed as interrupted by whichever
//! replica reclaims its job.
//!
//! A call of a `function` tool pauses the execution (`requires_action`, its loop stored as a
//! [`Continuation`]); posting the outputs queues it again and the next run resumes the loop.
//! The pause queues a job due at `options.timeout` after it, which ends the execution
//! `expired` if it is still waiting then.
//!
//! Streams on the replica that runs an execution get its token deltas through [`Live`];
//! everything else (status, steps, result) is read from the row, so any replica can follow
//! any execution.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentplane_api::models::ModelProvider;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::act::{self, AgentModel, Continuation, LiveSink, Toolbox};
pub use super::act::{Live, LiveEvent, StepEvent};
use super::flow;
use super::pipeline::{self, Plan, Step};
use super::provider::{
    ChatMessage, Completion, CompletionRequest, LOCAL_MODEL_NAME, LocalProvider, OpenAiCompatible,
    Provider, ProviderError,
};
use super::tools::{
    self, LocalToolModel, LoopOutcome, LoopState, ModelSettings, OpenAiToolModel, Usage,
};
use crate::db::executions::{
    self as store, ExecutionError, ExecutionRequest, ExecutionRow, ExecutionStatus, Finish, Pause,
};
use crate::db::tools::ToolRow;
use crate::db::{DbConnection, Store, StoreError, StoreResult};
use crate::jobs::{BoxFuture, Claimed, Job, JobContext, NewJob};

/// The job kind of executions.
pub const KIND: &str = "execution";
/// The id of the built-in model.
pub const BUILTIN_MODEL: &str = "model_local";
/// How long an execution may run without `options.timeout`.
pub const DEFAULT_TIMEOUT_MS: i64 = 120_000;
/// Passages retrieved per execution.
const TOP_K: usize = 4;
/// How often a running execution checks its row for a cancel.
const CANCEL_POLL: Duration = Duration::from_millis(200);

/// The model an execution calls.
#[derive(Clone)]
pub enum ModelClient {
    Local(LocalProvider),
    OpenAi(OpenAiCompatible),
}

impl Provider for ModelClient {
    async fn complete(&self, req: &CompletionRequest) -> Result<Completion, ProviderError> {
        match self {
            ModelClient::Local(p) => p.complete(req).await,
            ModelClient::OpenAi(p) => p.complete(req).await,
        }
    }

    async fn stream(
        &self, req: &CompletionRequest, deltas: mpsc::Sender<String>,
    ) -> Result<Completion, ProviderError> {
        match self {
            ModelClient::Local(p) => p.stream(req, deltas).await,
            ModelClient::OpenAi(p) => p.stream(req, deltas).await,
        }
    }
}

/// How long `request` may run, in milliseconds.
pub fn timeout_ms(request: &ExecutionRequest) -> i64 {
    request.options.timeout.unwrap_or(DEFAULT_TIMEOUT_MS)
}

/// The agent settings an execution uses (from its `body`).
#[derive(Debug, Clone, Default)]
pub struct AgentSettings {
    pub system_prompt: Option<String>,
    pub prompt_template_id: Option<String>,
    pub knowledge_bases: Vec<String>,
    pub model_id: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
    /// Ids of the tools the model may call.
    pub tools: Vec<String>,
    /// The CodexOS flow it runs instead of the pipeline.
    pub flow: Option<Value>,
    /// Model turns (or flow nodes) at most.
    pub max_steps: usize,
}

/// The fields of an agent's `body` an execution reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AgentBody {
    system_prompt: Option<String>,
    prompt_template_id: Option<String>,
    knowledge_bases: Option<Vec<String>>,
    model_id: Option<String>,
    configuration: Option<AgentConfiguration>,
    tools: Option<Vec<String>>,
    flow: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AgentConfiguration {
    temperature: Option<f64>,
    max_tokens: Option<i64>,
    max_steps: Option<i64>,
}

impl AgentSettings {
    pub fn of(agent_body: &str) -> Self {
        let b: AgentBody = serde_json::from_str(agent_body).unwrap_or_default();
        let configuration = b.configuration.unwrap_or_default();
        Self {
            system_prompt: b.system_prompt,
            prompt_template_id: b.prompt_template_id,
            knowledge_bases: b.knowledge_bases.unwrap_or_default(),
            model_id: b.model_id,
            temperature: configuration.temperature,
            max_tokens: configuration.max_tokens,
            tools: b.tools.unwrap_or_default(),
            flow: b.flow.filter(|f| !f.is_null()),
            max_steps: configuration
                .max_steps
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(tools::DEFAULT_MAX_STEPS),
        }
    }
}

/// The template (text, declared variables) of `settings`, if it has one.
pub fn template_of(
    conn: &mut DbConnection, org_id: &str, settings: &AgentSettings,
) -> StoreResult<Option<(String, Vec<String>)>> {
    let Some(id) = &settings.prompt_template_id else {
        return Ok(None);
    };
    let row = crate::db::templates::get(conn, org_id, id)?;
    let declared: Vec<String> = serde_json::from_str(&row.content.variables).unwrap_or_default();
    Ok(Some((row.content.template, declared)))
}

/// The declared template variables `given` lacks (the 422 of execute and messages).
pub fn missing_variables(
    conn: &mut DbConnection, org_id: &str, settings: &AgentSettings,
    given: &BTreeMap<String, String>,
) -> StoreResult<Vec<String>> {
    match template_of(conn, org_id, settings) {
        Ok(Some((_, declared))) => Ok(declared
            .into_iter()
            .filter(|v| !given.contains_key(v))
            .collect()),
        Ok(None) | Err(StoreError::NotFound) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Everything an execution needs, resolved from its agent at start.
pub struct Resolved {
    pub plan: Plan,
    pub model_id: String,
    pub client: ModelClient,
    /// The agent's tools, and the tools its flow calls, that still exist.
    pub tools: Vec<ToolRow>,
    /// The ids of the agent's own tools (those its model may call outside a flow).
    pub agent_tools: Vec<String>,
    /// The flow it runs, if any.
    pub flow: Option<Value>,
    pub max_steps: usize,
    /// The registered models a flow's `llm` nodes name, by id.
    pub models: BTreeMap<String, ResolvedModel>,
}

/// A model an execution can call.
#[derive(Clone)]
pub struct ResolvedModel {
    pub client: ModelClient,
    /// The provider's model name.
    pub name: String,
    /// Dollars per 1,000 input and output tokens.
    pub pricing: (f64, f64),
}

impl ResolvedModel {
    /// The model as the tools loop calls it, answering without tools from `passages`.
    pub fn tool_model(
        &self, settings: ModelSettings, passages: Vec<super::provider::Passage>,
        egress: &crate::egress::Egress,
    ) -> AgentModel {
        match &self.client {
            ModelClient::Local(_) => AgentModel::Local(LocalToolModel::new(settings, passages)),
            ModelClient::OpenAi(c) => AgentModel::OpenAi(OpenAiToolModel::new(
                &c.endpoint,
                c.api_key.clone(),
                c.timeout,
                egress.clone(),
                settings,
            )),
        }
    }
}

/// The model `model_id` of `org_id` (the built-in one for [`BUILTIN_MODEL`]); `Err` is why it
/// cannot be called.
pub fn model_of(
    conn: &mut DbConnection, (crypto, egress): (&crate::crypto::Crypto, &crate::egress::Egress),
    org_id: &str, model_id: &str, timeout: Duration,
) -> StoreResult<Result<ResolvedModel, String>> {
    if model_id == BUILTIN_MODEL {
        return Ok(Ok(ResolvedModel {
            client: ModelClient::Local(LocalProvider),
            name: LOCAL_MODEL_NAME.to_string(),
            pricing: (0.0, 0.0),
        }));
    }
    let model = match crate::db::models::get(conn, org_id, model_id) {
        Ok(m) => m,
        Err(StoreError::NotFound) => {
            return Ok(Err(format!(
                "the agent's model {model_id} is not registered (see /v1/models)"
            )));
        }
        Err(e) => return Err(e),
    };
    let body: Value = serde_json::from_str(&model.content.body).unwrap_or(Value::Null);
    let pricing = (
        body["pricing"]["input_per_1k"].as_f64().unwrap_or(0.0),
        body["pricing"]["output_per_1k"].as_f64().unwrap_or(0.0),
    );
    let client = if model.content.provider == ModelProvider::OpenaiCompatible.as_str() {
        let key = match &model.content.api_key_encrypted {
            Some(sealed) => match crypto.decrypt(sealed) {
                Ok(k) => Some(String::from_utf8_lossy(&k).into_owned()),
                Err(_) => {
                    return Ok(Err(format!(
                        "the API key of model {model_id} cannot be opened with this server's master key"
                    )));
                }
            },
            None => None,
        };
        // The execution's own timeout ends it as `timed_out` first; the client's is a
        // backstop.
        ModelClient::OpenAi(OpenAiCompatible::new(
            model.content.endpoint.as_deref().unwrap_or_default(),
            key,
            timeout + Duration::from_secs(1),
            egress.clone(),
        ))
    } else {
        ModelClient::Local(LocalProvider)
    };
    Ok(Ok(ResolvedModel {
        client,
        name: model.content.model_name,
        pricing,
    }))
}

/// Resolves the agent's template, knowledge bases, model, tools and flow for `row`; `Err` is
/// why the execution cannot run.
pub fn resolve(
    conn: &mut DbConnection, (crypto, egress): (&crate::crypto::Crypto, &crate::egress::Egress),
    row: &ExecutionRow, request: &ExecutionRequest, history: Vec<ChatMessage>,
) -> StoreResult<Result<Resolved, String>> {
    use crate::db::Found;
    let agent = match crate::db::agents::get(conn, &row.org_id, &row.agent_id) {
        Ok(a) => a,
        Err(StoreError::NotFound) => {
            return Ok(Err(format!("the agent {} was deleted", row.agent_id)));
        }
        Err(e) => return Err(e),
    };
    let settings = AgentSettings::of(&agent.content.body);
    let template = match template_of(conn, &row.org_id, &settings) {
        Ok(t) => t,
        Err(StoreError::NotFound) => {
            return Ok(Err(format!(
                "the agent's prompt template {} no longer exists",
                settings.prompt_template_id.unwrap_or_default()
            )));
        }
        Err(e) => return Err(e),
    };
    let timeout = Duration::from_millis(u64::try_from(timeout_ms(request)).unwrap_or(1).max(1));
    let model_id = settings
        .model_id
        .clone()
        .unwrap_or_else(|| BUILTIN_MODEL.to_string());
    let model = match model_of(conn, (crypto, egress), &row.org_id, &model_id, timeout)? {
        Ok(m) => m,
        Err(why) => return Ok(Err(why)),
    };
    // The tools and models a flow names, beside the agent's own tools.
    let mut tool_ids = settings.tools.clone();
    let mut models = BTreeMap::new();
    let parsed = settings.flow.as_ref().map(flow::Flow::parse);
    if let Some(Ok(parsed)) = &parsed {
        for r in flow::references(parsed.definition()) {
            match r.kind {
                flow::RefKind::Tool => tool_ids.push(r.id.to_string()),
                flow::RefKind::Model if !models.contains_key(r.id) => {
                    match model_of(conn, (crypto, egress), &row.org_id, r.id, timeout)? {
                        Ok(m) => {
                            models.insert(r.id.to_string(), m);
                        }
                        Err(why) => return Ok(Err(format!("{}: {why}", r.field))),
                    }
                }
                _ => {}
            }
        }
    }
    let mut tools = Vec::new();
    for id in &tool_ids {
        if tools.iter().any(|t: &ToolRow| &t.id == id) {
            continue;
        }
        if let Some(t) = crate::db::tools::get(conn, &row.org_id, id).found()? {
            tools.push(t);
        }
    }
    let plan = Plan {
        org_id: row.org_id.clone(),
        system_prompt: settings.system_prompt,
        template,
        variables: request.parameters.clone().unwrap_or_default(),
        input: request.input_text(),
        history,
        knowledge_bases: settings.knowledge_bases,
        top_k: TOP_K,
        model: model.name.clone(),
        temperature: request.options.temperature.or(settings.temperature),
        max_tokens: request.options.max_tokens.or(settings.max_tokens),
        pricing: model.pricing,
    };
    Ok(Ok(Resolved {
        plan,
        model_id,
        client: model.client,
        tools,
        agent_tools: settings.tools,
        flow: settings.flow,
        max_steps: settings.max_steps,
        models,
    }))
}

/// Reads the earlier turns of an execution's conversation.
pub type History =
    Arc<dyn Fn(&mut DbConnection, &ExecutionRow) -> StoreResult<Vec<ChatMessage>> + Send + Sync>;

/// Something an execution's end also writes, in the same transaction (a conversation's
/// assistant message).
pub type AfterFinish =
    Arc<dyn Fn(&mut DbConnection, &ExecutionRow) -> StoreResult<()> + Send + Sync>;

/// Runs the `execution` jobs.
#[derive(Clone)]
pub struct ExecutionRunner {
    pub store: Store,
    pub crypto: crate::crypto::Crypto,
    /// The client of the models' endpoints (the operator's egress policy).
    pub egress: crate::egress::Egress,
    pub live: Arc<Live>,
    /// Earlier turns of an execution's conversation, oldest first.
    pub history: History,
    pub after_finish: AfterFinish,
    /// Woken after a change published events (webhooks, `/v1/stream`).
    pub events: crate::events::EventBus,
    /// Finds the passages an execution's plan asks for (the application gives it the
    /// knowledge bases' search).
    pub retriever: Arc<dyn pipeline::Retriever>,
}

impl std::fmt::Debug for ExecutionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionRunner").finish_non_exhaustive()
    }
}

/// An end other than success: no result, no tokens billed.
fn unsuccessful(
    status: ExecutionStatus, code: &str, message: String, steps: Option<Vec<Step>>,
) -> Finish {
    Finish {
        status,
        result: None,
        error: Some(ExecutionError {
            code: code.to_string(),
            message,
        }),
        input_tokens: 0,
        output_tokens: 0,
        cost_nano_usd: 0,
        steps,
    }
}

/// How a run ended: finished, or paused for tool outputs.
enum Ended {
    Finish(Finish),
    Pause(Pause),
}

/// A failed end that bills the model calls made.
fn failed_with(code: &str, message: String, usage: Usage, steps: Vec<Step>) -> Finish {
    Finish {
        status: ExecutionStatus::Failed,
        result: None,
        error: Some(ExecutionError {
            code: code.to_string(),
            message,
        }),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_nano_usd: usage.cost_nano_usd,
        steps: Some(steps),
    }
}

/// What a run starts from.
struct Start {
    row: ExecutionRow,
    request: ExecutionRequest,
    resolved: Resolved,
    /// Where the loop goes on from, once tool outputs were posted.
    resume: Option<LoopState>,
}

impl ExecutionRunner {
    async fn end(&self, id: &str, finish: Finish) -> Result<(), String> {
        self.end_from(id, finish, None).await
    }

    /// Ends execution `id` failed, with the error `code` and `message`.
    async fn fail(&self, id: &str, code: &str, message: &str) -> Result<(), String> {
        let finish = unsuccessful(ExecutionStatus::Failed, code, message.into(), None);
        self.end(id, finish).await
    }

    /// Ends execution `id` with `finish` (only from the statuses `from`, when given).
    async fn end_from(
        &self, id: &str, finish: Finish, from: Option<&'static [ExecutionStatus]>,
    ) -> Result<(), String> {
        let (i, after) = (id.to_string(), self.after_finish.clone());
        self.change(id, move |conn| {
            let row = match from {
                Some(from) => store::finish_from(conn, &i, &finish, from)?,
                None => store::finish_in(conn, &i, &finish)?,
            };
            if let Some(row) = &row {
                after(conn, row)?;
                announce(conn, row)?;
            }
            Ok(row)
        })
        .await
    }

    /// Pauses execution `id` for tool outputs, and queues the job that expires the pause
    /// `timeout_ms` from now.
    async fn pause(&self, id: &str, pause: Pause, timeout_ms: i64) -> Result<(), String> {
        let i = id.to_string();
        self.change(id, move |conn| {
            let row = store::pause_in(conn, &i, &pause)?;
            if let Some(row) = &row {
                announce(conn, row)?;
                let due = chrono::Utc::now() + chrono::Duration::milliseconds(timeout_ms);
                enqueue_due(conn, row, &crate::ids::format_time(due))?;
            }
            Ok(row)
        })
        .await
    }

    /// Changes execution `id` by `change` in one write transaction, then tells its listeners;
    /// the events' dispatcher is woken when `change` changed a row (and announced it).
    async fn change(
        &self, id: &str,
        change: impl FnOnce(&mut DbConnection) -> StoreResult<Option<ExecutionRow>> + Send + 'static,
    ) -> Result<(), String> {
        let changed = self
            .store
            .run(move |conn| crate::db::write_transaction(conn, change))
            .await;
        self.live.publish(id, LiveEvent::Changed);
        if matches!(changed, Ok(Some(_))) {
            self.events.wake();
        }
        changed.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Ends a paused execution `expired` once its pause has lasted `options.timeout`; a job of
    /// an earlier pause, due before the current one's end, does nothing.
    async fn expire_if_due(
        &self, row: &ExecutionRow, paused_at: Option<&str>,
    ) -> Result<(), String> {
        let timeout_ms = timeout_ms(&row.request);
        let due = paused_at
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.to_utc() + chrono::Duration::milliseconds(timeout_ms));
        if due.is_some_and(|due| due > chrono::Utc::now()) {
            return Ok(());
        }
        let finish = Finish {
            status: ExecutionStatus::Expired,
            result: None,
            error: Some(ExecutionError {
                code: "EXPIRED".into(),
                message: format!(
                    "no tool outputs were posted within the execution's timeout of {timeout_ms} ms"
                ),
            }),
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cost_nano_usd: row.cost_nano_usd,
            steps: None,
        };
        self.end_from(&row.id, finish, Some(&[ExecutionStatus::RequiresAction]))
            .await
    }

    async fn run_execution(&self, id: String, mut ctx: JobContext) -> Result<(), String> {
        let (i, crypto, history) = (id.clone(), self.crypto.clone(), self.history.clone());
        let egress = self.egress.clone();
        let prepared = self
            .store
            .run(move |conn| {
                let row = store::get_any(conn, &i)?;
                let continuation = match row.status {
                    ExecutionStatus::Queued | ExecutionStatus::RequiresAction => {
                        store::continuation(conn, &row.id)?.and_then(Continuation::of)
                    }
                    _ => return Ok(None), // cancelled before it started, or run already
                };
                if row.status == ExecutionStatus::RequiresAction {
                    // The job due when a pause expires.
                    return Ok(Some(Err((row, continuation))));
                }
                let request = row.request.0.clone();
                let turns = match continuation {
                    Some(_) => Vec::new(),
                    None => history(conn, &row)?,
                };
                let resolved = resolve(conn, (&crypto, &egress), &row, &request, turns)?;
                Ok(Some(Ok((row, request, resolved, continuation))))
            })
            .await
            .map_err(|e| e.to_string())?;
        let (row, request, resolved, continuation) = match prepared {
            None => return Ok(()),
            Some(Err((row, continuation))) => {
                let paused_at = match continuation {
                    Some(Continuation::Waiting { paused }) => Some(paused.paused_at),
                    _ => None,
                };
                return self.expire_if_due(&row, paused_at.as_deref()).await;
            }
            Some(Ok(prepared)) => prepared,
        };
        let resolved = match resolved {
            Ok(r) => r,
            Err(message) => {
                let finish =
                    unsuccessful(ExecutionStatus::Failed, "EXECUTION_FAILED", message, None);
                return self.end(&id, finish).await;
            }
        };
        let resume = match continuation {
            Some(Continuation::Resume { state }) => Some(state),
            _ => None,
        };
        let start = Start {
            row,
            request,
            resolved,
            resume,
        };
        let (i, model) = (id.clone(), start.resolved.model_id.clone());
        let started = self
            .store
            .run(move |conn| store::mark_running(conn, &i, &model, &announce))
            .await
            .map_err(|e| e.to_string())?;
        if !started {
            return Ok(());
        }
        self.events.wake();
        self.live.publish(&id, LiveEvent::Changed);

        let (tx, mut rx) = mpsc::channel::<String>(256);
        let forward = {
            let (live, id) = (self.live.clone(), id.clone());
            tokio::spawn(async move {
                while let Some(piece) = rx.recv().await {
                    live.publish(&id, LiveEvent::Token(piece));
                }
            })
        };
        let cancelled = {
            let (store, id) = (self.store.clone(), id.clone());
            async move {
                loop {
                    tokio::time::sleep(CANCEL_POLL).await;
                    let i = id.clone();
                    if let Ok(row) = store.run(move |conn| store::get_any(conn, &i)).await
                        && row.status != ExecutionStatus::Running
                    {
                        return;
                    }
                }
            }
        };
        let timeout_ms = timeout_ms(&start.request);
        let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(1));
        let ended = tokio::select! {
            ended = self.work(&start, tx) => ended,
            () = tokio::time::sleep(timeout) => Ended::Finish(unsuccessful(
                ExecutionStatus::TimedOut,
                "TIMED_OUT",
                format!("the execution ran longer than its timeout of {timeout_ms} ms"),
                None,
            )),
            () = cancelled => {
                forward.abort();
                self.live.publish(&id, LiveEvent::Changed);
                return Ok(());
            }
            () = ctx.lost() => {
                forward.abort();
                return Err("the lease was lost; another replica fails the execution".into());
            }
        };
        // Every delta reaches followers before the end does.
        let _ = forward.await;
        match ended {
            Ended::Finish(finish) => self.end(&id, finish).await,
            Ended::Pause(pause) => self.pause(&id, pause, timeout_ms).await,
        }
    }

    /// Runs what the agent is: a flow, the tools loop, or the pipeline.
    async fn work(&self, start: &Start, deltas: mpsc::Sender<String>) -> Ended {
        let resolved = &start.resolved;
        if let Some(flow) = &resolved.flow {
            drop(deltas);
            return Ended::Finish(self.run_flow(start, flow).await);
        }
        if start.resume.is_some() || !resolved.agent_tools.is_empty() {
            return self.run_tools(start, deltas).await;
        }
        let run = pipeline::run(
            &self.store,
            self.retriever.clone(),
            &resolved.client,
            &resolved.plan,
            Some(deltas),
        );
        Ended::Finish(match run.await {
            Ok(out) => Finish {
                status: ExecutionStatus::Succeeded,
                result: Some(out.text),
                error: None,
                input_tokens: out.input_tokens,
                output_tokens: out.output_tokens,
                cost_nano_usd: out.cost_nano_usd,
                steps: Some(out.steps),
            },
            Err(failed) => unsuccessful(
                ExecutionStatus::Failed,
                "EXECUTION_FAILED",
                failed.message,
                Some(failed.steps),
            ),
        })
    }

    /// The agent's tools, ready to run.
    fn toolbox(&self, start: &Start) -> Toolbox {
        Toolbox::new(
            &start.row.org_id,
            start.resolved.tools.clone(),
            self.store.clone(),
            self.retriever.clone(),
            (self.egress.clone(), self.crypto.clone()),
        )
    }

    /// The pipeline's template and retrieval, then the model ⇄ tools loop (or the loop again
    /// from where it paused). Model turns stream unless `options.stream` is `false`.
    async fn run_tools(&self, start: &Start, deltas: mpsc::Sender<String>) -> Ended {
        let resolved = &start.resolved;
        let (mut steps, state, passages) = match &start.resume {
            Some(state) => (start.row.steps.0.clone(), state.clone(), Vec::new()),
            None => {
                let prepared =
                    pipeline::prepare(&self.store, self.retriever.clone(), &resolved.plan).await;
                match prepared {
                    Ok(p) => {
                        let messages = p.messages.iter().map(tools::Message::from).collect();
                        (p.steps, LoopState::new(messages), p.passages)
                    }
                    Err(failed) => {
                        let (message, steps) = (failed.message, failed.steps);
                        return Ended::Finish(failed_with(
                            "EXECUTION_FAILED",
                            message,
                            Usage::default(),
                            steps,
                        ));
                    }
                }
            }
        };
        let plan = &resolved.plan;
        let settings = ModelSettings {
            model: plan.model.clone(),
            temperature: plan.temperature,
            max_tokens: plan.max_tokens,
            pricing: plan.pricing,
        };
        let model = ResolvedModel {
            client: resolved.client.clone(),
            name: plan.model.clone(),
            pricing: plan.pricing,
        }
        .tool_model(settings, passages, &self.egress);
        let toolbox = self.toolbox(start);
        let offered = toolbox.only(&resolved.agent_tools);
        let sink = LiveSink {
            live: self.live.clone(),
            execution_id: start.row.id.clone(),
            deltas: (start.request.options.stream != Some(false)).then_some(deltas),
        };
        let limits = tools::Limits {
            max_steps: resolved.max_steps,
        };
        match tools::run_with_tools(&model, state, &offered, &toolbox, limits, &sink).await {
            Ok(LoopOutcome::Answered {
                text,
                state,
                steps: done,
            }) => {
                steps.extend(act::loop_steps(&done));
                Ended::Finish(Finish {
                    status: ExecutionStatus::Succeeded,
                    result: Some(text),
                    error: None,
                    input_tokens: state.usage.input_tokens,
                    output_tokens: state.usage.output_tokens,
                    cost_nano_usd: state.usage.cost_nano_usd,
                    steps: Some(steps),
                })
            }
            Ok(LoopOutcome::RequiresAction {
                paused,
                steps: done,
            }) => {
                steps.extend(act::loop_steps(&done));
                let usage = paused.state.usage;
                Ended::Pause(Pause {
                    steps,
                    input_tokens: usage.input_tokens,
                    output_tokens: usage.output_tokens,
                    cost_nano_usd: usage.cost_nano_usd,
                    continuation: Continuation::Waiting { paused }.to_value(),
                })
            }
            Err(failure) => {
                steps.extend(act::loop_steps(&failure.steps));
                let code = failure.code.as_str();
                Ended::Finish(failed_with(
                    code,
                    failure.message,
                    failure.state.usage,
                    steps,
                ))
            }
        }
    }

    /// Runs the agent's flow node by node (see [`super::flow::run`]), publishing each node's
    /// start and end; `llm` nodes run the tools loop with their own tools.
    async fn run_flow(&self, start: &Start, flow_json: &Value) -> Finish {
        let parsed = match flow::Flow::parse(flow_json) {
            Ok(f) => f,
            Err(violations) => {
                let listed: Vec<String> = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.message))
                    .collect();
                let message = format!("the agent's flow is not valid: {}", listed.join("; "));
                return failed_with("EXECUTION_FAILED", message, Usage::default(), Vec::new());
            }
        };
        let resolved = &start.resolved;
        let env = FlowEnv {
            runner: self,
            toolbox: self.toolbox(start),
            agent_model: ResolvedModel {
                client: resolved.client.clone(),
                name: resolved.plan.model.clone(),
                pricing: resolved.plan.pricing,
            },
            models: &resolved.models,
            plan: &resolved.plan,
            max_steps: resolved.max_steps,
            sink: LiveSink {
                live: self.live.clone(),
                execution_id: start.row.id.clone(),
                deltas: None,
            },
        };
        let input = flow::FlowInput {
            input: start.request.input.clone(),
            parameters: start.request.parameters.clone().unwrap_or_default(),
        };
        // The execution's timeout and cancel end the run from outside (`run_execution`).
        let limits = flow::Limits {
            max_steps: resolved.max_steps,
            deadline: None,
        };
        match flow::run(&parsed, &input, &env, limits).await {
            Ok(outcome) => Finish {
                status: ExecutionStatus::Succeeded,
                result: Some(outcome.output),
                error: None,
                input_tokens: outcome.usage.input_tokens,
                output_tokens: outcome.usage.output_tokens,
                cost_nano_usd: outcome.usage.cost_nano_usd,
                steps: Some(outcome.steps.iter().map(act::node_step).collect()),
            },
            Err(failure) => {
                let usage = Usage {
                    input_tokens: failure.usage.input_tokens,
                    output_tokens: failure.usage.output_tokens,
                    cost_nano_usd: failure.usage.cost_nano_usd,
                };
                let steps = failure.steps.iter().map(act::node_step).collect();
                failed_with(failure.code.as_str(), failure.message, usage, steps)
            }
        }
    }
}

/// What a flow's nodes run on: the execution's models, tools and knowledge, its node events.
struct FlowEnv<'a> {
    runner: &'a ExecutionRunner,
    toolbox: Toolbox,
    /// The agent's model, for `llm` nodes that name none (or name a model by name).
    agent_model: ResolvedModel,
    /// The registered models `llm` nodes name, by id.
    models: &'a BTreeMap<String, ResolvedModel>,
    /// The agent's defaults (temperature, max tokens).
    plan: &'a Plan,
    max_steps: usize,
    sink: LiveSink,
}

impl flow::NodeEnv for FlowEnv<'_> {
    async fn complete(&self, call: flow::LlmCall) -> Result<flow::Completion, String> {
        let (model, name) = match call.model.as_deref() {
            Some(id) if self.models.contains_key(id) => {
                let m = &self.models[id];
                (m, m.name.clone())
            }
            Some(name) if !name.starts_with("model_") => (&self.agent_model, name.to_string()),
            _ => (&self.agent_model, self.agent_model.name.clone()),
        };
        let settings = ModelSettings {
            model: name,
            temperature: call.temperature.or(self.plan.temperature),
            max_tokens: call.max_tokens.or(self.plan.max_tokens),
            pricing: model.pricing,
        };
        let model = model.tool_model(settings, Vec::new(), &self.runner.egress);
        let mut messages = Vec::new();
        if let Some(system) = call.system.filter(|s| !s.is_empty()) {
            messages.push(tools::Message::System { content: system });
        }
        messages.push(tools::Message::User {
            content: call.prompt,
        });
        // A flow does not pause: `function` tools are not offered in it.
        let offered = tools::Tools::new(
            self.toolbox
                .only(&call.tools)
                .iter()
                .filter(|t| t.kind != tools::ToolKind::Function)
                .cloned()
                .collect(),
        );
        let limits = tools::Limits {
            max_steps: self.max_steps,
        };
        let state = LoopState::new(messages);
        let outcome =
            tools::run_with_tools(&model, state, &offered, &self.toolbox, limits, &self.sink).await;
        match outcome {
            Ok(LoopOutcome::Answered { text, state, .. }) => Ok(flow::Completion {
                text,
                input_tokens: state.usage.input_tokens,
                output_tokens: state.usage.output_tokens,
                cost_nano_usd: state.usage.cost_nano_usd,
            }),
            Ok(LoopOutcome::RequiresAction { .. }) => {
                Err("a flow's model cannot wait for function tools".into())
            }
            Err(failure) => Err(failure.message),
        }
    }

    async fn call_tool(&self, tool_id: &str, arguments: Value) -> Result<Value, String> {
        self.toolbox.call(tool_id, arguments).await
    }

    async fn retrieve(
        &self, knowledge_base_ids: &[String], query: &str, top_k: usize,
    ) -> Result<Vec<String>, String> {
        let options = pipeline::KnowledgeQuery {
            top_k: top_k.max(1),
            ..pipeline::KnowledgeQuery::default()
        };
        let found = self
            .toolbox
            .search(knowledge_base_ids.to_vec(), query.to_string(), options)
            .await?;
        Ok(found.into_iter().map(|p| p.text).collect())
    }

    fn node_started(&self, node_id: &str, node_type: flow::NodeType) {
        let step = Step {
            name: pipeline::StepName::Node,
            node_id: Some(node_id.to_string()),
            status: pipeline::StepStatus::Running,
            started_at: crate::ids::now(),
            duration_ms: 0,
            detail: json!({"type": node_type.as_str()}),
        };
        self.sink.publish(StepEvent::NodeStarted, step);
    }

    fn node_finished(&self, step: &flow::NodeStep) {
        let event = match step.status {
            flow::NodeStatus::Succeeded => StepEvent::NodeCompleted,
            flow::NodeStatus::Failed => StepEvent::NodeFailed,
        };
        self.sink.publish(event, act::node_step(step));
    }

    async fn cancelled(&self) {
        // `run_execution` watches for a cancel and drops the run.
        std::future::pending().await
    }
}

/// Queues the job of `row` due at `due` (RFC 3339): it expires a pause still waiting then.
fn enqueue_due(conn: &mut DbConnection, row: &ExecutionRow, due: &str) -> StoreResult<()> {
    use crate::db::schema::jobs::dsl as j;
    use diesel::prelude::*;
    let job = crate::jobs::enqueue(conn, &job_for(row))?;
    diesel::update(j::jobs.filter(j::id.eq(&job.id)))
        .set(j::run_after.eq(due))
        .execute(conn)?;
    Ok(())
}

/// Publishes an execution's change, in the caller's transaction: `execution.started` once it
/// runs, `execution.completed` or `execution.failed` (failed, cancelled, timed out, expired)
/// once it ended, `execution.requires_action` once it paused for tool outputs, to the event
/// log (so to webhooks and `/v1/stream`), and a line to its agent's log.
pub fn announce(conn: &mut DbConnection, row: &ExecutionRow) -> StoreResult<()> {
    let reason = row
        .error
        .as_ref()
        .map_or("no reason recorded", |e| e.message.as_str());
    let (event_type, level, message) = match row.status {
        ExecutionStatus::Queued => return Ok(()),
        ExecutionStatus::Running => (
            "execution.started",
            "info",
            format!("execution {} started", row.id),
        ),
        ExecutionStatus::Succeeded => (
            "execution.completed",
            "info",
            format!(
                "execution {} succeeded ({} tokens in, {} out)",
                row.id, row.input_tokens, row.output_tokens
            ),
        ),
        ExecutionStatus::RequiresAction => (
            "execution.requires_action",
            "info",
            format!("execution {} is waiting for tool outputs", row.id),
        ),
        ExecutionStatus::Cancelled => (
            "execution.failed",
            "warn",
            format!("execution {} cancelled: {reason}", row.id),
        ),
        other
        @ (ExecutionStatus::Failed | ExecutionStatus::TimedOut | ExecutionStatus::Expired) => (
            "execution.failed",
            "error",
            format!("execution {} {other}: {reason}", row.id),
        ),
    };
    let mut data = json!({
        "execution_id": row.id,
        "agent_id": row.agent_id,
        "status": row.status,
    });
    if !matches!(
        event_type,
        "execution.started" | "execution.requires_action"
    ) {
        data["usage"] = json!({
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "cost_usd": row.cost_nano_usd as f64 / 1e9,
        });
    }
    if let Some(text) = &row.result {
        data["result"] = json!({ "output": text });
    }
    if let Some(error) = &row.error {
        data["error"] = json!(reason);
        data["error_code"] = json!(error.code);
    }
    crate::events::publish(conn, &row.org_id, event_type, Some(&row.id), data)?;
    crate::runtime::embedded::log_execution(
        conn,
        &row.org_id,
        &row.agent_id,
        level,
        &message,
        &row.id,
    )
}

/// What an execution's job carries (`{"execution_id": …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionJob {
    pub execution_id: String,
}

impl Job for ExecutionRunner {
    const KIND: &'static str = KIND;
    type Payload = ExecutionJob;

    fn run(&self, job: Claimed<ExecutionJob>, ctx: JobContext) -> BoxFuture<Result<(), String>> {
        let runner = self.clone();
        Box::pin(async move {
            let id = job.payload.execution_id;
            let outcome = runner.run_execution(id.clone(), ctx).await;
            if let Err(e) = &outcome {
                // Runs are not retried: end the execution, or it would read `running` forever.
                let why = "the execution could not be recorded; it was stopped";
                if let Err(end) = runner.fail(&id, "INTERNAL_ERROR", why).await {
                    tracing::warn!(error = %e, end = %end, execution = %id, "cannot fail a broken execution");
                }
            }
            outcome
        })
    }

    fn abandon(&self, job: Claimed<Option<ExecutionJob>>) -> BoxFuture<()> {
        let runner = self.clone();
        Box::pin(async move {
            let Some(ExecutionJob { execution_id: id }) = job.payload else {
                return;
            };
            let why = "interrupted: the server restarted (or stopped) while running it";
            if let Err(e) = runner.fail(&id, "INTERRUPTED", why).await {
                tracing::warn!(error = %e, execution = %id, "cannot fail an interrupted execution");
            }
        })
    }

    fn unreadable(&self, _: Claimed<()>, _: String) -> BoxFuture<Result<(), String>> {
        Box::pin(async { Err("the job names no execution".into()) })
    }
}

/// The job that runs `row` on the worker pool (once: a lost run is failed, not retried).
pub fn job_for(row: &ExecutionRow) -> NewJob<ExecutionJob> {
    let payload = ExecutionJob {
        execution_id: row.id.clone(),
    };
    NewJob::of::<ExecutionRunner>(&row.org_id, payload).for_agent(&row.agent_id)
}

/// How often a waiter re-reads an execution it has heard nothing of (another replica runs it).
const WAIT_POLL: Duration = Duration::from_millis(250);

/// Execution `id` of `org_id` once it has finished or paused for tool outputs, or as it is
/// when `limit` has passed: woken by what `heard` hears on this replica, else re-read every
/// [`WAIT_POLL`].
pub async fn wait_finished(
    store: &Store, org_id: &str, id: &str, mut heard: broadcast::Receiver<LiveEvent>,
    limit: Duration,
) -> StoreResult<ExecutionRow> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (o, i) = (org_id.to_string(), id.to_string());
        let row = store.run(move |conn| store::get(conn, &o, &i)).await?;
        if row.is_settled() || tokio::time::Instant::now() >= deadline {
            return Ok(row);
        }
        tokio::select! {
            _ = heard.recv() => {}
            () = tokio::time::sleep(WAIT_POLL) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}
