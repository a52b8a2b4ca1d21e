//! Label and field selectors with the apiserver's syntax and matching rules.

use serde_json::Value;

use crate::resources::ResourceType;
use crate::status::ApiError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Exists(String),
    DoesNotExist(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed `labelSelector` query parameter; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Equals,
    DoubleEquals,
    NotEquals,
    Bang,
    Open,
    Close,
    Comma,
    Greater,
    Less,
}

fn tokenize(input: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::DoubleEquals);
                } else {
                    tokens.push(Token::Equals);
                }
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::NotEquals);
                } else {
                    tokens.push(Token::Bang);
                }
            }
            '(' | ')' | ',' | '>' | '<' => {
                chars.next();
                tokens.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ',' => Token::Comma,
                    '>' => Token::Greater,
                    _ => Token::Less,
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "=!(),<>".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    tokens
}

fn selector_error(input: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: found '{input}', {why}"))
}

fn check_key(key: &str, input: &str) -> Result<(), ApiError> {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.len() <= 253
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c));
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(selector_error(input, &format!("invalid label key \"{key}\"")))
    }
}

fn check_value(value: &str, input: &str) -> Result<(), ApiError> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(selector_error(input, &format!("invalid label value \"{value}\"")))
    }
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token>,
    position: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn fail(&self, why: &str) -> ApiError {
        selector_error(self.input, why)
    }

    fn word(&mut self, what: &str) -> Result<String, ApiError> {
        match self.next() {
            Some(Token::Word(word)) => Ok(word),
            _ => Err(self.fail(&format!("expected {what}"))),
        }
    }

    fn value_after_operator(&mut self) -> Result<String, ApiError> {
        // An empty value (`key=`) is legal: it selects objects with the label set to "".
        match self.peek() {
            Some(Token::Word(_)) => self.word("a value"),
            None | Some(Token::Comma) => Ok(String::new()),
            _ => Err(self.fail("expected a value")),
        }
    }

    fn value_set(&mut self) -> Result<Vec<String>, ApiError> {
        if self.next() != Some(Token::Open) {
            return Err(self.fail("expected '(' after set operator"));
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Word(value)) => {
                    check_value(&value, self.input)?;
                    values.push(value);
                    match self.next() {
                        Some(Token::Comma) => continue,
                        Some(Token::Close) => return Ok(values),
                        _ => return Err(self.fail("expected ',' or ')' in value set")),
                    }
                }
                Some(Token::Close) if values.is_empty() => return Ok(values),
                _ => return Err(self.fail("expected a value in value set")),
            }
        }
    }

    fn number(&mut self) -> Result<i64, ApiError> {
        let word = self.word("an integer")?;
        word.parse()
            .map_err(|_| self.fail(&format!("'{word}' is not an integer")))
    }

    fn requirement(&mut self) -> Result<Requirement, ApiError> {
        if self.peek() == Some(&Token::Bang) {
            self.next();
            let key = self.word("a label key after '!'")?;
            check_key(&key, self.input)?;
            return Ok(Requirement::DoesNotExist(key));
        }
        let key = self.word("a label key")?;
        check_key(&key, self.input)?;
        let requirement = match self.peek().cloned() {
            None | Some(Token::Comma) => Requirement::Exists(key),
            Some(Token::Equals | Token::DoubleEquals) => {
                self.next();
                let value = self.value_after_operator()?;
                check_value(&value, self.input)?;
                Requirement::Equals(key, value)
            }
            Some(Token::NotEquals) => {
                self.next();
                let value = self.value_after_operator()?;
                check_value(&value, self.input)?;
                Requirement::NotEquals(key, value)
            }
            Some(Token::Greater) => {
                self.next();
                Requirement::GreaterThan(key, self.number()?)
            }
            Some(Token::Less) => {
                self.next();
                Requirement::LessThan(key, self.number()?)
            }
            Some(Token::Word(op)) if op == "in" => {
                self.next();
                Requirement::In(key, self.value_set()?)
            }
            Some(Token::Word(op)) if op == "notin" => {
                self.next();
                Requirement::NotIn(key, self.value_set()?)
            }
            Some(_) => return Err(self.fail("expected an operator")),
        };
        Ok(requirement)
    }
}

impl LabelSelector {
    /// Parses the apiserver's label selector syntax (`a=b,c!=d,e in (f,g),!h,i`).
    pub(crate) fn parse(input: &str) -> Result<Self, ApiError> {
        let mut parser = Parser {
            input,
            tokens: tokenize(input),
            position: 0,
        };
        let mut requirements = Vec::new();
        if parser.tokens.is_empty() {
            return Ok(Self::default());
        }
        loop {
            requirements.push(parser.requirement()?);
            match parser.next() {
                None => break,
                Some(Token::Comma) => continue,
                Some(_) => return Err(parser.fail("expected ',' between requirements")),
            }
        }
        Ok(Self { requirements })
    }

    /// Whether the selector has no requirements.
    pub(crate) fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|requirement| match requirement {
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::DoesNotExist(key) => label(key).is_none(),
            Requirement::Equals(key, value) => label(key) == Some(value.as_str()),
            Requirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
            Requirement::In(key, values) => label(key).is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn(key, values) => !label(key).is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::GreaterThan(key, bound) => label(key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *bound),
            Requirement::LessThan(key, bound) => label(key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *bound),
        })
    }
}

/// One `field=value` or `field!=value` term of a field selector.
#[derive(Debug, Clone, PartialEq)]
struct FieldTerm {
    path: String,
    value: String,
    negated: bool,
}

/// A parsed `fieldSelector` query parameter; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector {
    terms: Vec<FieldTerm>,
}

/// Field labels the real apiserver accepts for a kind, beyond `metadata.name`/`metadata.namespace`.
fn extra_field_labels(resource: &ResourceType) -> &'static [&'static str] {
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Service") => &["spec.clusterIP", "spec.type"],
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Node") => &["spec.unschedulable"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `a=b,c!=d`, rejecting field labels the real apiserver would reject for this kind.
    pub(crate) fn parse(input: &str, resource: &ResourceType) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for raw in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, value, negated) = if let Some((path, value)) = raw.split_once("!=") {
                (path, value, true)
            } else if let Some((path, value)) = raw.split_once("==") {
                (path, value, false)
            } else if let Some((path, value)) = raw.split_once('=') {
                (path, value, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{input}'; can't understand '{raw}'"
                )));
            };
            let path = path.trim();
            let supported = path == "metadata.name"
                || (path == "metadata.namespace" && resource.namespaced)
                || extra_field_labels(resource).contains(&path);
            if !supported {
                return Err(ApiError::bad_request(format!("field label not supported: {path}")));
            }
            terms.push(FieldTerm {
                path: path.to_string(),
                value: value.trim().to_string(),
                negated,
            });
        }
        Ok(Self { terms })
    }

    /// A selector for one object name, as used by watches on an item URL.
    pub(crate) fn for_name(name: &str) -> Self {
        Self {
            terms: vec![FieldTerm {
                path: "metadata.name".into(),
                value: name.into(),
                negated: false,
            }],
        }
    }

    /// Adds the terms of `other` (both must hold).
    pub(crate) fn and(mut self, other: Self) -> Self {
        self.terms.extend(other.terms);
        self
    }

    /// Whether the selector has no terms.
    pub(crate) fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether every term holds for the object; absent fields compare as the empty string.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|term| {
            // `source` on core Events is the short name of `source.component`.
            let path = if term.path == "source" {
                "source.component"
            } else {
                term.path.as_str()
            };
            let pointer = format!("/{}", path.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == term.value) != term.negated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({ "metadata": { "name": "x", "namespace": "ns", "labels": labels } })
    }

    #[test]
    fn label_selectors_follow_apiserver_semantics() {
        let object = labelled(json!({ "app": "vknf", "tier": "gpu", "replicas": "3" }));
        let matches = |s: &str| LabelSelector::parse(s).expect("valid selector").matches(&object);
        assert!(matches(""));
        assert!(matches("app=vknf"));
        assert!(matches("app==vknf,tier"));
        assert!(!matches("app=other"));
        assert!(matches("missing!=x"), "!= matches objects without the label");
        assert!(matches("tier in (gpu, cpu)"));
        assert!(!matches("tier notin (gpu)"));
        assert!(matches("!missing"));
        assert!(!matches("!app"));
        assert!(matches("replicas>2,replicas<4"));
        assert!(!matches("replicas>3"));
        assert!(matches("missing notin (a)"));
    }

    #[test]
    fn malformed_label_selectors_are_bad_requests() {
        for bad in ["=x", "app in gpu", "app in (a", "a b", "bad key!=x", "app=-x"] {
            let error = LabelSelector::parse(bad).expect_err(bad);
            assert_eq!(error.code, 400, "{bad}");
        }
    }

    #[test]
    fn an_empty_value_selects_empty_labels() {
        let selector = LabelSelector::parse("app=").expect("empty values are legal");
        assert!(selector.matches(&labelled(json!({ "app": "" }))));
        assert!(!selector.matches(&labelled(json!({ "app": "x" }))));
        assert!(!selector.matches(&labelled(json!({}))));
    }

    #[test]
    fn field_selectors_check_supported_labels() {
        let services = ResourceType::of::<k8s_openapi::api::core::v1::Service>();
        let object = json!({ "metadata": { "name": "web", "namespace": "ns" }, "spec": { "type": "ClusterIP" } });
        let selector =
            FieldSelector::parse("metadata.name=web,spec.type!=NodePort", &services).expect("supported fields");
        assert!(selector.matches(&object));
        assert!(
            !FieldSelector::parse("metadata.name=db", &services)
                .expect("ok")
                .matches(&object)
        );
        let error = FieldSelector::parse("spec.ports=1", &services).expect_err("unsupported");
        assert_eq!(error.code, 400);
        assert!(error.message.contains("field label not supported"));
    }
}
