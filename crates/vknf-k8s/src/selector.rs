//! Host selectors: the `vknf.io/hosts` annotation, in Kubernetes' label selector syntax
//! (`gpu=h100`, `gpu!=t4`, `zone in (a,b)`, `zone notin (c)`, `fast`, `!maintenance`, joined by
//! commas), matched with kube's own [`Selector`] semantics.

use std::collections::BTreeSet;

use kube::core::{Expression, Selector, SelectorExt as _};

/// Why a selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host selector {text:?}: {reason}")]
pub struct SelectorError {
    /// The selector as written.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed host selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSelector {
    selector: Selector,
}

impl HostSelector {
    /// Parses a selector. An empty selector is refused: a function annotated with no
    /// requirement would land on every GPU host by accident.
    pub fn parse(text: &str) -> Result<HostSelector, SelectorError> {
        let fail = |reason: String| SelectorError {
            text: text.to_owned(),
            reason,
        };
        let mut expressions = Vec::new();
        for requirement in split_requirements(text).map_err(&fail)? {
            expressions.push(parse_requirement(requirement).map_err(&fail)?);
        }
        if expressions.is_empty() {
            return Err(fail("no requirement (use a label like gpu=h100)".into()));
        }
        Ok(HostSelector {
            selector: expressions.into_iter().collect(),
        })
    }

    /// Whether a host with these labels is selected.
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.selector.matches(labels)
    }
}

impl std::fmt::Display for HostSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.selector.fmt(f)
    }
}

/// Splits at top-level commas (commas inside `( )` separate set values).
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced ')'")?,
            ',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(text[start..].trim());
    if parts.len() == 1 && parts[0].is_empty() {
        return Ok(Vec::new());
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err("empty requirement between commas".into());
    }
    Ok(parts)
}

fn parse_requirement(requirement: &str) -> Result<Expression, String> {
    if let Some(key) = requirement.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(word(key.trim(), "key")?));
    }
    if let Some((key, value)) = requirement.split_once("!=") {
        return Ok(Expression::NotEqual(
            word(key.trim(), "key")?,
            value_word(value.trim())?,
        ));
    }
    if let Some((key, value)) = requirement.split_once("==").or_else(|| requirement.split_once('=')) {
        return Ok(Expression::Equal(word(key.trim(), "key")?, value_word(value.trim())?));
    }
    if let Some(open) = requirement.find('(') {
        let head = requirement[..open].trim();
        let body = requirement[open + 1..]
            .trim_end()
            .strip_suffix(')')
            .ok_or_else(|| format!("{requirement:?}: a set must end with ')'"))?;
        let (key, operator) = head
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| format!("{requirement:?}: expected `key in (...)` or `key notin (...)`"))?;
        let key = word(key.trim(), "key")?;
        let values: BTreeSet<String> = body
            .split(',')
            .map(|v| value_word(v.trim()))
            .collect::<Result<_, _>>()?;
        return match operator {
            "in" => Ok(Expression::In(key, values)),
            "notin" => Ok(Expression::NotIn(key, values)),
            other => Err(format!("unknown operator {other:?} (expected in or notin)")),
        };
    }
    Ok(Expression::Exists(word(requirement, "key")?))
}

fn word(text: &str, what: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a valid label {what}"))
    }
}

fn value_word(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Ok(String::new())
    } else {
        word(text, "value")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn every_operator_selects_as_kubernetes_does() {
        let h100 = labels(&[("gpu", "h100"), ("zone", "a")]);
        let t4 = labels(&[("gpu", "t4"), ("zone", "c"), ("maintenance", "")]);
        let cases = [
            ("gpu=h100", true, false),
            ("gpu==h100", true, false),
            ("gpu!=h100", false, true),
            ("zone in (a, b)", true, false),
            ("zone notin (a,b)", false, true),
            ("maintenance", false, true),
            ("!maintenance", true, false),
            ("gpu, zone in (a,c), !maintenance", true, false),
            ("vknf.io/hostname in (gpu-1)", false, false),
        ];
        for (text, on_h100, on_t4) in cases {
            let selector = HostSelector::parse(text).unwrap();
            assert_eq!(
                (selector.matches(&h100), selector.matches(&t4)),
                (on_h100, on_t4),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_selectors_are_refused_with_the_text() {
        for text in [
            "",
            "  ",
            "gpu=h100,",
            "zone in (a",
            "zone in a)",
            "zone within (a)",
            "gp u=x",
            "=x",
            "a=b c",
        ] {
            let error = HostSelector::parse(text).unwrap_err();
            assert_eq!(error.text, text);
        }
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,4}(/[a-z][a-z0-9]{0,3})?"
    }

    fn value() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,4}"
    }

    fn expression() -> impl Strategy<Value = Expression> {
        prop_oneof![
            (key(), value()).prop_map(|(k, v)| Expression::Equal(k, v)),
            (key(), value()).prop_map(|(k, v)| Expression::NotEqual(k, v)),
            (key(), prop::collection::btree_set(value(), 1..4)).prop_map(|(k, v)| Expression::In(k, v)),
            (key(), prop::collection::btree_set(value(), 1..4)).prop_map(|(k, v)| Expression::NotIn(k, v)),
            key().prop_map(Expression::Exists),
            key().prop_map(Expression::DoesNotExist),
        ]
    }

    proptest! {
        #[test]
        fn printed_selectors_parse_back_to_the_same_selection(
            expressions in prop::collection::vec(expression(), 1..5),
            host in prop::collection::btree_map(key(), value(), 0..5),
        ) {
            let selector: Selector = expressions.into_iter().collect();
            let parsed = HostSelector::parse(&selector.to_string()).unwrap();
            prop_assert_eq!(parsed.matches(&host), selector.matches(&host));
            prop_assert_eq!(parsed.to_string(), selector.to_string());
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
            let _ = HostSelector::parse(&text);
        }
    }
}
