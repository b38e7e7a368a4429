//! Where agents' deployments run (Agent Launchpad: status, scale, restart).
//!
//! Handlers see only [`Runtime`]: a deployment's state, its target and ready replicas, its
//! revision. The [`embedded::EmbeddedRuntime`] is the default: an agent's replicas are worker
//! slots, how many of its executions the worker pool runs at once, and everything it knows
//! lives in the database, so several servers on one PostgreSQL agree. A Kubernetes runtime
//! (kube-rs: one Deployment per agent, `replicas` scaled, a rollout restart) implements the
//! same trait later without touching the handlers.

pub mod embedded;

use futures_util::future::BoxFuture;

use crate::db::StoreResult;

/// Where a deployment is (see `DeploymentState` in the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Deploying,
    Deployed,
    Scaling,
    Restarting,
    Stopped,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Deploying => "deploying",
            State::Deployed => "deployed",
            State::Scaling => "scaling",
            State::Restarting => "restarting",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => State::Queued,
            "deploying" => State::Deploying,
            "deployed" => State::Deployed,
            "scaling" => State::Scaling,
            "restarting" => State::Restarting,
            "stopped" => State::Stopped,
            "failed" => State::Failed,
            _ => return None,
        })
    }
}

/// How well a deployment serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Degraded,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
}

/// An agent's deployment as its runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub agent_id: String,
    pub runtime: &'static str,
    pub state: State,
    pub target_replicas: i64,
    pub ready_replicas: i64,
    pub in_flight: i64,
    pub revision: i64,
    pub deployed_at: String,
    pub last_updated: String,
}

impl Deployment {
    pub fn health(&self) -> Health {
        match self.state {
            _ if self.ready_replicas == 0 => Health::Down,
            State::Deployed => Health::Healthy,
            State::Scaling | State::Restarting => Health::Degraded,
            _ => Health::Down,
        }
    }
}

/// The agent a runtime call is about, already found in the caller's organization.
#[derive(Debug, Clone)]
pub struct AgentRef {
    pub org_id: String,
    pub agent_id: String,
    pub created_at: String,
}

/// Most replicas an agent may have (the spec's `ScaleRequest.replicas` maximum).
pub const MAX_REPLICAS: i64 = 16;

/// A place agents' deployments run.
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// Its name in `AgentDeployment.runtime`.
    fn name(&self) -> &'static str;
    /// The agent's deployment; an agent without one yet is deployed with one replica.
    fn status<'a>(&'a self, agent: &'a AgentRef) -> BoxFuture<'a, StoreResult<Deployment>>;
    /// Asks for `replicas` (0..=[`MAX_REPLICAS`]); answers at once, while it converges.
    fn scale<'a>(
        &'a self, agent: &'a AgentRef, replicas: i64,
    ) -> BoxFuture<'a, StoreResult<Deployment>>;
    /// Drains the work in flight and starts a new revision; answers at once.
    fn restart<'a>(&'a self, agent: &'a AgentRef) -> BoxFuture<'a, StoreResult<Deployment>>;
}
