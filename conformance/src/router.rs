//! Matching request paths against OpenAPI path templates.
//!
//! A trie of segments, so that the cost of a lookup depends on the depth of the path, not on
//! the number of operations in the spec. Literal segments win over templated ones
//! (`/agents/bulk` before `/agents/{id}`), as OpenAPI requires.

use std::collections::HashMap;

/// One segment pattern: `{id}`, or `prefix{name}suffix` as in `/files/{name}.json`.
#[derive(Debug)]
struct Pattern {
    prefix: String,
    suffix: String,
    child: Node,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, Node>,
    patterns: Vec<Pattern>,
    /// Index of the route that ends here.
    route: Option<usize>,
}

/// A compiled path template.
#[derive(Debug, Clone)]
pub struct Template {
    /// The template as written in the spec, e.g. `/v1/agents/{agent_id}`.
    pub template: String,
    /// Names of the templated parameters, in order of appearance.
    pub params: Vec<String>,
}

/// A set of path templates, matched by a trie.
#[derive(Debug, Default)]
pub struct PathRouter {
    root: Node,
    templates: Vec<Template>,
}

/// The result of a successful match.
#[derive(Debug, PartialEq)]
pub struct Match<'a> {
    /// Index of the template, in insertion order.
    pub index: usize,
    /// `(name, percent-decoded value)` of each path parameter.
    pub params: Vec<(&'a str, String)>,
}

fn split_template_segment(segment: &str) -> Option<(String, String, String)> {
    let open = segment.find('{')?;
    let close = segment[open..].find('}')? + open;
    Some((
        segment[..open].to_string(),
        segment[open + 1..close].to_string(),
        segment[close + 1..].to_string(),
    ))
}

impl PathRouter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a template and returns its index. Adding the same template twice returns the
    /// first index.
    pub fn insert(&mut self, template: &str) -> usize {
        let mut params = Vec::new();
        let mut node = &mut self.root;
        for segment in template.trim_start_matches('/').split('/') {
            node = match split_template_segment(segment) {
                Some((prefix, name, suffix)) => {
                    params.push(name);
                    let pos = node
                        .patterns
                        .iter()
                        .position(|p| p.prefix == prefix && p.suffix == suffix);
                    let pos = match pos {
                        Some(pos) => pos,
                        None => {
                            node.patterns.push(Pattern {
                                prefix: prefix.clone(),
                                suffix: suffix.clone(),
                                child: Node::default(),
                            });
                            // Longer fixed parts are more specific: try them first.
                            node.patterns.sort_by_key(|p| {
                                std::cmp::Reverse(p.prefix.len() + p.suffix.len())
                            });
                            node.patterns
                                .iter()
                                .position(|p| p.prefix == prefix && p.suffix == suffix)
                                .unwrap_or(0)
                        }
                    };
                    &mut node.patterns[pos].child
                }
                None => node.literals.entry(segment.to_string()).or_default(),
            };
        }
        if let Some(existing) = node.route {
            return existing;
        }
        let index = self.templates.len();
        node.route = Some(index);
        self.templates.push(Template {
            template: template.to_string(),
            params,
        });
        index
    }

    /// The template at `index`.
    pub fn template(&self, index: usize) -> &Template {
        &self.templates[index]
    }

    /// All templates, in insertion order.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// Matches a request path (without query string).
    pub fn find(&self, path: &str) -> Option<Match<'_>> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut values = Vec::new();
        let index = find_in(&self.root, &segments, &mut values)?;
        let template = &self.templates[index];
        let params = template
            .params
            .iter()
            .map(String::as_str)
            .zip(values.into_iter().map(|v| percent_decode(&v)))
            .collect();
        Some(Match { index, params })
    }
}

fn find_in(node: &Node, segments: &[&str], values: &mut Vec<String>) -> Option<usize> {
    let Some((first, rest)) = segments.split_first() else {
        return node.route;
    };
    if let Some(child) = node.literals.get(*first)
        && let Some(found) = find_in(child, rest, values)
    {
        return Some(found);
    }
    for pattern in &node.patterns {
        let Some(value) = first
            .strip_prefix(pattern.prefix.as_str())
            .and_then(|v| v.strip_suffix(pattern.suffix.as_str()))
        else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        values.push(value.to_string());
        if let Some(found) = find_in(&pattern.child, rest, values) {
            return Some(found);
        }
        values.pop();
    }
    None
}

/// Decodes `%XX` escapes; invalid escapes are kept as they are.
pub fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes an `application/x-www-form-urlencoded` component (`+` is a space).
pub fn form_decode(input: &str) -> String {
    percent_decode(&input.replace('+', " "))
}

/// Splits a query string into decoded `(name, value)` pairs, in order.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (form_decode(k), form_decode(v)),
            None => (form_decode(pair), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_win_over_parameters() {
        let mut r = PathRouter::new();
        let by_id = r.insert("/v1/agents/{agent_id}");
        let bulk = r.insert("/v1/agents/bulk");
        let list = r.insert("/v1/agents");
        assert_eq!(r.find("/v1/agents/bulk").map(|m| m.index), Some(bulk));
        assert_eq!(r.find("/v1/agents").map(|m| m.index), Some(list));
        let m = r.find("/v1/agents/agent_1%2F2").expect("matches");
        assert_eq!(m.index, by_id);
        assert_eq!(m.params, vec![("agent_id", "agent_1/2".to_string())]);
        assert!(r.find("/v1/agents/a/b").is_none());
        assert!(r.find("/v1/agents/").is_none());
    }

    #[test]
    fn backtracks_into_parameters_and_handles_affixes() {
        let mut r = PathRouter::new();
        let a = r.insert("/a/{x}/c");
        let b = r.insert("/a/b/d");
        let f = r.insert("/files/{name}.json");
        assert_eq!(r.find("/a/b/c").map(|m| m.index), Some(a));
        assert_eq!(r.find("/a/b/d").map(|m| m.index), Some(b));
        let m = r.find("/files/report.json").expect("matches");
        assert_eq!(
            (m.index, m.params),
            (f, vec![("name", "report".to_string())])
        );
    }

    #[test]
    fn decodes_queries() {
        assert_eq!(
            parse_query("filter%5Bcreated_at%5D%5Bgte%5D=2024-01-01T00%3A00%3A00Z&q=a+b&flag"),
            vec![
                (
                    "filter[created_at][gte]".to_string(),
                    "2024-01-01T00:00:00Z".to_string()
                ),
                ("q".to_string(), "a b".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
