//! A JSON value written as the XML an OpenAPI schema describes (its `xml` objects: `name`,
//! `attribute`, `wrapped`, `prefix`, `namespace`), so that an operation documenting an XML
//! request body beside JSON is sent a valid body in each.
//!
//! The root element is named by the schema's `xml.name`, else by the component its `$ref`
//! names, else `root`. Properties are child elements (or attributes with `xml.attribute`);
//! an array property repeats its item element, inside a wrapper with `xml.wrapped`.

use serde_json::{Map, Value};

use crate::report::xml_escape as escape;
use crate::spec::{composed, deref};

/// `value` as an XML document described by `schema` (a schema of `doc`).
pub fn to_xml(doc: &Value, schema: &Value, value: &Value) -> String {
    let root = xml_field(doc, schema, "name")
        .or_else(|| {
            schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "root".to_string());
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    element(doc, schema, &root, value, &mut out, 0);
    out
}

/// A string field of the schema's `xml` object (through `$ref`s).
fn xml_field(doc: &Value, schema: &Value, field: &str) -> Option<String> {
    schema
        .pointer(&format!("/xml/{field}"))
        .or_else(|| deref(doc, schema).pointer(&format!("/xml/{field}")))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn xml_flag(doc: &Value, schema: &Value, field: &str) -> bool {
    let flag = |s: &Value| s.pointer(&format!("/xml/{field}")).and_then(Value::as_bool);
    flag(schema).or_else(|| flag(deref(doc, schema))) == Some(true)
}

/// The properties `schema` declares, with those of its `allOf`, `anyOf` and `oneOf`
/// branches (the first declaration of a name wins), and its first `items` schema.
fn shape(doc: &Value, schema: &Value, props: &mut Map<String, Value>) -> Value {
    let mut items = None;
    for branch in composed(doc, schema) {
        if let Some(own) = branch.get("properties").and_then(Value::as_object) {
            for (k, v) in own {
                props.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        items = items.or_else(|| branch.get("items").cloned());
    }
    items.unwrap_or(Value::Bool(true))
}

/// The element's qualified name and its namespace declaration, if any.
fn qualified(doc: &Value, schema: &Value, name: &str) -> (String, Option<String>) {
    let prefix = xml_field(doc, schema, "prefix");
    let name = match &prefix {
        Some(p) if !p.is_empty() => format!("{p}:{name}"),
        _ => name.to_string(),
    };
    let namespace = xml_field(doc, schema, "namespace").map(|ns| match &prefix {
        Some(p) if !p.is_empty() => format!(" xmlns:{p}=\"{}\"", escape(&ns)),
        _ => format!(" xmlns=\"{}\"", escape(&ns)),
    });
    (name, namespace)
}

fn element(doc: &Value, schema: &Value, name: &str, value: &Value, out: &mut String, depth: usize) {
    let (name, namespace) = qualified(doc, schema, name);
    out.push('<');
    out.push_str(&name);
    out.push_str(namespace.as_deref().unwrap_or(""));
    let mut props = Map::new();
    let items = shape(doc, schema, &mut props);
    let prop = |k: &str| props.get(k).cloned().unwrap_or(Value::Bool(true));
    let children: Vec<(&String, &Value)> = match value {
        Value::Object(map) => {
            let mut children = Vec::new();
            for (k, v) in map {
                let schema = prop(k);
                if xml_flag(doc, &schema, "attribute") && !v.is_object() && !v.is_array() {
                    let attr = xml_field(doc, &schema, "name").unwrap_or_else(|| k.clone());
                    let (attr, _) = qualified(doc, &schema, &attr);
                    out.push_str(&format!(" {attr}=\"{}\"", escape(&text(v))));
                } else {
                    children.push((k, v));
                }
            }
            children
        }
        _ => Vec::new(),
    };
    out.push('>');
    match value {
        Value::Object(_) => {
            for (k, v) in children {
                child(doc, &prop(k), k, v, out, depth + 1);
            }
        }
        Value::Array(values) => {
            let item_name = xml_field(doc, &items, "name").unwrap_or_else(|| name.clone());
            for v in values {
                element(doc, &items, &item_name, v, out, depth + 1);
            }
        }
        other => out.push_str(&escape(&text(other))),
    }
    out.push_str("</");
    out.push_str(&name);
    out.push('>');
}

/// The property `key` of an object: an element, or for an array its repeated items
/// (inside a wrapper element with `xml.wrapped`).
fn child(doc: &Value, schema: &Value, key: &str, value: &Value, out: &mut String, depth: usize) {
    if depth > 64 {
        return;
    }
    let name = xml_field(doc, schema, "name").unwrap_or_else(|| key.to_string());
    let Value::Array(values) = value else {
        element(doc, schema, &name, value, out, depth);
        return;
    };
    let items = shape(doc, schema, &mut Map::new());
    let item_name = xml_field(doc, &items, "name").unwrap_or_else(|| name.clone());
    let wrapped = xml_flag(doc, schema, "wrapped");
    let (wrapper, namespace) = qualified(doc, schema, &name);
    if wrapped {
        out.push_str(&format!("<{wrapper}{}>", namespace.unwrap_or_default()));
    }
    for v in values {
        element(doc, &items, &item_name, v, out, depth + 1);
    }
    if wrapped {
        out.push_str(&format!("</{wrapper}>"));
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_names_attributes_wrapped_arrays_and_namespaces() {
        let doc = json!({"components": {"schemas": {
            "Tag": {"type": "object", "xml": {"name": "tag"}, "properties": {"name": {"type": "string"}}},
            "Pet": {
                "type": "object",
                "xml": {"name": "pet", "namespace": "urn:pets", "prefix": "p"},
                "properties": {
                    "id": {"type": "integer", "xml": {"attribute": true}},
                    "name": {"type": "string", "xml": {"name": "pet-name"}},
                    "photoUrls": {"type": "array", "xml": {"wrapped": true}, "items": {"type": "string", "xml": {"name": "photoUrl"}}},
                    "tags": {"type": "array", "items": {"$ref": "#/components/schemas/Tag"}}
                }
            }
        }}});
        let schema = json!({"$ref": "#/components/schemas/Pet"});
        let value = json!({"id": 7, "name": "Rex & <co>", "photoUrls": ["a", "b"], "tags": [{"name": "x"}]});
        assert_eq!(
            to_xml(&doc, &schema, &value),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <p:pet xmlns:p=\"urn:pets\" id=\"7\"><pet-name>Rex &amp; &lt;co&gt;</pet-name>\
             <photoUrls><photoUrl>a</photoUrl><photoUrl>b</photoUrl></photoUrls>\
             <tag><name>x</name></tag></p:pet>"
        );
        // Without an xml object: the component's name, properties as elements.
        let doc = json!({"components": {"schemas": {"Booking": {"allOf": [{"properties": {"trip_id": {"type": "string"}}}]}}}});
        assert_eq!(
            to_xml(
                &doc,
                &json!({"$ref": "#/components/schemas/Booking"}),
                &json!({"trip_id": "t", "dog": true})
            ),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Booking><trip_id>t</trip_id><dog>true</dog></Booking>"
        );
    }
}
