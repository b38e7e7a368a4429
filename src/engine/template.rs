//! `{{variable}}` templates: finding the variables a text uses and rendering it.
//!
//! A placeholder is `{{`, optional spaces, a name (`[A-Za-z_][A-Za-z0-9_.]*`), optional spaces,
//! `}}`. Anything else between double braces is literal text, so prompts that show JSON or
//! code keep their braces. The same functions serve `POST /v1/prompt-templates/{id}/render`
//! and the template step of an execution.

use std::collections::BTreeMap;

/// One placeholder found in a text: its byte range and its variable's name.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    name: &'a str,
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && name.len() <= 64
}

fn placeholders(text: &str) -> Vec<Placeholder<'_>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{").map(|i| i + from) {
        let Some(close) = text[open + 2..].find("}}").map(|i| i + open + 2) else {
            break;
        };
        let name = text[open + 2..close].trim_matches(' ');
        if is_name(name) {
            found.push(Placeholder {
                start: open,
                end: close + 2,
                name,
            });
            from = close + 2;
        } else {
            from = open + 1;
        }
    }
    found
}

/// The variables `text` uses, in order of first use, each once.
pub fn variables_in(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in placeholders(text) {
        if !names.iter().any(|n| n == p.name) {
            names.push(p.name.to_string());
        }
    }
    names
}

/// `text` with every placeholder replaced by its value, or the names that have no value (in
/// order of first use).
pub fn render(text: &str, values: &BTreeMap<String, String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing: Vec<String> = Vec::new();
    let mut last = 0;
    for p in placeholders(text) {
        out.push_str(&text[last..p.start]);
        match values.get(p.name) {
            Some(v) => out.push_str(v),
            None => {
                if !missing.iter().any(|m| m == p.name) {
                    missing.push(p.name.to_string());
                }
            }
        }
        last = p.end;
    }
    out.push_str(&text[last..]);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn finds_variables_once_in_order_and_skips_non_names() {
        let text = "Hi {{ name }}, {{topic}} and {{name}}; json {{\"a\": 1}} {{}} {{user.id}}";
        assert_eq!(variables_in(text), vec!["name", "topic", "user.id"]);
        assert!(variables_in("no {{ 1bad }} {{ unterminated").is_empty());
    }

    #[test]
    fn renders_values_and_keeps_literal_braces() {
        let out = render(
            "Topic: {{topic}} {{ topic }} {\"k\": {{\"x\"}}}",
            &vars(&[("topic", "billing")]),
        );
        assert_eq!(
            out.as_deref(),
            Ok("Topic: billing billing {\"k\": {{\"x\"}}}")
        );
    }

    #[test]
    fn names_every_missing_variable() {
        let out = render("{{a}} {{b}} {{a}} {{c}}", &vars(&[("b", "2")]));
        assert_eq!(out, Err(vec!["a".to_string(), "c".to_string()]));
    }

    #[test]
    fn values_are_not_rendered_again() {
        let out = render("{{a}}", &vars(&[("a", "{{b}}")]));
        assert_eq!(out.as_deref(), Ok("{{b}}"));
    }
}
