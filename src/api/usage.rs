//! Usage statistics, cost analysis and conversation analytics (CodexOS, Magnet AI), read from
//! the usage records execution writes and from conversations and messages. The database
//! aggregates ([`crate::db::usage`]); money is summed in integer nano-dollars and shown as
//! decimal US dollars.

use std::collections::BTreeMap;

use agentplane_api::Json;
use agentplane_api::models::{
    AgentConversationStats, ConversationAnalytics, DailyConversationStats, DailyCost, ModelUsage,
    UsageCostEntry, UsageCostTotal, UsageCosts, UsageEntityType, UsageGroup, UsageGroupBy,
    UsagePeriod, UsageStats, UsageTotals,
};
use agentplane_api::*;
use poem_openapi::types::MaybeUndefined;

use super::Handlers;
use crate::auth::Caller;
use crate::db::usage::{
    self as store, ConversationFigures, Group, GroupColumn, Totals, UsageFilter, Window,
};
use crate::db::{DbConnection, StoreResult};
use crate::error::Failure;

/// The code of a storage failure (nothing here is looked up by id).
const NOT_FOUND: &str = "NOT_FOUND";
/// Most entries of a cost analysis or agents of conversation analytics.
const MAX_ENTRIES: i64 = 100;

/// US dollars from nano-dollars.
pub fn usd(nano: i64) -> f64 {
    nano as f64 / 1e9
}

/// A query bound (`2026-01-15` or `2026-01-15T10:00:00(.f)Z`, as the spec's pattern allows)
/// in storage format; a day starts at its first instant, or ends at its last when `end`.
/// The text is compared, not parsed, so any value the pattern admits is a bound.
pub fn bound(text: &str, end: bool) -> String {
    if text.len() == 10 {
        return if end {
            format!("{text}T23:59:59.999999Z")
        } else {
            format!("{text}T00:00:00.000000Z")
        };
    }
    let body = text.trim_end_matches(['Z', 'z']);
    let (seconds, fraction) = body.split_once('.').unwrap_or((body, ""));
    let mut digits: String = fraction.chars().take(6).collect();
    while digits.len() < 6 {
        digits.push('0');
    }
    format!("{seconds}.{digits}Z")
}

/// The window of `from`/`start_date` and `to`/`end_date`: the later start, the earlier end.
pub fn window(
    from: Option<&str>, start_date: Option<&str>, to: Option<&str>, end_date: Option<&str>,
) -> Window {
    let starts = [from, start_date]
        .into_iter()
        .flatten()
        .map(|t| bound(t, false));
    let ends = [to, end_date].into_iter().flatten().map(|t| bound(t, true));
    Window {
        start: starts.max(),
        end: ends.min(),
    }
}

/// The operations that read a period: `from`/`start_date` and `to`/`end_date`.
trait Dated {
    /// The period asked for, as [`window`] makes it.
    fn window(&self) -> Window;

    /// The usage records of the period, of `agent_id` or of an `entity` when given.
    fn filter(
        &self, agent_id: Option<String>, entity: Option<(GroupColumn, Option<String>)>,
    ) -> UsageFilter {
        let window = self.window();
        UsageFilter {
            window,
            agent_id,
            entity,
        }
    }
}

macro_rules! dated {
    ($($params:ty),+) => {
        $(impl Dated for $params {
            fn window(&self) -> Window {
                window(
                    self.from.as_deref(),
                    self.start_date.as_deref(),
                    self.to.as_deref(),
                    self.end_date.as_deref(),
                )
            }
        })+
    };
}

dated!(
    GetUsageStatsParams,
    GetUsageCostsParams,
    GetConversationAnalyticsParams
);

fn period(w: &Window) -> UsagePeriod {
    UsagePeriod {
        start: w.start.clone(),
        end: w.end.clone(),
    }
}

fn group_of(g: &Group) -> UsageGroup {
    let s = &g.sums;
    UsageGroup {
        key: g.group_key.clone(),
        records: s.records,
        input_tokens: s.input_tokens,
        output_tokens: s.output_tokens,
        total_tokens: s.total_tokens(),
        cost: usd(s.cost_nano_usd),
        cost_nano_usd: s.cost_nano_usd,
    }
}

fn column_of_group(g: UsageGroupBy) -> GroupColumn {
    match g {
        UsageGroupBy::Agent => GroupColumn::Agent,
        UsageGroupBy::Model => GroupColumn::Model,
        UsageGroupBy::Hour => GroupColumn::Hour,
        UsageGroupBy::Day => GroupColumn::Day,
        UsageGroupBy::Month => GroupColumn::Month,
    }
}

fn column_of_entity(e: UsageEntityType) -> GroupColumn {
    match e {
        UsageEntityType::Agent => GroupColumn::Agent,
        UsageEntityType::Model => GroupColumn::Model,
        UsageEntityType::Execution => GroupColumn::Execution,
        UsageEntityType::Conversation => GroupColumn::Conversation,
    }
}

fn nullable(v: &Option<String>) -> MaybeUndefined<String> {
    match v {
        Some(x) => MaybeUndefined::Value(x.clone()),
        None => MaybeUndefined::Null,
    }
}

fn stats_of(
    w: &Window, agent_id: &Option<String>, group_by: UsageGroupBy, (t, breakdown, models): Figures,
) -> UsageStats {
    let total_tokens = t.sums.total_tokens();
    UsageStats {
        period: period(w),
        agent_id: nullable(agent_id),
        group_by,
        usage: UsageTotals {
            records: t.sums.records,
            executions: t.executions,
            conversations: t.conversations,
            messages: t.messages,
            input_tokens: t.sums.input_tokens,
            output_tokens: t.sums.output_tokens,
            total_tokens,
        },
        total_tokens,
        total_cost: usd(t.sums.cost_nano_usd),
        costs: UsageCostTotal {
            total: usd(t.sums.cost_nano_usd),
            total_nano_usd: t.sums.cost_nano_usd,
        },
        breakdown: breakdown.iter().map(group_of).collect(),
        by_model: models
            .iter()
            .map(|g| {
                (
                    g.group_key.clone(),
                    ModelUsage {
                        tokens: g.sums.total_tokens(),
                        cost: usd(g.sums.cost_nano_usd),
                    },
                )
            })
            .collect(),
    }
}

fn costs_of(
    w: &Window, entity_type: UsageEntityType, entity_id: Option<String>,
    (t, entries, days): Figures,
) -> UsageCosts {
    UsageCosts {
        entity_type,
        entity_id,
        period: period(w),
        total_cost: usd(t.sums.cost_nano_usd),
        total_cost_nano_usd: t.sums.cost_nano_usd,
        entries: entries
            .iter()
            .map(group_of)
            .map(|g| UsageCostEntry {
                entity_type,
                entity_id: g.key,
                records: g.records,
                input_tokens: g.input_tokens,
                output_tokens: g.output_tokens,
                total_tokens: g.total_tokens,
                cost: g.cost,
                cost_nano_usd: g.cost_nano_usd,
            })
            .collect(),
        by_day: days
            .iter()
            .map(group_of)
            .map(|g| DailyCost {
                date: g.key,
                total_tokens: g.total_tokens,
                cost: g.cost,
                cost_nano_usd: g.cost_nano_usd,
            })
            .collect(),
    }
}

fn ratio(a: i64, b: i64) -> f64 {
    if b > 0 { a as f64 / b as f64 } else { 0.0 }
}

/// Agents with conversations started in the period, then agents with only messages.
fn conversations_by_agent(figures: &ConversationFigures) -> Vec<AgentConversationStats> {
    let mut by_agent: Vec<AgentConversationStats> = figures
        .by_agent
        .iter()
        .map(|c| AgentConversationStats {
            agent_id: c.group_key.clone(),
            conversations: c.n,
            messages: 0,
            average_messages_per_conversation: ratio(c.extra, c.n),
        })
        .collect();
    for m in &figures.messages_by_agent {
        match by_agent.iter_mut().find(|a| a.agent_id == m.group_key) {
            Some(a) => a.messages = m.n,
            None => by_agent.push(AgentConversationStats {
                agent_id: m.group_key.clone(),
                conversations: 0,
                messages: m.n,
                average_messages_per_conversation: 0.0,
            }),
        }
    }
    by_agent.truncate(usize::try_from(MAX_ENTRIES).unwrap_or(100));
    by_agent
}

/// The figures of `date`, zero until counted.
fn day<'a>(
    days: &'a mut BTreeMap<String, DailyConversationStats>, date: &str,
) -> &'a mut DailyConversationStats {
    days.entry(date.to_string())
        .or_insert_with(|| DailyConversationStats {
            date: date.to_string(),
            conversations: 0,
            messages: 0,
        })
}

/// Conversations started and messages sent per day, in day order.
fn conversations_by_day(figures: &ConversationFigures) -> Vec<DailyConversationStats> {
    let mut days = BTreeMap::new();
    for c in &figures.conversations_by_day {
        day(&mut days, &c.group_key).conversations = c.n;
    }
    for m in &figures.messages_by_day {
        day(&mut days, &m.group_key).messages = m.n;
    }
    days.into_values().collect()
}

fn analytics_of(
    w: &Window, agent_id: &Option<String>, figures: &ConversationFigures,
) -> ConversationAnalytics {
    let total_conversations: i64 = figures.by_agent.iter().map(|c| c.n).sum();
    let messages_in_started: i64 = figures.by_agent.iter().map(|c| c.extra).sum();
    let total_messages: i64 = figures.messages_by_role.iter().map(|c| c.n).sum();
    let total_chars: i64 = figures.messages_by_role.iter().map(|c| c.extra).sum();
    ConversationAnalytics {
        period: period(w),
        agent_id: nullable(agent_id),
        total_conversations,
        total_messages,
        average_messages_per_conversation: ratio(messages_in_started, total_conversations),
        average_message_length: ratio(total_chars, total_messages),
        messages_by_role: figures
            .messages_by_role
            .iter()
            .map(|c| (c.group_key.clone(), c.n))
            .collect(),
        by_agent: conversations_by_agent(figures),
        by_day: conversations_by_day(figures),
    }
}

/// The totals of the matching usage records and two groupings of them.
type Figures = (Totals, Vec<Group>, Vec<Group>);

/// The figures of the records `filter` matches: its totals, its groups by `first` (at most
/// `limit` of them) and its groups by `second` (the first ones again when they are the same).
fn figures(
    conn: &mut DbConnection, org: &str, filter: &UsageFilter,
    (first, limit): (GroupColumn, Option<i64>), second: GroupColumn,
) -> StoreResult<Figures> {
    let totals = store::totals(conn, org, filter)?;
    let firsts = store::grouped(conn, org, filter, first, limit)?;
    let seconds = if first == second && limit.is_none() {
        firsts.clone()
    } else {
        store::grouped(conn, org, filter, second, None)?
    };
    Ok((totals, firsts, seconds))
}

impl Handlers {
    /// [`figures`] of the caller's organization.
    async fn usage_figures(
        &self, caller: &Caller, filter: UsageFilter, first: (GroupColumn, Option<i64>),
        second: GroupColumn,
    ) -> Result<Figures, Failure> {
        self.run_for(caller, NOT_FOUND, move |conn, org| {
            figures(conn, org, &filter, first, second)
        })
        .await
    }
}

impl UsageApi for Handlers {
    async fn get_usage_stats(
        &self, caller: Caller, params: GetUsageStatsParams,
    ) -> Reply<GetUsageStatsResponse> {
        let filter = params.filter(params.agent_id.clone(), None);
        let w = filter.window.clone();
        let group_by = params.group_by.unwrap_or(UsageGroupBy::Day);
        let by = (column_of_group(group_by), None);
        let figures = self
            .usage_figures(&caller, filter, by, GroupColumn::Model)
            .await?;
        let stats = stats_of(&w, &params.agent_id, group_by, figures);
        Ok(GetUsageStatsResponse::Ok(Json(stats)))
    }

    async fn get_usage_costs(
        &self, caller: Caller, params: GetUsageCostsParams,
    ) -> Reply<GetUsageCostsResponse> {
        let entity_type = params.entity_type.unwrap_or(UsageEntityType::Agent);
        let column = column_of_entity(entity_type);
        let filter = params.filter(None, Some((column, params.entity_id.clone())));
        let w = filter.window.clone();
        let by = (column, Some(MAX_ENTRIES));
        let figures = self
            .usage_figures(&caller, filter, by, GroupColumn::Day)
            .await?;
        let costs = costs_of(&w, entity_type, params.entity_id, figures);
        Ok(GetUsageCostsResponse::Ok(Json(costs)))
    }

    async fn get_conversation_analytics(
        &self, caller: Caller, params: GetConversationAnalyticsParams,
    ) -> Reply<GetConversationAnalyticsResponse> {
        let (w, agent) = (params.window(), params.agent_id.clone());
        let win = w.clone();
        let figures = self
            .run_for(&caller, NOT_FOUND, move |conn, org| {
                store::conversation_figures(conn, org, &win, agent.as_deref())
            })
            .await?;
        let analytics = analytics_of(&w, &params.agent_id, &figures);
        Ok(GetConversationAnalyticsResponse::Ok(Json(analytics)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_normalize_to_storage_text() {
        assert_eq!(bound("2026-01-15", false), "2026-01-15T00:00:00.000000Z");
        assert_eq!(bound("2026-01-15", true), "2026-01-15T23:59:59.999999Z");
        assert_eq!(
            bound("2026-01-15T10:00:00Z", false),
            "2026-01-15T10:00:00.000000Z"
        );
        assert_eq!(
            bound("2026-01-15T10:00:00.1234567Z", true),
            "2026-01-15T10:00:00.123456Z"
        );
        let w = window(
            Some("2026-01-10"),
            Some("2026-01-12"),
            Some("2026-01-20"),
            Some("2026-01-18"),
        );
        assert_eq!(w.start.as_deref(), Some("2026-01-12T00:00:00.000000Z"));
        assert_eq!(w.end.as_deref(), Some("2026-01-18T23:59:59.999999Z"));
        assert_eq!(usd(21_000_000), 0.021);
    }
}
