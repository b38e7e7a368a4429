//! The built-in simulation models of digital twins: seeded Monte Carlo projections.
//!
//! Both models project daily demand over `duration_days`: a base level from the twin's state
//! (`base_demand`, compounding `growth_rate`), a scenario spike (`increase_percentage` on the
//! share of demand in `affected_regions`), and multiplicative log-normal noise that follows an
//! AR(1) process, so bad days cluster the way real demand shocks do. `capacity_planning` adds
//! capacity (`capacity`, changed by `capacity_change_percentage`) that loses a random
//! `capacity_volatility` share each day, and reports utilization and shortfall.
//!
//! Runs advance day by day together, so memory is one value per run and metric however long
//! the horizon; the generator is ChaCha8 seeded explicitly, so a seed, a state and a set of
//! parameters always give the same numbers. Nothing here knows about HTTP or storage.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A built-in model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    DemandForecast,
    CapacityPlanning,
}

impl Model {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "demand_forecast" => Some(Model::DemandForecast),
            "capacity_planning" => Some(Model::CapacityPlanning),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Model::DemandForecast => "demand_forecast",
            Model::CapacityPlanning => "capacity_planning",
        }
    }

    /// The parameters the model reads.
    fn parameters(self) -> &'static [&'static str] {
        match self {
            Model::DemandForecast => &[
                "increase_percentage",
                "duration_days",
                "affected_regions",
                "volatility",
            ],
            Model::CapacityPlanning => &[
                "increase_percentage",
                "duration_days",
                "affected_regions",
                "volatility",
                "capacity_change_percentage",
                "target_utilization",
            ],
        }
    }
}

/// A parameter or state variable the model cannot use: the field, a code and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

/// Everything a run needs, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub model: Model,
    pub days: usize,
    base_demand: f64,
    growth_rate: f64,
    volatility: f64,
    /// The multiplier of demand during the scenario.
    spike: f64,
    capacity: f64,
    capacity_volatility: f64,
    target_utilization: f64,
}

/// A metric's distribution over the runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub mean: f64,
}

/// One day of the projection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Period {
    pub period: i64,
    pub metrics: BTreeMap<&'static str, Percentiles>,
}

/// What a simulation computed; serializes as the spec's `SimulationResults`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    pub periods: i64,
    pub series: Vec<Period>,
    pub summary: BTreeMap<&'static str, f64>,
}

fn number(
    params: &serde_json::Map<String, Value>, name: &str, range: (f64, f64), integer: bool,
    out: &mut Vec<Rejection>,
) -> Option<f64> {
    let value = params.get(name)?;
    let field = format!("parameters.{name}");
    let Some(n) = value.as_f64() else {
        out.push(Rejection {
            field,
            code: "type",
            message: format!("{name} must be a number"),
        });
        return None;
    };
    if integer && n.fract() != 0.0 {
        out.push(Rejection {
            field,
            code: "type",
            message: format!("{name} must be a whole number"),
        });
        return None;
    }
    if !(range.0..=range.1).contains(&n) {
        out.push(Rejection {
            field,
            code: "range",
            message: format!("{name} must be between {} and {}", range.0, range.1),
        });
        return None;
    }
    Some(n)
}

fn state_value(
    state: &BTreeMap<String, f64>, name: &str, default: f64, range: (f64, f64),
    out: &mut Vec<Rejection>,
) -> f64 {
    let value = state.get(name).copied().unwrap_or(default);
    if !(range.0..=range.1).contains(&value) {
        out.push(Rejection {
            field: format!("state.{name}"),
            code: "range",
            message: format!(
                "the twin's {name} must be between {} and {} for this model",
                range.0, range.1
            ),
        });
    }
    value
}

/// Rejects the parameters `model` does not read.
fn unknown_parameters(
    model: Model, params: &serde_json::Map<String, Value>, out: &mut Vec<Rejection>,
) {
    for key in params.keys() {
        if !model.parameters().contains(&key.as_str()) {
            out.push(Rejection {
                field: format!("parameters.{key}"),
                code: "unknown_parameter",
                message: format!(
                    "{} does not read {key}; it reads {}",
                    model.name(),
                    model.parameters().join(", ")
                ),
            });
        }
    }
}

/// The `affected_regions` parameter (none when absent).
fn affected_regions(
    params: &serde_json::Map<String, Value>, out: &mut Vec<Rejection>,
) -> Vec<String> {
    let mut regions: Vec<String> = Vec::new();
    match params.get("affected_regions") {
        None => {}
        Some(Value::Array(items)) if items.len() <= 50 => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(r) if !r.is_empty() && r.len() <= 64 => regions.push(r.to_string()),
                    _ => out.push(Rejection {
                        field: format!("parameters.affected_regions[{i}]"),
                        code: "type",
                        message: "a region is a non-empty string of at most 64 characters".into(),
                    }),
                }
            }
        }
        Some(_) => out.push(Rejection {
            field: "parameters.affected_regions".into(),
            code: "type",
            message: "affected_regions must be an array of at most 50 region codes".into(),
        }),
    }
    regions
}

/// The share of demand the spike applies to: the affected regions' shares, or all of it
/// when the state records no shares for them.
fn affected_share(state: &BTreeMap<String, f64>, regions: &[String]) -> f64 {
    let shares: Vec<f64> = regions
        .iter()
        .filter_map(|r| state.get(&format!("share.{r}")).copied())
        .collect();
    if regions.is_empty() || shares.is_empty() {
        1.0
    } else {
        shares.iter().map(|s| s.max(0.0)).sum::<f64>().min(1.0)
    }
}

/// Checks the scenario's parameters and the twin's state for `model`.
pub fn plan(
    model: Model, state: &BTreeMap<String, f64>, parameters: &Value,
) -> Result<Plan, Vec<Rejection>> {
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let params = match parameters {
        Value::Object(m) => m,
        Value::Null => &empty,
        _ => {
            return Err(vec![Rejection {
                field: "parameters".into(),
                code: "type",
                message: "parameters must be an object".into(),
            }]);
        }
    };
    unknown_parameters(model, params, &mut out);
    let increase = number(
        params,
        "increase_percentage",
        (-100.0, 1000.0),
        false,
        &mut out,
    );
    let days = number(params, "duration_days", (1.0, 365.0), true, &mut out);
    let volatility = number(params, "volatility", (0.0, 2.0), false, &mut out);
    let capacity_change = number(
        params,
        "capacity_change_percentage",
        (-100.0, 1000.0),
        false,
        &mut out,
    );
    let target = number(params, "target_utilization", (0.1, 1.0), false, &mut out);
    let regions = affected_regions(params, &mut out);
    let base_demand = state_value(state, "base_demand", 1000.0, (0.0, 1e12), &mut out);
    let growth_rate = state_value(state, "growth_rate", 0.0, (-0.5, 0.5), &mut out);
    let state_volatility = state_value(state, "demand_volatility", 0.1, (0.0, 2.0), &mut out);
    let (capacity, capacity_volatility) = if model == Model::CapacityPlanning {
        (
            state_value(state, "capacity", base_demand * 1.2, (1e-6, 1e12), &mut out),
            state_value(state, "capacity_volatility", 0.05, (0.0, 1.0), &mut out),
        )
    } else {
        (0.0, 0.0)
    };
    if !out.is_empty() {
        return Err(out);
    }
    let share = affected_share(state, &regions);
    Ok(Plan {
        model,
        days: days.map_or(30, |d| d as usize),
        base_demand,
        growth_rate,
        volatility: volatility.unwrap_or(state_volatility),
        spike: 1.0 + increase.unwrap_or(0.0) / 100.0 * share,
        capacity: capacity * (1.0 + capacity_change.unwrap_or(0.0) / 100.0),
        capacity_volatility,
        target_utilization: target.unwrap_or(0.85),
    })
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The p10, p50, p90 and mean of `values` (reordered in place).
fn percentiles(values: &mut [f64]) -> Percentiles {
    let n = values.len();
    if n == 0 {
        return Percentiles {
            p10: 0.0,
            p50: 0.0,
            p90: 0.0,
            mean: 0.0,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut at = |q: f64| {
        let k = ((n - 1) as f64 * q).round() as usize;
        *values.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
    };
    let p10 = at(0.1);
    let p50 = at(0.5);
    let p90 = at(0.9);
    Percentiles {
        p10: round(p10),
        p50: round(p50),
        p90: round(p90),
        mean: round(mean),
    }
}

/// Six significant decimals are plenty and keep the JSON short.
fn round(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1e6).round() / 1e6
    } else {
        0.0
    }
}

/// How strongly one day's shock carries into the next.
const PERSISTENCE: f64 = 0.6;

/// Runs `runs` Monte Carlo paths of `plan` from `seed`.
pub fn run(plan: &Plan, seed: u64, runs: usize) -> Results {
    let runs = runs.max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vol = plan.volatility;
    // Keeps the noise's mean at 1 (the AR(1) level's stationary variance is vol²/(1-ρ²)).
    let drift = -0.5 * vol * vol / (1.0 - PERSISTENCE * PERSISTENCE);
    let capacity = plan.model == Model::CapacityPlanning;
    let mut level = vec![0.0f64; runs];
    let mut total = vec![0.0f64; runs];
    let mut peak = vec![0.0f64; runs];
    let mut peak_utilization = vec![0.0f64; runs];
    let mut short_total = vec![0.0f64; runs];
    let mut demand = vec![0.0f64; runs];
    let mut cap = vec![0.0f64; runs];
    let mut utilization = vec![0.0f64; runs];
    let mut shortfall = vec![0.0f64; runs];
    let mut series = Vec::with_capacity(plan.days);
    let mut baseline_total = 0.0;
    for day in 1..=plan.days {
        let trend = plan.base_demand * (1.0 + plan.growth_rate).powi(day as i32);
        baseline_total += trend;
        for r in 0..runs {
            level[r] = PERSISTENCE * level[r] + vol * normal(&mut rng);
            let d = trend * plan.spike * (level[r] + drift).exp();
            demand[r] = d;
            total[r] += d;
            peak[r] = peak[r].max(d);
            if capacity {
                let outage = (normal(&mut rng).abs() * plan.capacity_volatility).min(1.0);
                let c = plan.capacity * (1.0 - outage);
                cap[r] = c;
                let u = if c > 0.0 { d / c } else { 0.0 };
                utilization[r] = u;
                peak_utilization[r] = peak_utilization[r].max(u);
                let s = (d - c).max(0.0);
                shortfall[r] = s;
                short_total[r] += s;
            }
        }
        let mut metrics = BTreeMap::new();
        metrics.insert("demand", percentiles(&mut demand));
        if capacity {
            metrics.insert("capacity", percentiles(&mut cap));
            metrics.insert("utilization", percentiles(&mut utilization));
            metrics.insert("shortfall", percentiles(&mut shortfall));
        }
        series.push(Period {
            period: day as i64,
            metrics,
        });
    }
    let paths = Paths {
        total,
        peak,
        peak_utilization,
        short_total,
    };
    Results {
        periods: plan.days as i64,
        series,
        summary: summary(plan, baseline_total, paths),
    }
}

/// What each run accumulated over the horizon.
struct Paths {
    total: Vec<f64>,
    peak: Vec<f64>,
    peak_utilization: Vec<f64>,
    short_total: Vec<f64>,
}

/// The summary of the runs' `paths` against the trend's `baseline_total`.
fn summary(plan: &Plan, baseline_total: f64, mut paths: Paths) -> BTreeMap<&'static str, f64> {
    let runs = paths.total.len();
    let mut summary = BTreeMap::new();
    let totals = percentiles(&mut paths.total);
    summary.insert("baseline_total_demand", round(baseline_total));
    summary.insert("total_demand_p10", totals.p10);
    summary.insert("total_demand_p50", totals.p50);
    summary.insert("total_demand_p90", totals.p90);
    summary.insert("total_demand_mean", totals.mean);
    summary.insert(
        "increase_percentage_p50",
        if baseline_total > 0.0 {
            round((totals.p50 / baseline_total - 1.0) * 100.0)
        } else {
            0.0
        },
    );
    let peaks = percentiles(&mut paths.peak);
    summary.insert("peak_daily_demand_p50", peaks.p50);
    summary.insert("peak_daily_demand_p90", peaks.p90);
    if plan.model == Model::CapacityPlanning {
        let with_shortfall = paths.short_total.iter().filter(|s| **s > 0.0).count();
        summary.insert(
            "shortfall_probability",
            round(with_shortfall as f64 / runs as f64),
        );
        let shorts = percentiles(&mut paths.short_total);
        summary.insert("expected_shortfall_units", shorts.mean);
        summary.insert("shortfall_units_p90", shorts.p90);
        summary.insert(
            "peak_utilization_p90",
            percentiles(&mut paths.peak_utilization).p90,
        );
        summary.insert("planned_capacity", round(plan.capacity));
        summary.insert(
            "recommended_capacity",
            round(peaks.p90 / plan.target_utilization),
        );
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> BTreeMap<String, f64> {
        [
            ("base_demand".to_string(), 1000.0),
            ("capacity".to_string(), 1100.0),
            ("share.US".to_string(), 0.5),
            ("share.EU".to_string(), 0.3),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let p = plan(
            Model::CapacityPlanning,
            &state(),
            &json!({"increase_percentage": 30, "duration_days": 7, "affected_regions": ["US", "EU"]}),
        )
        .expect("valid");
        let a = run(&p, 42, 500);
        assert_eq!(a, run(&p, 42, 500));
        assert_ne!(a, run(&p, 43, 500));
        assert_eq!(a.series.len(), 7);
        let day = &a.series[0].metrics["demand"];
        assert!(day.p10 < day.p50 && day.p50 < day.p90, "{day:?}");
    }

    #[test]
    fn a_spike_raises_demand_by_the_affected_share() {
        let base = plan(
            Model::DemandForecast,
            &state(),
            &json!({"duration_days": 30}),
        )
        .expect("ok");
        let spike = plan(
            Model::DemandForecast,
            &state(),
            &json!({"duration_days": 30, "increase_percentage": 50, "affected_regions": ["US", "EU"]}),
        )
        .expect("ok");
        let b = run(&base, 7, 2000).summary["total_demand_mean"];
        let s = run(&spike, 7, 2000).summary["total_demand_mean"];
        // 50% on 80% of demand: +40%, within Monte Carlo noise.
        let ratio = s / b;
        assert!((ratio - 1.4).abs() < 0.05, "ratio {ratio}");
        // The noise keeps its mean: the baseline's mean total is near 30 × 1000.
        assert!((b / 30_000.0 - 1.0).abs() < 0.05, "baseline {b}");
    }

    #[test]
    fn capacity_below_demand_shows_shortfall_and_a_recommendation() {
        let p = plan(
            Model::CapacityPlanning,
            &state(),
            &json!({"increase_percentage": 30, "duration_days": 14}),
        )
        .expect("ok");
        let r = run(&p, 1, 1000);
        assert!(r.summary["shortfall_probability"] > 0.9, "{:?}", r.summary);
        assert!(
            r.summary["recommended_capacity"] > 1300.0,
            "{:?}",
            r.summary
        );
        assert!(r.series[3].metrics["utilization"].p50 > 1.0);
    }

    #[test]
    fn unknown_or_bad_parameters_are_named() {
        let err = plan(
            Model::DemandForecast,
            &state(),
            &json!({"increase_percentage": "lots", "duration_days": 1.5, "capacity_change_percentage": 5, "surge": 1}),
        )
        .expect_err("rejected");
        let fields: Vec<&str> = err.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "parameters.capacity_change_percentage",
                "parameters.surge",
                "parameters.increase_percentage",
                "parameters.duration_days"
            ]
        );
        let mut bad_state = state();
        bad_state.insert("capacity".into(), 0.0);
        let err = plan(Model::CapacityPlanning, &bad_state, &json!({})).expect_err("rejected");
        assert_eq!(err[0].field, "state.capacity");
    }

    #[test]
    fn ten_thousand_runs_are_measured() {
        let month = json!({"increase_percentage": 30, "duration_days": 30});
        for model in [Model::DemandForecast, Model::CapacityPlanning] {
            let p = plan(model, &state(), &month).expect("ok");
            let started = std::time::Instant::now();
            let r = run(&p, 9, 10_000);
            // A measurement, printed with `--nocapture`; not a timed assertion.
            println!(
                "simulation: {} 10,000 runs x 30 days in {:?}",
                model.name(),
                started.elapsed()
            );
            assert_eq!(r.series.len(), 30);
        }
    }
}
