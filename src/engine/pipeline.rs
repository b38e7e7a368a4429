//! One agent run: render the template, retrieve passages, call the model; each step timed
//! and recorded. The HTTP layer (execute, conversation messages) and the worker pool build on
//! this.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio::sync::mpsc;

use super::provider::{ChatMessage, CompletionRequest, Passage, Provider};
use super::template;
pub use crate::db::executions::{Step, StepName, StepStatus};
use crate::db::{DbConnection, Store, StoreError, StoreResult};

/// Retrieval as the engine needs it. The `knowledge` area implements it over its search
/// (`knowledge::search`) and the application hands it to the engine ([`crate::app`]); the
/// engine knows nothing else of knowledge bases. An execution's retrieval step and its `rag`
/// and `retrieval` tools search through it.
pub trait Retriever: Send + Sync {
    /// The passages of `kb_ids` (all of which must be the organization's) that match `query`
    /// as `options` say, best first.
    fn search(
        &self, conn: &mut DbConnection, org_id: &str, kb_ids: &[String], query: &str,
        options: &KnowledgeQuery,
    ) -> StoreResult<Vec<Passage>>;

    /// The `top_k` best passages, unfiltered.
    fn retrieve(
        &self, conn: &mut DbConnection, org_id: &str, kb_ids: &[String], query: &str, top_k: usize,
    ) -> StoreResult<Vec<Passage>> {
        let options = KnowledgeQuery {
            top_k,
            ..KnowledgeQuery::default()
        };
        self.search(conn, org_id, kb_ids, query, &options)
    }
}

/// How a search is narrowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KnowledgeQuery {
    /// At most this many passages.
    pub top_k: usize,
    /// Only passages scoring at least this.
    pub min_score: Option<f64>,
    /// Only passages whose metadata has each of these keys with exactly this value.
    pub filters: serde_json::Map<String, serde_json::Value>,
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub org_id: String,
    pub system_prompt: Option<String>,
    /// The template text and its declared variables.
    pub template: Option<(String, Vec<String>)>,
    pub variables: BTreeMap<String, String>,
    pub input: String,
    /// Earlier turns of a conversation, oldest first.
    pub history: Vec<ChatMessage>,
    pub knowledge_bases: Vec<String>,
    pub top_k: usize,
    pub model: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
    /// Dollars per 1,000 input and output tokens.
    pub pricing: (f64, f64),
}

/// A finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub text: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
    pub steps: Vec<Step>,
}

/// A failed run: the steps so far (the last one failed) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub message: String,
    pub steps: Vec<Step>,
}

/// Cost in billionths of a dollar from per-1k prices.
pub fn cost_nano_usd(input_tokens: i64, output_tokens: i64, pricing: (f64, f64)) -> i64 {
    let dollars =
        input_tokens as f64 * pricing.0 / 1000.0 + output_tokens as f64 * pricing.1 / 1000.0;
    (dollars * 1e9).round() as i64
}

fn elapsed_ms(t: Instant) -> i64 {
    i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// A step of `name` that started at `at` (RFC 3339) and instant `t`.
pub fn step(
    name: StepName, status: StepStatus, (at, t): (String, Instant), detail: serde_json::Value,
) -> Step {
    Step {
        name,
        node_id: None,
        status,
        started_at: at,
        duration_ms: elapsed_ms(t),
        detail,
    }
}

/// What a run asks the model, once its template is rendered and its passages retrieved.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The `template` and `retrieval` steps.
    pub steps: Vec<Step>,
    /// System prompt (with the passages), history, and the input last.
    pub messages: Vec<ChatMessage>,
    pub passages: Vec<Passage>,
}

/// Renders the template and retrieves the passages of `plan`.
pub async fn prepare(
    store: &Store, retriever: Arc<dyn Retriever>, plan: &Plan,
) -> Result<Prepared, Failed> {
    let mut steps = Vec::new();
    let fail = |mut steps: Vec<Step>, step: Step, message: String| {
        steps.push(step);
        Failed { message, steps }
    };

    // 1. The system prompt: the agent's, then its rendered template.
    let started = (crate::ids::now(), Instant::now());
    let mut system = plan.system_prompt.clone().unwrap_or_default();
    if let Some((text, declared)) = &plan.template {
        let missing: Vec<&str> = declared
            .iter()
            .filter(|v| !plan.variables.contains_key(*v))
            .map(String::as_str)
            .collect();
        let rendered = if missing.is_empty() {
            template::render(text, &plan.variables).map_err(|m| m.join(", "))
        } else {
            Err(missing.join(", "))
        };
        match rendered {
            Ok(r) => {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&r);
                let detail = json!({"variables": plan.variables.keys().collect::<Vec<_>>(),
                                    "rendered_chars": r.chars().count()});
                steps.push(step(
                    StepName::Template,
                    StepStatus::Succeeded,
                    started,
                    detail,
                ));
            }
            Err(missing) => {
                let message = format!("the prompt template needs values for: {missing}");
                let detail = json!({"error": message});
                let failed = step(StepName::Template, StepStatus::Failed, started, detail);
                return Err(fail(steps, failed, message));
            }
        }
    }

    // 2. Retrieval.
    let mut passages = Vec::new();
    if !plan.knowledge_bases.is_empty() {
        let started = (crate::ids::now(), Instant::now());
        let (org, kbs, query, k) = (
            plan.org_id.clone(),
            plan.knowledge_bases.clone(),
            plan.input.clone(),
            plan.top_k.max(1),
        );
        let r = retriever.clone();
        match store
            .run(move |conn| r.retrieve(conn, &org, &kbs, &query, k))
            .await
        {
            Ok(found) => {
                let listed: Vec<_> = found
                    .iter()
                    .map(|p| json!({"id": p.id, "source": p.source, "score": p.score}))
                    .collect();
                let detail = json!({"knowledge_bases": plan.knowledge_bases, "passages": listed});
                steps.push(step(
                    StepName::Retrieval,
                    StepStatus::Succeeded,
                    started,
                    detail,
                ));
                passages = found;
            }
            Err(e) => {
                let message = match e {
                    StoreError::Unavailable(m) => m,
                    other => format!("retrieval failed: {other}"),
                };
                let detail = json!({"error": message});
                let failed = step(StepName::Retrieval, StepStatus::Failed, started, detail);
                return Err(fail(steps, failed, message));
            }
        }
    }

    // 3. What the model is asked.
    if !passages.is_empty() {
        let listed: Vec<String> = passages
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[{}] {}", i + 1, p.text))
            .collect();
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(&format!(
            "Answer from these passages and cite them as [n]:\n{}",
            listed.join("\n")
        ));
    }
    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(ChatMessage {
            role: "system".into(),
            content: system,
        });
    }
    messages.extend(plan.history.iter().cloned());
    messages.push(ChatMessage {
        role: "user".into(),
        content: plan.input.clone(),
    });
    Ok(Prepared {
        steps,
        messages,
        passages,
    })
}

/// Runs `plan`: template → retrieval → model. Token deltas go to `deltas` when given.
pub async fn run<P: Provider>(
    store: &Store, retriever: Arc<dyn Retriever>, provider: &P, plan: &Plan,
    deltas: Option<mpsc::Sender<String>>,
) -> Result<Outcome, Failed> {
    let Prepared {
        mut steps,
        messages,
        passages,
    } = prepare(store, retriever, plan).await?;
    let req = CompletionRequest {
        model: plan.model.clone(),
        messages,
        passages,
        temperature: plan.temperature,
        max_tokens: plan.max_tokens,
    };
    let started = (crate::ids::now(), Instant::now());
    let answer = match deltas {
        Some(tx) => provider.stream(&req, tx).await,
        None => provider.complete(&req).await,
    };
    match answer {
        Ok(done) => {
            let detail = json!({"model": plan.model, "input_tokens": done.input_tokens,
                                "output_tokens": done.output_tokens});
            steps.push(step(
                StepName::ModelCall,
                StepStatus::Succeeded,
                started,
                detail,
            ));
            Ok(Outcome {
                cost_nano_usd: cost_nano_usd(done.input_tokens, done.output_tokens, plan.pricing),
                text: done.text,
                input_tokens: done.input_tokens,
                output_tokens: done.output_tokens,
                steps,
            })
        }
        Err(e) => {
            let message = e.to_string();
            let detail = json!({"model": plan.model, "error": message});
            steps.push(step(
                StepName::ModelCall,
                StepStatus::Failed,
                started,
                detail,
            ));
            Err(Failed { message, steps })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::LocalProvider;

    /// Returns fixed passages (tests only).
    struct FixedRetriever(Vec<Passage>);

    impl Retriever for FixedRetriever {
        fn search(
            &self, _: &mut DbConnection, _: &str, _: &[String], _: &str, options: &KnowledgeQuery,
        ) -> StoreResult<Vec<Passage>> {
            Ok(self.0.iter().take(options.top_k).cloned().collect())
        }
    }

    fn store() -> Store {
        let dir = std::env::temp_dir().join(crate::ids::new_id("pipeline_test"));
        Store::open(&format!("sqlite://{}/t.db", dir.display()), 1).expect("store")
    }

    fn plan() -> Plan {
        Plan {
            org_id: "org_x".into(),
            system_prompt: Some("Be brief.".into()),
            template: Some(("You support {{product}}.".into(), vec!["product".into()])),
            variables: [("product".to_string(), "Acme Router".to_string())]
                .into_iter()
                .collect(),
            input: "How long is the warranty on the router?".into(),
            knowledge_bases: vec!["kb_1".into()],
            top_k: 3,
            model: "local-extractive-1".into(),
            pricing: (0.01, 0.03),
            ..Plan::default()
        }
    }

    #[tokio::test]
    async fn the_local_model_answers_from_retrieved_passages_with_steps_and_cost() {
        let retriever = Arc::new(FixedRetriever(vec![
            Passage {
                id: "c1".into(),
                source: "manual".into(),
                text: "The router warranty lasts two years. Keep the receipt.".into(),
                score: 2.0,
            },
            Passage {
                id: "c2".into(),
                source: "faq".into(),
                text: "Shipping is free.".into(),
                score: 1.0,
            },
        ]));
        let (tx, mut rx) = mpsc::channel(64);
        let out = run(&store(), retriever, &LocalProvider, &plan(), Some(tx))
            .await
            .expect("runs");
        assert!(
            out.text
                .contains("The router warranty lasts two years. [1]"),
            "{}",
            out.text
        );
        let names: Vec<_> = out.steps.iter().map(|s| (s.name, s.status)).collect();
        assert_eq!(
            names,
            vec![
                (StepName::Template, StepStatus::Succeeded),
                (StepName::Retrieval, StepStatus::Succeeded),
                (StepName::ModelCall, StepStatus::Succeeded)
            ]
        );
        assert!(out.input_tokens > 0 && out.output_tokens > 0);
        assert_eq!(
            out.cost_nano_usd,
            cost_nano_usd(out.input_tokens, out.output_tokens, (0.01, 0.03))
        );
        assert!(out.cost_nano_usd > 0);
        let mut streamed = String::new();
        while let Ok(piece) = rx.try_recv() {
            streamed.push_str(&piece);
        }
        assert_eq!(streamed, out.text);
    }

    /// Refuses every retrieval as the knowledge area refuses unknown knowledge bases.
    struct RefusingRetriever;

    impl Retriever for RefusingRetriever {
        fn search(
            &self, _: &mut DbConnection, _: &str, kb_ids: &[String], _: &str, _: &KnowledgeQuery,
        ) -> StoreResult<Vec<Passage>> {
            Err(StoreError::Conflict(format!(
                "the agent's knowledge bases {} do not exist",
                kb_ids.join(", ")
            )))
        }
    }

    /// Runs `plan` with the local model, every retrieval refused.
    async fn run_refused(plan: &Plan) -> Result<Outcome, Failed> {
        run(
            &store(),
            Arc::new(RefusingRetriever),
            &LocalProvider,
            plan,
            None,
        )
        .await
    }

    #[tokio::test]
    async fn missing_variables_and_refused_retrievals_fail_their_step() {
        let mut p = plan();
        p.variables.clear();
        let failed = run_refused(&p).await.expect_err("template");
        assert_eq!(
            failed.steps.last().map(|s| (s.name, s.status)),
            Some((StepName::Template, StepStatus::Failed))
        );
        assert!(failed.message.contains("product"));
        let failed = run_refused(&plan()).await.expect_err("retrieval");
        assert_eq!(
            failed.steps.last().map(|s| (s.name, s.status)),
            Some((StepName::Retrieval, StepStatus::Failed))
        );
        assert!(failed.message.contains("kb_1"), "{}", failed.message);
        let mut no_kb = plan();
        no_kb.knowledge_bases.clear();
        let out = run_refused(&no_kb).await.expect("skips retrieval");
        assert_eq!(out.steps.len(), 2);
    }

    #[test]
    fn cost_is_per_thousand_tokens_in_nano_dollars() {
        assert_eq!(cost_nano_usd(1000, 1000, (0.01, 0.03)), 40_000_000);
        assert_eq!(cost_nano_usd(0, 0, (1.0, 1.0)), 0);
    }
}
