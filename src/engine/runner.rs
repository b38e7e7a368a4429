//! Runs executions as jobs ([`crate::jobs`]): resolves what the agent is configured with
//! (template, knowledge bases, model), runs the [`pipeline`], and records the outcome with
//! its usage. A run ends on its own, on `options.timeout` (`timed_out`), on a cancel written
//! to its row by any replica, or when its lease is lost; an execution whose worker died is
//! failed as interrupted by whichever replica reclaims its job.
//!
//! Streams on the replica that runs an execution get its token deltas through [`Live`];
//! everything else (status, steps, result) is read from the row, so any replica can follow
//! any execution.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentplane_api::models::ModelProvider;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::pipeline::{self, Plan, Step};
use super::provider::{
    ChatMessage, Completion, CompletionRequest, LOCAL_MODEL_NAME, LocalProvider, OpenAiCompatible,
    Provider, ProviderError,
};
use crate::db::executions::{
    self as store, ExecutionError, ExecutionRequest, ExecutionRow, ExecutionStatus, Finish,
};
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

/// What in-process followers of an execution hear.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// The row changed (started, finished): read it again.
    Changed,
    /// A piece of the answer.
    Token(String),
}

/// In-process channels per execution id, for streams on the replica running it.
#[derive(Debug, Default)]
pub struct Live {
    channels: Mutex<HashMap<String, broadcast::Sender<LiveEvent>>>,
}

impl Live {
    /// Listens to execution `id` (before it starts, so no token is missed).
    pub fn subscribe(&self, id: &str) -> broadcast::Receiver<LiveEvent> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_string())
            .or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }

    /// Tells the listeners of `id`, if any.
    pub fn publish(&self, id: &str, event: LiveEvent) {
        let map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(id) {
            let _ = tx.send(event);
        }
    }

    /// Drops the channel of `id` once nobody but the caller (if it still holds a receiver)
    /// listens.
    pub fn release(&self, id: &str) {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(id).is_some_and(|tx| tx.receiver_count() <= 1) {
            map.remove(id);
        }
    }
}

/// The model an execution calls.
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
        &self,
        req: &CompletionRequest,
        deltas: mpsc::Sender<String>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AgentConfiguration {
    temperature: Option<f64>,
    max_tokens: Option<i64>,
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
        }
    }
}

/// The template (text, declared variables) of `settings`, if it has one.
pub fn template_of(
    conn: &mut DbConnection,
    org_id: &str,
    settings: &AgentSettings,
) -> StoreResult<Option<(String, Vec<String>)>> {
    let Some(id) = &settings.prompt_template_id else {
        return Ok(None);
    };
    let row = crate::db::templates::get(conn, org_id, id)?;
    let declared: Vec<String> = serde_json::from_str(&row.variables).unwrap_or_default();
    Ok(Some((row.template, declared)))
}

/// The declared template variables `given` lacks (the 422 of execute and messages).
pub fn missing_variables(
    conn: &mut DbConnection,
    org_id: &str,
    settings: &AgentSettings,
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
}

/// Resolves the agent's template, knowledge bases and model for `row`; `Err` is why the
/// execution cannot run.
pub fn resolve(
    conn: &mut DbConnection,
    (crypto, egress): (&crate::crypto::Crypto, &crate::egress::Egress),
    row: &ExecutionRow,
    request: &ExecutionRequest,
    history: Vec<ChatMessage>,
) -> StoreResult<Result<Resolved, String>> {
    let agent = match crate::db::agents::get(conn, &row.org_id, &row.agent_id) {
        Ok(a) => a,
        Err(StoreError::NotFound) => {
            return Ok(Err(format!("the agent {} was deleted", row.agent_id)));
        }
        Err(e) => return Err(e),
    };
    let settings = AgentSettings::of(&agent.body);
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
    let (client, model_name, pricing) = if model_id == BUILTIN_MODEL {
        (
            ModelClient::Local(LocalProvider),
            LOCAL_MODEL_NAME.to_string(),
            (0.0, 0.0),
        )
    } else {
        let model = match crate::db::models::get(conn, &row.org_id, &model_id) {
            Ok(m) => m,
            Err(StoreError::NotFound) => {
                return Ok(Err(format!(
                    "the agent's model {model_id} is not registered (see /v1/models)"
                )));
            }
            Err(e) => return Err(e),
        };
        let body: Value = serde_json::from_str(&model.body).unwrap_or(Value::Null);
        let pricing = (
            body["pricing"]["input_per_1k"].as_f64().unwrap_or(0.0),
            body["pricing"]["output_per_1k"].as_f64().unwrap_or(0.0),
        );
        let client = if model.provider == ModelProvider::OpenaiCompatible.as_str() {
            let key = match &model.api_key_encrypted {
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
                model.endpoint.as_deref().unwrap_or_default(),
                key,
                timeout + Duration::from_secs(1),
                egress.clone(),
            ))
        } else {
            ModelClient::Local(LocalProvider)
        };
        (client, model.model_name, pricing)
    };
    let plan = Plan {
        org_id: row.org_id.clone(),
        system_prompt: settings.system_prompt,
        template,
        variables: request.parameters.clone().unwrap_or_default(),
        input: request.input_text(),
        history,
        knowledge_bases: settings.knowledge_bases,
        top_k: TOP_K,
        model: model_name,
        temperature: request.options.temperature.or(settings.temperature),
        max_tokens: request.options.max_tokens.or(settings.max_tokens),
        pricing,
    };
    Ok(Ok(Resolved {
        plan,
        model_id,
        client,
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
    status: ExecutionStatus,
    code: &str,
    message: String,
    steps: Option<Vec<Step>>,
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

impl ExecutionRunner {
    async fn end(&self, id: &str, finish: Finish) -> Result<(), String> {
        let (i, after) = (id.to_string(), self.after_finish.clone());
        let done = self
            .store
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    let row = store::finish_in(conn, &i, &finish)?;
                    if let Some(row) = &row {
                        after(conn, row)?;
                        announce(conn, row)?;
                    }
                    Ok(row)
                })
            })
            .await;
        self.live.publish(id, LiveEvent::Changed);
        if matches!(done, Ok(Some(_))) {
            self.events.wake();
        }
        done.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn run_execution(&self, id: String, mut ctx: JobContext) -> Result<(), String> {
        let (i, crypto, history) = (id.clone(), self.crypto.clone(), self.history.clone());
        let egress = self.egress.clone();
        let prepared = self
            .store
            .run(move |conn| {
                let row = store::get_any(conn, &i)?;
                if row.is_finished() {
                    return Ok(None);
                }
                let request = row.request.0.clone();
                let turns = history(conn, &row)?;
                let resolved = resolve(conn, (&crypto, &egress), &row, &request, turns)?;
                Ok(Some((row, request, resolved)))
            })
            .await
            .map_err(|e| e.to_string())?;
        let Some((_, request, resolved)) = prepared else {
            return Ok(()); // cancelled before it started
        };
        let resolved = match resolved {
            Ok(r) => r,
            Err(message) => {
                let finish =
                    unsuccessful(ExecutionStatus::Failed, "EXECUTION_FAILED", message, None);
                return self.end(&id, finish).await;
            }
        };
        let (i, model) = (id.clone(), resolved.model_id.clone());
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
        let timeout_ms = timeout_ms(&request);
        let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(1));
        let run = pipeline::run(
            &self.store,
            self.retriever.clone(),
            &resolved.client,
            &resolved.plan,
            Some(tx),
        );
        let finish = tokio::select! {
            outcome = run => match outcome {
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
            },
            () = tokio::time::sleep(timeout) => unsuccessful(
                ExecutionStatus::TimedOut,
                "TIMED_OUT",
                format!("the execution ran longer than its timeout of {timeout_ms} ms"),
                None,
            ),
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
        self.end(&id, finish).await
    }
}

/// Publishes an execution's change, in the caller's transaction: `execution.started` once it
/// runs, `execution.completed` or `execution.failed` (failed, cancelled, timed out) once it
/// ended, to the event log (so to webhooks and `/v1/stream`), and a line to its agent's log.
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
                let finish = unsuccessful(
                    ExecutionStatus::Failed,
                    "INTERNAL_ERROR",
                    "the execution could not be recorded; it was stopped".into(),
                    None,
                );
                if let Err(end) = runner.end(&id, finish).await {
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
            let finish = unsuccessful(
                ExecutionStatus::Failed,
                "INTERRUPTED",
                "interrupted: the server restarted (or stopped) while running it".into(),
                None,
            );
            if let Err(e) = runner.end(&id, finish).await {
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

/// Execution `id` of `org_id` once it has finished, or as it is when `limit` has passed:
/// woken by what `heard` hears on this replica, else re-read every [`WAIT_POLL`].
pub async fn wait_finished(
    store: &Store,
    org_id: &str,
    id: &str,
    mut heard: broadcast::Receiver<LiveEvent>,
    limit: Duration,
) -> StoreResult<ExecutionRow> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (o, i) = (org_id.to_string(), id.to_string());
        let row = store.run(move |conn| store::get(conn, &o, &i)).await?;
        if row.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(row);
        }
        tokio::select! {
            _ = heard.recv() => {}
            () = tokio::time::sleep(WAIT_POLL) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}
