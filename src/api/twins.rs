//! Digital twins and their simulations (AIMatrix). Data-source connection strings are
//! write-only, sealed at rest; `simulate` runs a built-in model of [`crate::sim`] at once
//! (201) or in the background (202, then poll) as a job ([`crate::simulations`]).

use std::collections::BTreeMap;

use agentplane_api::Json;
use agentplane_api::models::{
    DataSource, Simulation, SimulationList, SimulationModel, SimulationRequest, SimulationResults,
    SimulationStatus, Twin, TwinInput, TwinList, UpdateFrequency,
};
use agentplane_api::*;
use poem_openapi::types::{MaybeUndefined, ParseFromJSON, ToJSON};
use serde_json::{Map, Value, json};

use super::Handlers;
use super::idem::{self, Created, NewKeyed};
use super::resource::Resource;
use crate::auth::Caller;
use crate::db::crud::Child;
use crate::db::sql::Page;
use crate::db::twins::{self as store, SimulationRow, TwinChanges, TwinRow};
use crate::db::{DbConnection, StoreError, StoreResult};
use crate::error::{Failure, Kind, detail, store_error};
use crate::simulations::model as sim;

const SIMULATION_NOT_FOUND: &str = "SIMULATION_NOT_FOUND";
const SIMULATE_OPERATION: &str = "simulateTwin";
/// Monte Carlo runs when `options.runs` is left out.
pub const DEFAULT_RUNS: i64 = 1000;

fn maybe<T: Clone>(v: &Option<T>) -> MaybeUndefined<T> {
    match v {
        Some(x) => MaybeUndefined::Value(x.clone()),
        None => MaybeUndefined::Null,
    }
}

impl Resource for Twin {
    type Row = TwinRow;
    const NOT_FOUND: &'static str = "TWIN_NOT_FOUND";

    fn from_row(row: &TwinRow) -> Result<Twin, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("twin {}: {what}", row.id));
        let body: Value =
            serde_json::from_str(&row.content.body).map_err(|e| corrupt(e.to_string()))?;
        let parse = |key: &str| body.get(key).cloned().unwrap_or(Value::Null);
        let data_sources = Vec::<DataSource>::parse_from_json(Some(parse("data_sources")))
            .map_err(|e| corrupt(e.into_message()))?;
        let simulation_models =
            Vec::<SimulationModel>::parse_from_json(Some(parse("simulation_models")))
                .map_err(|e| corrupt(e.into_message()))?;
        let state = BTreeMap::<String, f64>::parse_from_json(Some(parse("state")))
            .map_err(|e| corrupt(e.into_message()))?;
        Ok(Twin {
            id: row.id.clone(),
            name: row.content.name.clone(),
            type_: row.content.twin_type.clone(),
            description: row.content.description.clone(),
            data_sources,
            update_frequency: body
                .get("update_frequency")
                .and_then(Value::as_str)
                .and_then(UpdateFrequency::from_wire)
                .unwrap_or(UpdateFrequency::Manual),
            simulation_models,
            state,
            version: row.version,
            created_at: row.created_at.clone(),
            updated_at: row.updated_at.clone(),
        })
    }
}

/// The columns of a twin as sent. A data source without a connection string keeps the one
/// stored at its position in `previous_secrets`.
fn changes_of(
    input: &TwinInput, previous_secrets: &str, crypto: &crate::crypto::Crypto,
) -> StoreResult<TwinChanges> {
    let previous: Vec<Option<String>> = if previous_secrets.is_empty() {
        Vec::new()
    } else {
        let plain = crypto
            .decrypt(previous_secrets)
            .map_err(|e| StoreError::Corrupt(format!("twin secrets: {e}")))?;
        serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Corrupt(format!("twin secrets: {e}")))?
    };
    let sources = input.data_sources.clone().unwrap_or_default();
    let mut secrets = Vec::with_capacity(sources.len());
    let mut public = Vec::with_capacity(sources.len());
    for (i, source) in sources.iter().enumerate() {
        let secret = source
            .connection_string
            .clone()
            .or_else(|| previous.get(i).cloned().flatten());
        let mut entry = Map::new();
        entry.insert("type".into(), source.type_.clone().into());
        if let Some(n) = &source.name {
            entry.insert("name".into(), n.clone().into());
        }
        entry.insert(
            "tables".into(),
            json!(source.tables.clone().unwrap_or_default()),
        );
        entry.insert("connection_string_set".into(), secret.is_some().into());
        public.push(Value::Object(entry));
        secrets.push(secret);
    }
    let models = input
        .simulation_models
        .clone()
        .unwrap_or_else(|| SimulationModel::ALL.to_vec());
    let body = json!({
        "data_sources": public,
        "update_frequency": input.update_frequency.unwrap_or(UpdateFrequency::Manual).as_str(),
        "simulation_models": models.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "state": input.state.clone().unwrap_or_default(),
    });
    let sealed = if secrets.iter().any(Option::is_some) {
        crypto.encrypt(Value::from(secrets.clone()).to_string().as_bytes())
    } else {
        String::new()
    };
    Ok(TwinChanges {
        name: input.name.clone(),
        twin_type: input.type_.clone(),
        description: input.description.clone(),
        body: body.to_string(),
        secrets: sealed,
    })
}

pub(crate) fn row_to_simulation(row: &SimulationRow) -> Result<Simulation, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("simulation {}: {what}", row.id));
    let results = match &row.results {
        Some(text) => {
            let v: Value = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
            MaybeUndefined::Value(
                SimulationResults::parse_from_json(Some(v))
                    .map_err(|e| corrupt(e.into_message()))?,
            )
        }
        None => MaybeUndefined::Null,
    };
    Ok(Simulation {
        id: row.id.clone(),
        twin_id: row.twin_id.clone(),
        scenario: row.scenario.clone(),
        model: SimulationModel::from_wire(&row.model).ok_or_else(|| corrupt("model".into()))?,
        parameters: serde_json::from_str(&row.parameters).map_err(|e| corrupt(e.to_string()))?,
        status: SimulationStatus::from_wire(&row.status).ok_or_else(|| corrupt("status".into()))?,
        run_async: row.run_async != 0,
        notification_webhook: maybe(&row.notification_webhook),
        notification_secret: None,
        seed: row.seed,
        runs: row.runs,
        results,
        error: maybe(&row.error),
        duration_ms: match (&row.started_at, &row.finished_at) {
            (Some(s), Some(f)) => {
                duration_ms(s, f).map_or(MaybeUndefined::Null, MaybeUndefined::Value)
            }
            _ => MaybeUndefined::Null,
        },
        created_at: row.created_at.clone(),
        started_at: maybe(&row.started_at),
        finished_at: maybe(&row.finished_at),
    })
}

/// Milliseconds between two stored timestamps.
fn duration_ms(started: &str, finished: &str) -> Option<i64> {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    Some(
        (parse(finished)? - parse(started)?)
            .num_milliseconds()
            .max(0),
    )
}

fn unprocessable(rejections: Vec<sim::Rejection>, rid: &str) -> Failure {
    let message = rejections
        .iter()
        .map(|r| r.message.clone())
        .collect::<Vec<_>>()
        .join("; ");
    Failure::with_details(
        Kind::Unprocessable,
        "SIMULATION_REJECTED",
        message,
        rejections
            .iter()
            .map(|r| detail(&r.field, r.code, r.message.clone()))
            .collect(),
        rid,
    )
}

/// The model a simulation runs: the one asked for, which the twin must enable, else the
/// twin's first.
fn chosen_model(
    twin: &Twin, asked: Option<SimulationModel>, rid: &str,
) -> Result<SimulationModel, Failure> {
    let not_enabled = |message: String| {
        Failure::on_field(
            Kind::Unprocessable,
            "SIMULATION_REJECTED",
            "model",
            "not_enabled",
            message,
            rid,
        )
    };
    match asked {
        Some(m) if twin.simulation_models.contains(&m) => Ok(m),
        Some(m) => Err(not_enabled(format!(
            "this twin does not enable the {} model",
            m.as_str()
        ))),
        None => twin
            .simulation_models
            .first()
            .copied()
            .ok_or_else(|| not_enabled("this twin enables no simulation model".into())),
    }
}

/// The built-in model's plan for the twin's state and the request's parameters.
fn plan_of(
    model: SimulationModel, twin: &Twin, parameters: &Value, rid: &str,
) -> Result<sim::Plan, Failure> {
    let sim_model = sim::Model::from_name(model.as_str()).ok_or_else(|| {
        Failure::with_details(
            Kind::Unprocessable,
            "SIMULATION_REJECTED",
            "unknown model",
            vec![detail("model", "unknown", "no such built-in model")],
            rid,
        )
    })?;
    sim::plan(sim_model, &twin.state, parameters).map_err(|r| unprocessable(r, rid))
}

/// A checked simulate request, ready to run or queue.
struct NewSimulation {
    row: SimulationRow,
    plan: sim::Plan,
    /// The notification's signing secret: the one given, else `generated`.
    secret: Option<String>,
    /// A secret generated for a webhook sent without one, shown once.
    generated: Option<String>,
    request_hash: String,
}

/// The queued row of a simulate request on `twin`, checked against it.
fn new_simulation(
    caller: &Caller, twin: &Twin, body: &SimulationRequest,
) -> Result<NewSimulation, Failure> {
    let rid = caller.request_id.as_str();
    let model = chosen_model(twin, body.model, rid)?;
    let parameters = body.parameters.clone().unwrap_or(Value::Object(Map::new()));
    let plan = plan_of(model, twin, &parameters, rid)?;
    let options = body.options.clone().unwrap_or_default();
    let seed = options
        .seed
        .unwrap_or_else(|| i64::from(rand::random::<u32>()));
    let generated = (options.notification_webhook.is_some()
        && options.notification_secret.is_none())
    .then(crate::webhooks::generate_secret);
    let secret = options.notification_secret.clone().or(generated.clone());
    let mut hash_input = body.to_json().unwrap_or_default();
    hash_input["twin_id"] = Value::String(twin.id.clone());
    let row = SimulationRow {
        id: crate::ids::new_id("sim"),
        org_id: caller.org_id.clone(),
        twin_id: twin.id.clone(),
        scenario: body.scenario.clone(),
        model: model.as_str().to_string(),
        status: "queued".into(),
        parameters: parameters.to_string(),
        seed,
        runs: options.runs.unwrap_or(DEFAULT_RUNS),
        run_async: i64::from(options.run_async.unwrap_or(false)),
        notification_webhook: options.notification_webhook.clone(),
        results: None,
        error: None,
        created_at: crate::ids::now(),
        started_at: None,
        finished_at: None,
    };
    Ok(NewSimulation {
        row,
        plan,
        secret,
        generated,
        request_hash: idem::request_hash(&hash_input),
    })
}

/// Runs a synchronous simulation to its end, recording its outcome in `row`.
async fn run_now(row: &mut SimulationRow, plan: sim::Plan) {
    let outcome = crate::simulations::compute(plan, row.seed as u64, row.runs as usize).await;
    row.started_at = Some(row.created_at.clone());
    row.finished_at = Some(crate::ids::now());
    match outcome {
        Ok(r) => {
            row.status = "completed".into();
            row.results = Some(r);
        }
        Err(e) => {
            row.status = "failed".into();
            row.error = Some(e);
        }
    }
}

/// A new twin of `org_id` with the columns `c`.
fn new_row(org_id: &str, c: TwinChanges) -> TwinRow {
    TwinRow::new(org_id, crate::ids::new_id("twin"), c)
}

impl Handlers {
    /// Checks the request against the twin, then runs it (or queues it): the simulation,
    /// whether it is queued, and the notification secret generated for it (shown once).
    async fn simulate(
        &self, caller: &Caller, params: SimulateTwinParams,
    ) -> Result<(Simulation, bool), Failure> {
        let rid = caller.request_id.as_str();
        let twin = self.item::<Twin>(caller, params.twin_id).await?;
        let mut new = new_simulation(caller, &twin, &params.body)?;
        let run_async = new.row.run_async != 0;
        if !run_async {
            run_now(&mut new.row, new.plan.clone()).await;
        }
        let generated = new.generated.take();
        let created = self
            .record_simulation(new, params.idempotency_key)
            .await
            .map_err(store_error(SIMULATION_NOT_FOUND, rid))?;
        let (row, queued, generated) = match created {
            Created::New(row) => {
                if run_async {
                    self.pool.wake();
                } else {
                    self.events.wake();
                }
                (row, run_async, generated)
            }
            Created::Replayed(row) => {
                let queued = row.run_async != 0;
                (row, queued, None)
            }
            Created::KeyReused => return Err(idem::key_reused(rid)),
        };
        let mut s = row_to_simulation(&row).map_err(store_error(SIMULATION_NOT_FOUND, rid))?;
        s.notification_secret = generated;
        Ok((s, queued))
    }

    /// Stores a simulation once per `Idempotency-Key`: queued with its job, or finished with
    /// its notification.
    async fn record_simulation(
        &self, new: NewSimulation, key: Option<String>,
    ) -> StoreResult<Created<SimulationRow>> {
        let NewSimulation {
            row,
            plan,
            secret,
            request_hash,
            ..
        } = new;
        let (org, twin_id) = (row.org_id.clone(), row.twin_id.clone());
        let keyed = NewKeyed {
            org_id: org.clone(),
            operation: SIMULATE_OPERATION,
            key,
            request_hash,
            resource_id: row.id.clone(),
        };
        let crypto = self.crypto.clone();
        idem::create_keyed(
            &self.store,
            keyed,
            move |conn| {
                store::insert_simulation(conn, &row)?;
                if row.status == "queued" {
                    crate::simulations::enqueue(conn, &crypto, &row, &plan, secret.as_deref())?;
                } else {
                    crate::simulations::finished(conn, &crypto, &row, secret.as_deref())?;
                }
                Ok(row.clone())
            },
            move |conn, id| SimulationRow::get(conn, &org, &twin_id, id),
        )
        .await
    }
}

impl TwinsApi for Handlers {
    async fn list_twins(
        &self, caller: Caller, params: ListTwinsParams,
    ) -> Reply<ListTwinsResponse> {
        let ty = params.type_.clone();
        let (data, pagination) = self
            .list_page::<Twin>(&caller, &params, move |conn, org, page| {
                store::list(conn, org, ty.as_deref(), page)
            })
            .await?;
        Ok(ListTwinsResponse::Ok(Json(TwinList { data, pagination })))
    }

    async fn create_twin(
        &self, caller: Caller, params: CreateTwinParams,
    ) -> Reply<CreateTwinResponse> {
        let changes = changes_of(&params.body, "", &self.crypto)
            .map_err(store_error(Twin::NOT_FOUND, &caller.request_id))?;
        let row = new_row(&caller.org_id, changes);
        let (twin, location, tag) = self.create::<Twin>(&caller, &params, row).await?;
        Ok(CreateTwinResponse::Created(Json(twin), location, tag))
    }

    async fn get_twin(&self, caller: Caller, params: GetTwinParams) -> Reply<GetTwinResponse> {
        let answer = self.item_if_changed::<Twin>(&caller, params.twin_id, params.if_none_match);
        Ok(answer.await?.into())
    }

    async fn replace_twin(
        &self, caller: Caller, params: ReplaceTwinParams,
    ) -> Reply<ReplaceTwinResponse> {
        let ReplaceTwinParams {
            twin_id,
            if_match,
            body,
        } = params;
        let crypto = self.crypto.clone();
        let (twin, tag) = self
            .replace::<Twin>(&caller, twin_id, if_match, move |_, current| {
                changes_of(&body, &current.content.secrets, &crypto).map(Ok)
            })
            .await?;
        Ok(ReplaceTwinResponse::Ok(Json(twin), tag))
    }

    async fn delete_twin(
        &self, caller: Caller, params: DeleteTwinParams,
    ) -> Reply<DeleteTwinResponse> {
        self.remove::<Twin>(&caller, params.twin_id).await?;
        Ok(DeleteTwinResponse::NoContent)
    }

    async fn simulate_twin(
        &self, caller: Caller, params: SimulateTwinParams,
    ) -> Reply<SimulateTwinResponse> {
        let (s, queued) = self.simulate(&caller, params).await?;
        let location = format!("/v1/twins/{}/simulations/{}", s.twin_id, s.id);
        if queued {
            return Ok(SimulateTwinResponse::Accepted(Json(s), location));
        }
        Ok(SimulateTwinResponse::Created(Json(s), location))
    }

    async fn list_twin_simulations(
        &self, caller: Caller, params: ListTwinSimulationsParams,
    ) -> Reply<ListTwinSimulationsResponse> {
        let (twin_id, status) = (params.twin_id.clone(), params.status.map(|s| s.as_str()));
        let list = move |conn: &mut DbConnection, org: &str, page: &Page| {
            store::list_simulations(conn, org, &twin_id, status, page)
        };
        let (data, pagination) = self
            .page_of(&caller, &params, Twin::NOT_FOUND, list, row_to_simulation)
            .await?;
        let list = SimulationList { data, pagination };
        Ok(ListTwinSimulationsResponse::Ok(Json(list)))
    }

    async fn get_twin_simulation(
        &self, caller: Caller, params: GetTwinSimulationParams,
    ) -> Reply<GetTwinSimulationResponse> {
        let (twin_id, id) = (params.twin_id, params.simulation_id);
        let row: SimulationRow = self
            .child(&caller, twin_id, id, SIMULATION_NOT_FOUND)
            .await?;
        let s = row_to_simulation(&row)
            .map_err(store_error(SIMULATION_NOT_FOUND, &caller.request_id))?;
        Ok(GetTwinSimulationResponse::Ok(Json(s)))
    }
}
