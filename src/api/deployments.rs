//! Agent deployments (Agent Launchpad): status, scale and restart through the [`Runtime`]
//! trait, and metrics and logs computed from what storage recorded.
//!
//! [`Runtime`]: crate::runtime::Runtime

use agentplane_api::Reply;
use agentplane_api::deployments::*;
use agentplane_api::models::{
    AgentDeployment, AgentLogLine, AgentLogs, AgentMetrics, DeploymentHealth, DeploymentState,
    ExecutionCounts, LogLevel,
};
use std::collections::HashMap;
use std::time::Duration;

use agentplane_api::EventStreamOf;
use agentplane_api::Json;
use chrono::{DateTime, Utc};
use poem::web::sse::Event;
use poem_openapi::payload::EventStream;
use poem_openapi::types::ToJSON;

use super::Handlers;
use crate::auth::Caller;
use crate::db::deployments as db;
use crate::db::executions::ExecutionStatus;
use crate::db::{StoreError, agents as agents_db};
use crate::error::{Failure, Kind, detail, store_error};
use crate::evaluation::{Percentiles, Tokens};
use crate::runtime::{AgentRef, Deployment, Health, State};

const NOT_FOUND: &str = "AGENT_NOT_FOUND";

fn to_model(d: Deployment, now: DateTime<Utc>) -> AgentDeployment {
    let uptime = parse_time(&d.deployed_at).map_or(0, |t| (now - t).num_seconds().max(0));
    AgentDeployment {
        health: match d.health() {
            Health::Healthy => DeploymentHealth::Healthy,
            Health::Degraded => DeploymentHealth::Degraded,
            Health::Down => DeploymentHealth::Down,
        },
        agent_id: d.agent_id,
        runtime: d.runtime.to_string(),
        state: match d.state {
            State::Queued => DeploymentState::Queued,
            State::Deploying => DeploymentState::Deploying,
            State::Deployed => DeploymentState::Deployed,
            State::Scaling => DeploymentState::Scaling,
            State::Restarting => DeploymentState::Restarting,
            State::Stopped => DeploymentState::Stopped,
            State::Failed => DeploymentState::Failed,
        },
        target_replicas: d.target_replicas,
        ready_replicas: d.ready_replicas,
        in_flight: d.in_flight,
        revision: d.revision,
        uptime_seconds: uptime,
        deployed_at: d.deployed_at,
        last_updated: d.last_updated,
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `30m`, `1h`, `7d`: the spec's pattern `^[1-9][0-9]{0,3}[smhd]$`.
pub(crate) fn parse_duration(text: &str) -> Option<chrono::Duration> {
    let unit = text.chars().last()?;
    let n: i64 = text.get(..text.len() - 1)?.parse().ok()?;
    if n <= 0 {
        return None;
    }
    Some(match unit {
        's' => chrono::Duration::seconds(n),
        'm' => chrono::Duration::minutes(n),
        'h' => chrono::Duration::hours(n),
        'd' => chrono::Duration::days(n),
        _ => return None,
    })
}

/// A 400 on the query parameter `field`.
fn invalid_parameter(field: &str, code: &str, message: &str, hint: &str, rid: &str) -> Failure {
    Failure::with_details(
        Kind::BadRequest,
        "INVALID_PARAMETER",
        message,
        vec![detail(field, code, hint)],
        rid,
    )
}

/// The metrics `window` (`30m`, `1h`, `7d`), or a 400.
fn window_of(text: &str, rid: &str) -> Result<chrono::Duration, Failure> {
    parse_duration(text).ok_or_else(|| {
        invalid_parameter(
            "window",
            "pattern",
            "`window` is a number and a unit: 30m, 1h, 7d",
            "expected a number and s, m, h or d",
            rid,
        )
    })
}

/// Where a log read starts: `since` as a duration back from now or a timestamp, or a 400.
fn since_of(since: Option<&str>, rid: &str) -> Result<Option<String>, Failure> {
    since
        .map(|text| {
            parse_duration(text)
                .map(|d| crate::ids::format_time(Utc::now() - d))
                .or_else(|| crate::ids::normalize_time(text))
                .ok_or_else(|| {
                    invalid_parameter(
                        "since",
                        "format",
                        "`since` is a duration (30m, 1h) or an RFC 3339 timestamp",
                        "expected 30m, 1h, 2d or a timestamp",
                        rid,
                    )
                })
        })
        .transpose()
}

/// The log levels at `lowest` and above.
fn levels_from(lowest: LogLevel) -> Vec<&'static str> {
    LogLevel::ALL
        .iter()
        .skip_while(|l| **l != lowest)
        .map(LogLevel::as_str)
        .collect()
}

/// What the runtime is asked to do to an agent's deployment.
enum Act {
    /// Nothing: report it.
    Status,
    Scale(i64),
    Restart,
}

/// What storage recorded of an agent's executions, for its metrics.
struct Recorded {
    finished: Vec<db::FinishedExecution>,
    queued: i64,
    running: i64,
}

/// The metrics of `recorded` over `window`, from `from` to `now`.
fn metrics_of(
    agent_id: String, window: (&str, chrono::Duration), from: String, now: DateTime<Utc>,
    recorded: Recorded,
) -> AgentMetrics {
    let finished = &recorded.finished;
    let count = |status| finished.iter().filter(|e| e.status == status).count() as i64;
    let total = finished.len() as i64;
    let succeeded = count(ExecutionStatus::Succeeded);
    let mut latencies: Vec<i64> = finished
        .iter()
        .filter_map(|e| {
            let start = parse_time(e.started_at.as_deref()?)?;
            let end = parse_time(e.finished_at.as_deref()?)?;
            Some((end - start).num_milliseconds().max(0))
        })
        .collect();
    latencies.sort_unstable();
    let minutes = window.1.num_seconds() as f64 / 60.0;
    AgentMetrics {
        agent_id,
        window: window.0.to_string(),
        from,
        to: crate::ids::format_time(now),
        executions: ExecutionCounts {
            total,
            succeeded,
            failed: count(ExecutionStatus::Failed),
            cancelled: count(ExecutionStatus::Cancelled),
            timed_out: count(ExecutionStatus::TimedOut),
            queued: recorded.queued,
            running: recorded.running,
        },
        error_rate: if total == 0 {
            0.0
        } else {
            (total - succeeded) as f64 / total as f64
        },
        rate_per_minute: total as f64 / minutes,
        latency_ms: Percentiles::of(&latencies).into(),
        tokens: Tokens::total(finished.iter().map(|e| (e.input_tokens, e.output_tokens))).into(),
        cost_usd: finished.iter().map(|e| e.cost_nano_usd).sum::<i64>() as f64 / 1e9,
    }
}

impl Handlers {
    /// The agent, found in the caller's organization.
    async fn agent_ref(&self, caller: &Caller, agent_id: String) -> Result<AgentRef, Failure> {
        let row = self
            .run_for(caller, NOT_FOUND, move |conn, org| {
                agents_db::get(conn, org, &agent_id)
            })
            .await?;
        Ok(AgentRef {
            org_id: row.org_id,
            agent_id: row.id,
            created_at: row.created_at,
        })
    }

    /// The agent's deployment once the runtime has done `act`, as the API shows it, and where
    /// to poll it.
    async fn deployment(
        &self, caller: &Caller, agent_id: String, act: Act,
    ) -> Result<(Json<AgentDeployment>, String), Failure> {
        let agent = self.agent_ref(caller, agent_id).await?;
        let d = match act {
            Act::Status => self.runtime.status(&agent).await,
            Act::Scale(replicas) => self.runtime.scale(&agent, replicas).await,
            Act::Restart => self.runtime.restart(&agent).await,
        }
        .map_err(store_error(NOT_FOUND, &caller.request_id))?;
        let location = format!("/v1/agents/{}/status", d.agent_id);
        Ok((Json(to_model(d, Utc::now())), location))
    }

    async fn agent_logs(
        &self, caller: &Caller, params: GetAgentLogsParams,
    ) -> Result<(AgentLogs, LogFollow), Failure> {
        let rid = caller.request_id.as_str();
        let since = since_of(params.since.as_deref(), rid)?;
        let levels = levels_from(params.level.unwrap_or(LogLevel::Debug));
        let agent = self.agent_ref(caller, params.agent_id).await?;
        // An agent nobody has asked about yet is deployed as of its creation: its first line.
        self.runtime
            .status(&agent)
            .await
            .map_err(store_error(NOT_FOUND, rid))?;
        let limit = params.lines.clamp(1, 1000);
        let (id, wanted) = (agent.agent_id.clone(), levels.clone());
        // A follower picks up from here: lines written after this read began.
        let read_at = crate::ids::now();
        let mut rows = self
            .run_for(caller, NOT_FOUND, move |conn, _| {
                db::logs(conn, &id, &wanted, since.as_deref(), limit)
            })
            .await?;
        let truncated = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        rows.reverse();
        let follow = LogFollow {
            agent_id: agent.agent_id.clone(),
            levels,
            sent: rows
                .iter()
                .map(|r| (r.id.clone(), r.created_at.clone()))
                .collect(),
            mark: read_at,
        };
        let logs = rows
            .into_iter()
            .map(log_line)
            .collect::<Result<Vec<_>, StoreError>>()
            .map_err(store_error(NOT_FOUND, rid))?;
        let logs = AgentLogs {
            agent_id: agent.agent_id,
            total_lines: logs.len() as i64,
            logs,
            truncated,
        };
        Ok((logs, follow))
    }
}

fn log_line(r: db::LogRow) -> Result<AgentLogLine, StoreError> {
    Ok(AgentLogLine {
        level: LogLevel::from_wire(&r.level)
            .ok_or_else(|| StoreError::Corrupt(format!("log level {}", r.level)))?,
        timestamp: r.created_at,
        message: r.message,
        revision: r.revision,
        execution_id: r.execution_id,
    })
}

/// How often a followed log polls storage for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// How far back each poll looks: a transaction that stamped its line before the last line
/// seen can commit after it, and a line is sent once by id however late it shows up.
const FOLLOW_LOOKBACK: chrono::Duration = chrono::Duration::seconds(10);

/// Where a followed log stands: whose lines, which levels, the lines already sent (id →
/// timestamp) and the newest timestamp seen.
struct LogFollow {
    agent_id: String,
    levels: Vec<&'static str>,
    sent: HashMap<String, String>,
    mark: String,
}

/// `first` as server-sent events, then every new line any replica writes, polled from
/// storage, until the client goes away.
fn follow_logs(
    store: crate::db::Store, first: Vec<AgentLogLine>, mut follow: LogFollow,
) -> EventStream<EventStreamOf<AgentLogLine>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<AgentLogLine>(64);
    tokio::spawn(async move {
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            let floor = parse_time(&follow.mark).map_or_else(
                || follow.mark.clone(),
                |t| crate::ids::format_time(t - FOLLOW_LOOKBACK),
            );
            let (agent, levels, from) = (
                follow.agent_id.clone(),
                follow.levels.clone(),
                floor.clone(),
            );
            let rows = match store
                .run(move |conn| db::logs_from(conn, &agent, &levels, &from, 1000))
                .await
            {
                Ok(rows) => rows,
                // The database away for a moment: the next poll catches up.
                Err(e) => {
                    tracing::warn!(error = %e, "following an agent log");
                    continue;
                }
            };
            for row in rows {
                if follow.sent.contains_key(&row.id) {
                    continue;
                }
                if row.created_at > follow.mark {
                    follow.mark = row.created_at.clone();
                }
                follow.sent.insert(row.id.clone(), row.created_at.clone());
                let Ok(line) = log_line(row) else { continue };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            follow.sent.retain(|_, at| *at >= floor);
        }
    });
    EventStream::new(super::channel_stream(rx))
        .keep_alive(Duration::from_secs(15))
        .to_event(|line| Event::message(line.to_json_string()).event_type("log"))
}

impl DeploymentsApi for Handlers {
    async fn get_agent_status(
        &self, caller: Caller, params: GetAgentStatusParams,
    ) -> Reply<GetAgentStatusResponse> {
        let (d, _) = self
            .deployment(&caller, params.agent_id, Act::Status)
            .await?;
        Ok(GetAgentStatusResponse::Ok(d))
    }

    async fn scale_agent(
        &self, caller: Caller, params: ScaleAgentParams,
    ) -> Reply<ScaleAgentResponse> {
        let act = Act::Scale(params.body.replicas);
        let (d, location) = self.deployment(&caller, params.agent_id, act).await?;
        Ok(ScaleAgentResponse::Accepted(d, location))
    }

    async fn restart_agent(
        &self, caller: Caller, params: RestartAgentParams,
    ) -> Reply<RestartAgentResponse> {
        let act = Act::Restart;
        let (d, location) = self.deployment(&caller, params.agent_id, act).await?;
        Ok(RestartAgentResponse::Accepted(d, location))
    }

    async fn get_agent_metrics(
        &self, caller: Caller, params: GetAgentMetricsParams,
    ) -> Reply<GetAgentMetricsResponse> {
        let rid = caller.request_id.as_str();
        let window = window_of(&params.window, rid)?;
        let agent = self.agent_ref(&caller, params.agent_id).await?;
        let now = Utc::now();
        let from = crate::ids::format_time(now - window);
        let (org, id, since) = (agent.org_id.clone(), agent.agent_id.clone(), from.clone());
        let recorded = self
            .run_for(&caller, NOT_FOUND, move |conn, _| {
                Ok(Recorded {
                    finished: db::finished_since(conn, &org, &id, &since)?,
                    queued: db::queued(conn, &id)?,
                    running: db::running(conn, &id, None)?.0,
                })
            })
            .await?;
        let window = (params.window.as_str(), window);
        let metrics = metrics_of(agent.agent_id, window, from, now, recorded);
        Ok(GetAgentMetricsResponse::Ok(Json(metrics)))
    }

    async fn get_agent_logs(
        &self, caller: Caller, params: GetAgentLogsParams,
    ) -> Reply<GetAgentLogsResponse> {
        let follow = params.follow;
        let (logs, from) = self.agent_logs(&caller, params).await?;
        if follow {
            let stream = follow_logs(self.store.clone(), logs.logs, from);
            return Ok(GetAgentLogsResponse::OkEventStream(stream));
        }
        Ok(GetAgentLogsResponse::Ok(Json(logs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_the_spec_pattern() {
        assert_eq!(parse_duration("30m"), Some(chrono::Duration::minutes(30)));
        assert_eq!(parse_duration("1h"), Some(chrono::Duration::hours(1)));
        assert_eq!(parse_duration("7d"), Some(chrono::Duration::days(7)));
        assert_eq!(parse_duration("45s"), Some(chrono::Duration::seconds(45)));
        for bad in ["", "m", "0m", "1w", "-1h", "1.5h", "h1"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
