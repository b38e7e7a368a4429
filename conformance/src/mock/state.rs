//! Stateful mode: collections inferred from the paths keep what is created, in memory.
//!
//! `POST /things` stores the answer it gives (the documented success body, with the request's
//! fields laid over it and a fresh id), `GET /things/{id}` reads it back, `GET /things` lists
//! what is stored (paged when the list body has `page`/`per_page`-style fields), `PUT` and
//! `PATCH` change it, `DELETE` removes it and later reads answer 404. Every stored value and
//! every answer is checked against the spec: a field of the request that would make the
//! stored resource invalid is left out rather than stored. Collections are kept per
//! credential (the API key or token the request carries), so two identities do not see each
//! other's resources, as in a multi-tenant server.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::answer::{self, Answer};
use super::compile::{MockOperation, MockSpec, Resource, Role, render};
use crate::router::{parse_query, percent_decode};
use crate::spec::escape_pointer;

#[derive(Default)]
struct Collection {
    /// `(id, resource)` in creation order.
    items: Vec<(String, Value)>,
    created: u64,
}

/// Every collection's items, per tenant; survives a spec reload.
#[derive(Default)]
pub struct Store {
    /// `(tenant, collection template)` → items.
    collections: Mutex<HashMap<(String, String), Collection>>,
}

/// What a stateful answer needs from the request.
pub struct Call<'a> {
    /// Who calls (the credential's value): each tenant sees only what it created, as in a
    /// multi-tenant server; another tenant's resource answers 404.
    pub tenant: String,
    pub path: &'a str,
    pub query: &'a str,
    pub body: Option<&'a Value>,
    pub accept: Option<&'a str>,
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    /// A fresh body for the create answer (dynamic mode), instead of the static one.
    pub fresh: Option<Value>,
}

/// The value of path parameter `name` of `template` in `path`.
pub fn path_param(template: &str, path: &str, name: &str) -> Option<String> {
    let wanted = format!("{{{name}}}");
    template
        .trim_start_matches('/')
        .split('/')
        .zip(path.trim_start_matches('/').split('/'))
        .find_map(|(t, p)| {
            let at = t.find(&wanted)?;
            let (prefix, suffix) = (&t[..at], &t[at + wanted.len()..]);
            let value = p.strip_prefix(prefix)?.strip_suffix(suffix)?;
            Some(percent_decode(value))
        })
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Sets timestamp-looking string fields whose name contains one of `names` to now.
fn touch(value: &mut Value, names: &[&str]) {
    let Value::Object(map) = value else { return };
    let now = now_rfc3339();
    for (k, v) in map.iter_mut() {
        let lower = k.to_ascii_lowercase();
        if names.iter().any(|n| lower.contains(n))
            && v.as_str().is_some_and(|s| s.len() >= 20 && s.contains('T'))
        {
            *v = Value::String(now.clone());
        }
    }
}

/// Id candidates for the `n`th resource, shaped like the example id `like`.
fn id_candidates(like: Option<&Value>, n: u64) -> Vec<Value> {
    let mut out = Vec::new();
    match like {
        Some(Value::Number(_)) => out.push(Value::from(n)),
        Some(Value::String(s)) if !s.is_empty() => {
            let digits = format!("{n:04}");
            if s.len() == 36 && s.matches('-').count() == 4 {
                out.push(Value::String(format!(
                    "{}{:012x}",
                    &s[..24],
                    n & 0xffff_ffff_ffff
                )));
            }
            let chars: Vec<char> = s.chars().collect();
            if chars.len() > digits.len() {
                let keep: String = chars[..chars.len() - digits.len()].iter().collect();
                out.push(Value::String(format!("{keep}{digits}")));
            }
            out.push(Value::String(format!("{s}{n}")));
            out.push(Value::String(n.to_string()));
        }
        _ => {
            out.push(Value::String(n.to_string()));
            out.push(Value::from(n));
        }
    }
    out
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn etag(value: &Value) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

/// Lays `patch` over `base` key by key, keeping only the keys that leave `base` valid.
/// `merge`: JSON merge patch semantics (null removes, objects merge recursively).
fn overlay(base: &mut Value, patch: &Value, merge: bool, valid: &dyn Fn(&Value) -> bool) {
    let Some(fields) = patch.as_object() else {
        return;
    };
    for (k, v) in fields {
        let mut candidate = base.clone();
        let Some(map) = candidate.as_object_mut() else {
            return;
        };
        match (merge, v, map.get_mut(k)) {
            (true, Value::Null, _) => {
                map.remove(k);
            }
            (true, Value::Object(_), Some(existing @ Value::Object(_))) => {
                json_merge(existing, v);
            }
            _ => {
                map.insert(k.clone(), v.clone());
            }
        }
        if valid(&candidate) {
            *base = candidate;
        }
    }
}

fn json_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl Store {
    /// The stateful answer to a valid request, or `None` to answer as a stateless mock.
    pub fn answer(&self, spec: &MockSpec, op: &MockOperation, call: &Call<'_>) -> Option<Answer> {
        let resource = op.resource.as_ref()?;
        let create = spec.operation(&resource.creator)?;
        let create_entry = &create.entries[create.success?];
        let create_media = create_entry.negotiate(Some("application/json"))?;
        let stored_valid =
            |v: &Value| create.body_is_valid(&create_entry.key, &create_media.media_type, v);
        let mut collections = self
            .collections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A nested collection lives under its parents' items: under a parent this tenant
        // does not have (never created, deleted, or another tenant's), it answers 404.
        let mut prefix = String::new();
        for segment in resource.collection.split('/').filter(|s| !s.is_empty()) {
            if let Some(param) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                && spec
                    .operation(&format!("/paths/{}/post", escape_pointer(&prefix)))
                    .is_some()
                && let Some(parent_id) = path_param(&op.template, call.path, param)
            {
                let known = collections
                    .get(&(call.tenant.clone(), prefix.clone()))
                    .is_some_and(|c| c.items.iter().any(|(k, _)| *k == parent_id));
                if !known {
                    let detail = format!("no {param} {parent_id} (stateful mock)");
                    return (op.entry(404).is_some())
                        .then(|| answer::error(Some(op), 404, "Not Found", &detail, &[]));
                }
            }
            prefix.push('/');
            prefix.push_str(segment);
        }
        let collection = collections
            .entry((call.tenant.clone(), resource.collection.clone()))
            .or_default();
        let id = path_param(&op.template, call.path, &resource.param);
        let position = id
            .as_ref()
            .and_then(|id| collection.items.iter().position(|(k, _)| k == id));
        let not_found = |resource: &Resource| {
            let detail = format!(
                "no {} with {} {} (stateful mock)",
                resource.collection.rsplit('/').next().unwrap_or("resource"),
                resource.param,
                id.as_deref().unwrap_or("")
            );
            (op.entry(404).is_some())
                .then(|| answer::error(Some(op), 404, "Not Found", &detail, &[]))
        };
        match resource.role {
            Role::Create => {
                let mut value = call.fresh.clone().or_else(|| create_media.value.clone())?;
                value.as_object()?;
                if let Some(body) = call.body {
                    overlay(&mut value, body, false, &stored_valid);
                }
                touch(&mut value, &["created", "updated"]);
                collection.created += 1;
                let like = value.get(&resource.id_field).cloned();
                let mut chosen = None;
                for candidate in id_candidates(like.as_ref(), collection.created) {
                    let Some(text) = id_text(&candidate) else {
                        continue;
                    };
                    if collection.items.iter().any(|(k, _)| *k == text) {
                        continue;
                    }
                    let mut with_id = value.clone();
                    if let Some(map) = with_id.as_object_mut() {
                        map.insert(resource.id_field.clone(), candidate);
                    }
                    if stored_valid(&with_id) {
                        chosen = Some((text, with_id));
                        break;
                    }
                }
                let (text, value) = chosen?;
                collection.items.push((text.clone(), value.clone()));
                // A create elsewhere (an install) stores into the collection it names.
                let collection_path = if op.template == resource.collection {
                    call.path
                } else {
                    resource.collection.as_str()
                };
                let item_path = format!(
                    "{}/{}",
                    collection_path.trim_end_matches('/'),
                    crate::runner::encode_segment(&text)
                );
                let mut answer = self.body_answer(op, call, &value)?;
                if answer
                    .headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("location"))
                {
                    answer.set_header("Location", item_path);
                }
                Some(answer)
            }
            Role::List => self.list(op, call, collection),
            Role::Read => {
                let Some(i) = position else {
                    return not_found(resource);
                };
                let value = &collection.items[i].1;
                let tag = etag(value);
                if call
                    .if_none_match
                    .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
                    && let Some(entry) = op.entry(304).filter(|_| op.documents(304))
                {
                    let mut answer = Answer::documented(entry, 304, None, Bytes::new());
                    answer.set_header("ETag", tag);
                    return Some(answer);
                }
                self.body_answer(op, call, value)
            }
            Role::Replace | Role::Patch | Role::Delete => {
                let Some(i) = position else {
                    return not_found(resource);
                };
                let tag = etag(&collection.items[i].1);
                if let Some(wanted) = call.if_match
                    && !wanted
                        .split(',')
                        .any(|t| t.trim() == tag || t.trim() == "*")
                    && op.documents(412)
                {
                    return Some(answer::error(
                        Some(op),
                        412,
                        "Precondition Failed",
                        "If-Match does not name the current version",
                        &[],
                    ));
                }
                if resource.role == Role::Delete {
                    collection.items.remove(i);
                    return self.body_answer(op, call, &Value::Null).or_else(|| {
                        let entry = &op.entries[op.success?];
                        Some(Answer::documented(entry, entry.status, None, Bytes::new()))
                    });
                }
                let mut value = collection.items[i].1.clone();
                if let Some(body) = call.body {
                    let id_value = value.get(&resource.id_field).cloned();
                    let mut body = body.clone();
                    if let (Some(map), Some(_)) = (body.as_object_mut(), &id_value) {
                        map.remove(&resource.id_field);
                    }
                    overlay(
                        &mut value,
                        &body,
                        resource.role == Role::Patch,
                        &stored_valid,
                    );
                }
                touch(&mut value, &["updated"]);
                if let Some(v) = value.get_mut("version")
                    && let Some(n) = v.as_u64()
                {
                    let bumped = Value::from(n + 1);
                    let mut candidate = value.clone();
                    candidate["version"] = bumped;
                    if stored_valid(&candidate) {
                        value = candidate;
                    }
                }
                collection.items[i].1 = value.clone();
                self.body_answer(op, call, &value)
            }
            Role::Nested => match position {
                Some(_) => None,
                None => not_found(resource),
            },
        }
    }

    /// The operation's success answer with `value` as its body, when valid; an empty
    /// success when the success response has no body; `None` when `value` does not fit.
    fn body_answer(&self, op: &MockOperation, call: &Call<'_>, value: &Value) -> Option<Answer> {
        let entry = &op.entries[op.success?];
        let mut answer = match entry.negotiate(call.accept) {
            None => Answer::documented(entry, entry.status, None, Bytes::new()),
            Some(media) => {
                if value.is_null() {
                    return None;
                }
                let valid = |v: &Value| op.body_is_valid(&entry.key, &media.media_type, v);
                let value = &op.without_write_only(&entry.key, &media.media_type, value);
                let shown = if valid(value) {
                    value.clone()
                } else {
                    // A field the create answered once (a generated secret) but reads never
                    // show: leave it out.
                    let map = value.as_object()?;
                    map.keys().find_map(|k| {
                        let mut without = map.clone();
                        without.remove(k);
                        let without = Value::Object(without);
                        valid(&without).then_some(without)
                    })?
                };
                Answer::documented(
                    entry,
                    entry.status,
                    Some(&media.media_type),
                    render(&media.media_type, &shown),
                )
            }
        };
        if !value.is_null()
            && answer
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("etag"))
        {
            answer.set_header("ETag", etag(value));
        }
        Some(answer)
    }

    fn list(&self, op: &MockOperation, call: &Call<'_>, collection: &Collection) -> Option<Answer> {
        let entry = &op.entries[op.success?];
        let media = entry.negotiate(call.accept)?;
        let base = media.value.clone()?;
        let query = parse_query(call.query);
        let number = |names: &[&str]| {
            query
                .iter()
                .find(|(k, _)| names.contains(&k.as_str()))
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        const PAGING: &[&str] = &[
            "page", "per_page", "limit", "offset", "cursor", "sort", "order", "fields", "expand",
        ];
        let items: Vec<&Value> = collection
            .items
            .iter()
            .map(|(_, v)| v)
            .filter(|v| {
                query.iter().all(|(k, want)| {
                    PAGING.contains(&k.as_str())
                        || v.get(k).is_none_or(|have| match have {
                            Value::String(s) => s == want,
                            Value::Number(n) => n.to_string() == *want,
                            Value::Bool(b) => b.to_string() == *want,
                            _ => true,
                        })
                })
            })
            .collect();
        let total = items.len() as u64;
        let mut body = base;
        let array_key = match &body {
            Value::Array(_) => None,
            Value::Object(map) => Some(
                ["data", "items", "results"]
                    .into_iter()
                    .map(str::to_string)
                    .find(|k| map.get(k).is_some_and(Value::is_array))
                    .or_else(|| {
                        map.iter()
                            .find(|(_, v)| v.is_array())
                            .map(|(k, _)| k.clone())
                    })?,
            ),
            _ => return None,
        };
        let paging = body
            .as_object()
            .and_then(|m| {
                m.values()
                    .chain(std::iter::once(&body))
                    .find(|v| v.get("per_page").or_else(|| v.get("limit")).is_some())
            })
            .is_some();
        let per_page = number(&["per_page", "limit"])
            .or_else(|| find_number(&body, &["per_page", "limit"]).filter(|n| *n > 0))
            .unwrap_or(20)
            .max(1);
        let page = number(&["page"]).unwrap_or(1).max(1);
        let offset = number(&["offset"]).unwrap_or((page - 1) * per_page);
        let shown: Vec<Value> = if paging {
            items
                .iter()
                .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                .take(usize::try_from(per_page).unwrap_or(usize::MAX))
                .map(|v| (*v).clone())
                .collect()
        } else {
            items.iter().map(|v| (*v).clone()).collect()
        };
        match (&mut body, array_key) {
            (Value::Array(list), None) => *list = shown,
            (Value::Object(map), Some(key)) => {
                map.insert(key, Value::Array(shown));
                set_numbers(map, total, page, per_page);
            }
            _ => return None,
        }
        let media_type = media.media_type.clone();
        let body = op.without_write_only(&entry.key, &media_type, &body);
        if !op.body_is_valid(&entry.key, &media_type, &body) {
            return None;
        }
        Some(Answer::documented(
            entry,
            entry.status,
            Some(&media_type),
            render(&media_type, &body),
        ))
    }
}

fn find_number(value: &Value, names: &[&str]) -> Option<u64> {
    let map = value.as_object()?;
    names
        .iter()
        .find_map(|n| map.get(*n).and_then(Value::as_u64))
        .or_else(|| map.values().find_map(|v| find_number(v, names)))
}

/// Rewrites the paging numbers of a list body (at its top level or one object down).
fn set_numbers(map: &mut Map<String, Value>, total: u64, page: u64, per_page: u64) {
    for (k, v) in map.iter_mut() {
        match k.as_str() {
            "total" | "total_count" | "count" if v.is_u64() => *v = Value::from(total),
            "page" if v.is_u64() => *v = Value::from(page),
            "per_page" | "limit" if v.is_u64() => *v = Value::from(per_page),
            "pages" | "total_pages" if v.is_u64() => {
                *v = Value::from(total.div_ceil(per_page).max(1));
            }
            "next_cursor" | "next" if v.is_string() || v.is_null() => *v = Value::Null,
            _ => {
                if let Value::Object(inner) = v {
                    set_numbers(inner, total, page, per_page);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extracts_path_params() {
        assert_eq!(
            path_param(
                "/v1/agents/{agent_id}",
                "/v1/agents/agent_1%2F2",
                "agent_id"
            ),
            Some("agent_1/2".into())
        );
        assert_eq!(
            path_param("/files/{name}.json", "/files/report.json", "name"),
            Some("report".into())
        );
    }

    #[test]
    fn ids_look_like_the_example() {
        assert_eq!(
            id_candidates(Some(&json!("agent_01jh8k2m3n4p")), 7)[0],
            json!("agent_01jh8k2m0007")
        );
        assert_eq!(id_candidates(Some(&json!(10)), 3)[0], json!(3));
        assert_eq!(
            id_candidates(Some(&json!("3fa85f64-5717-4562-b3fc-2c963f66afa6")), 1)[0],
            json!("3fa85f64-5717-4562-b3fc-000000000001")
        );
    }

    #[test]
    fn overlays_only_valid_keys() {
        let mut base = json!({"id": 1, "name": "a", "tag": "x"});
        let valid = |v: &Value| v.get("name").is_some_and(Value::is_string);
        overlay(
            &mut base,
            &json!({"name": 5, "tag": null, "new": true}),
            true,
            &valid,
        );
        assert_eq!(base, json!({"id": 1, "name": "a", "new": true}));
    }

    #[test]
    fn formats_now() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'));
    }
}
