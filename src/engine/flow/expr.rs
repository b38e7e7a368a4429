//! Condition expressions: JSONLogic (jsonlogic.com) through the `datalogic-rs` crate, checked
//! when a flow is saved and evaluated when a `condition` node runs.

use std::sync::OnceLock;

use datalogic_rs::Engine;
use serde_json::Value;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(Engine::new)
}

/// Whether `expression` is a JSONLogic rule the engine accepts: a boolean, or an object that
/// compiles and calls only operators the engine knows (the crate compiles an unknown
/// operator and fails only when it is evaluated, so the names are checked here).
pub(super) fn check(expression: &Value) -> Result<(), String> {
    match expression {
        Value::Bool(_) => Ok(()),
        Value::Object(_) => {
            engine()
                .compile(expression)
                .map_err(|e| format!("not a JSONLogic expression: {e}"))?;
            match unknown_operator(expression) {
                Some(op) => Err(format!("`{op}` is not a JSONLogic operator")),
                None => Ok(()),
            }
        }
        _ => Err("must be a JSONLogic expression (an object) or a boolean".to_string()),
    }
}

/// The first operator in `rule` the engine does not know.
fn unknown_operator(rule: &Value) -> Option<String> {
    match rule {
        Value::Object(map) => {
            if let [(op, args)] = map.iter().collect::<Vec<_>>().as_slice() {
                let known = engine().builtin_operator_names().any(|n| n == op.as_str())
                    || engine().has_custom_operator(op);
                if !known {
                    return Some(op.to_string());
                }
                return unknown_operator(args);
            }
            map.values().find_map(unknown_operator)
        }
        Value::Array(items) => items.iter().find_map(unknown_operator),
        _ => None,
    }
}

/// What `expression` evaluates to over `data`.
pub(super) fn evaluate(expression: &Value, data: &Value) -> Result<Value, String> {
    engine()
        .eval_into::<Value, _, _>(expression, data)
        .map_err(|e| format!("the condition could not be evaluated: {e}"))
}
