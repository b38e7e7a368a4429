//! Outbound calls made on a tenant's behalf, and the operator's limits on them.
//!
//! Every call the server makes for a tenant (an API tool, a webhook, a source fetch, a model
//! endpoint) is capped in time by [`Policy::max_time`], whatever the tenant asked for: a call
//! to an address that never answers cannot hold a request longer than the operator allows.

use std::time::Duration;

/// The operator's limits on outbound calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The longest any one outbound call may take, connecting and reading included.
    pub max_time: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_time: Duration::from_secs(30),
        }
    }
}

impl Policy {
    /// How long a call that asks for `wanted` may take.
    pub fn time_for(&self, wanted: Duration) -> Duration {
        wanted.min(self.max_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_cap_wins_over_a_longer_wish() {
        let policy = Policy {
            max_time: Duration::from_secs(2),
        };
        assert_eq!(
            policy.time_for(Duration::from_secs(30)),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.time_for(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }
}
