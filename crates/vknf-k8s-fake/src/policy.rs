//! ValidatingAdmissionPolicies (admissionregistration.k8s.io/v1), evaluated with a CEL
//! interpreter (the `cel` crate).
//!
//! [`ValidatingPolicy`] compiles one policy document; [`ValidatingPolicy::evaluate`] runs it
//! against one admission request the way the apiserver's admission plugin does: the resource
//! rules of `matchConstraints`, then every `matchConditions` expression (all must be true for the
//! policy to apply), then the `variables` in order, then each `validations` expression (each must
//! be true). An expression that fails to evaluate follows `failurePolicy` (`Fail` refuses).
//!
//! The CEL available is the `cel` crate's standard library: Kubernetes' extension libraries
//! (strings, lists, regex, IP/CIDR, quantity, authorizer) are not, so policies meant for both
//! must stick to standard CEL. `namespaceSelector`, `objectSelector`, `excludeResourceRules`,
//! `messageExpression`, `auditAnnotations` and bindings' `matchResources` are not supported:
//! a policy or binding that sets them is rejected by [`ValidatingPolicy::new`] or ignored with
//! an error on every matching request, never silently skipped.

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Program};
use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::resources::ResourceType;
use crate::status::ApiError;
use crate::store::{Store, WriteCheck};

const GROUP: &str = "admissionregistration.k8s.io";

/// The resource types policies and bindings are stored as; served when admission policies are
/// enforced.
pub(crate) fn policy_resource_types() -> Vec<ResourceType> {
    use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
    vec![
        ResourceType::of::<ValidatingAdmissionPolicy>(),
        ResourceType::of::<ValidatingAdmissionPolicyBinding>(),
    ]
}

/// Why a policy document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A required field is missing or has the wrong type.
    #[error("policy {policy}: {field} is missing or malformed")]
    Malformed {
        /// The policy's name.
        policy: String,
        /// The field.
        field: String,
    },
    /// An expression does not parse as CEL.
    #[error("policy {policy}: {field}: the expression does not parse: {message}")]
    Parse {
        /// The policy's name.
        policy: String,
        /// Which expression.
        field: String,
        /// The parser's message.
        message: String,
    },
    /// The policy uses a feature this evaluator does not implement.
    #[error("policy {policy}: {field} is not supported by the fake API server")]
    Unsupported {
        /// The policy's name.
        policy: String,
        /// The field.
        field: String,
    },
}

/// One admission request, as the CEL variables `request`, `object` and `oldObject` see it.
#[derive(Debug, Clone)]
pub struct AdmissionInput {
    /// `request`: an AdmissionRequest-shaped document (`operation`, `name`, `namespace`,
    /// `resource`, `subResource`, `userInfo`, ...); build one with [`AdmissionInput::request`].
    pub request: Value,
    /// The object after the write (`null` for DELETE).
    pub object: Value,
    /// The object before the write (`null` for CREATE).
    pub old_object: Value,
    /// The parameter object the binding names (`null` when the policy has no `paramKind`).
    pub params: Value,
}

impl AdmissionInput {
    /// An AdmissionRequest document for `operation` (`CREATE`, `UPDATE`, `DELETE`) on
    /// `resource` (`subresource` empty for the object itself) by `user`.
    pub fn request(
        operation: &str,
        resource: &ResourceType,
        subresource: &str,
        namespace: Option<&str>,
        name: &str,
        user: &UserInfo,
    ) -> Value {
        json!({
            "uid": crate::object::new_uid(),
            "kind": { "group": resource.group, "version": resource.version, "kind": resource.kind },
            "resource": { "group": resource.group, "version": resource.version, "resource": resource.plural },
            "requestKind": { "group": resource.group, "version": resource.version, "kind": resource.kind },
            "requestResource": { "group": resource.group, "version": resource.version, "resource": resource.plural },
            "subResource": subresource,
            "name": name,
            "namespace": namespace.unwrap_or_default(),
            "operation": operation,
            "userInfo": user.to_json(),
            "dryRun": false,
        })
    }
}

/// What a policy decided about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request is outside the policy's resource rules, or a match condition is false.
    NotMatched,
    /// Every validation held.
    Allowed,
    /// A validation was false (its `message`, or the expression when it has none), or an
    /// expression failed under `failurePolicy: Fail`.
    Denied {
        /// Why, as the apiserver words the cause.
        message: String,
        /// The validation's `reason` (default `Forbidden`).
        reason: String,
    },
}

struct Compiled {
    source: String,
    program: Program,
}

struct Validation {
    expression: Compiled,
    message: Option<String>,
    reason: Option<String>,
}

/// One compiled ValidatingAdmissionPolicy.
pub struct ValidatingPolicy {
    name: String,
    fail_closed: bool,
    param_kind: Option<(String, String)>,
    rules: Vec<Value>,
    match_conditions: Vec<Compiled>,
    variables: Vec<(String, Compiled)>,
    validations: Vec<Validation>,
}

impl std::fmt::Debug for ValidatingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatingPolicy").field("name", &self.name).finish()
    }
}

fn compile(policy: &str, field: String, source: &str) -> Result<Compiled, PolicyError> {
    let program = Program::compile(source).map_err(|e| PolicyError::Parse {
        policy: policy.to_owned(),
        field,
        message: e.to_string(),
    })?;
    Ok(Compiled {
        source: source.to_owned(),
        program,
    })
}

fn is_empty_selector(value: Option<&Value>) -> bool {
    value.is_none_or(|v| v.is_null() || v.as_object().is_some_and(|m| m.is_empty()))
}

fn strings(value: &Value, field: &str) -> Vec<String> {
    value
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn matches_any(values: &[String], wanted: &str) -> bool {
    values.iter().any(|v| v == "*" || v == wanted)
}

/// Whether an admission resource rule entry (`plural`, `plural/sub`, `*`, `*/sub`, `*/*`)
/// covers the request.
fn resource_matches(entry: &str, plural: &str, subresource: &str) -> bool {
    let (resource, sub) = entry.split_once('/').map_or((entry, None), |(r, s)| (r, Some(s)));
    let resource_ok = resource == "*" || resource == plural;
    let sub_ok = match sub {
        None => subresource.is_empty(),
        Some("*") => true,
        Some(sub) => sub == subresource,
    };
    resource_ok && sub_ok
}

impl ValidatingPolicy {
    /// Compiles a ValidatingAdmissionPolicy document (as JSON).
    pub fn new(document: &Value) -> Result<ValidatingPolicy, PolicyError> {
        let name = document["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let malformed = |field: &str| PolicyError::Malformed {
            policy: name.clone(),
            field: field.to_owned(),
        };
        let unsupported = |field: &str| PolicyError::Unsupported {
            policy: name.clone(),
            field: field.to_owned(),
        };
        let spec = document
            .get("spec")
            .filter(|s| s.is_object())
            .ok_or_else(|| malformed("spec"))?;
        let constraints = spec
            .get("matchConstraints")
            .ok_or_else(|| malformed("spec.matchConstraints"))?;
        for field in ["namespaceSelector", "objectSelector"] {
            if !is_empty_selector(constraints.get(field)) {
                return Err(unsupported(&format!("spec.matchConstraints.{field}")));
            }
        }
        if constraints.get("excludeResourceRules").is_some_and(|r| !r.is_null()) {
            return Err(unsupported("spec.matchConstraints.excludeResourceRules"));
        }
        if spec.get("auditAnnotations").is_some_and(|r| !r.is_null()) {
            return Err(unsupported("spec.auditAnnotations"));
        }
        let rules = constraints
            .get("resourceRules")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| malformed("spec.matchConstraints.resourceRules"))?;
        let param_kind = match spec.get("paramKind") {
            None | Some(Value::Null) => None,
            Some(kind) => Some((
                kind["apiVersion"]
                    .as_str()
                    .ok_or_else(|| malformed("spec.paramKind.apiVersion"))?
                    .to_owned(),
                kind["kind"]
                    .as_str()
                    .ok_or_else(|| malformed("spec.paramKind.kind"))?
                    .to_owned(),
            )),
        };
        let named = |list: &str| -> Result<Vec<(String, String)>, PolicyError> {
            spec.get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, item)| {
                    let field = |f: &str| format!("spec.{list}[{i}].{f}");
                    let expression = item["expression"]
                        .as_str()
                        .ok_or_else(|| malformed(&field("expression")))?;
                    let name = item["name"].as_str().unwrap_or_default().to_owned();
                    Ok((name, expression.to_owned()))
                })
                .collect()
        };
        let match_conditions = named("matchConditions")?
            .into_iter()
            .enumerate()
            .map(|(i, (_, source))| compile(&name, format!("spec.matchConditions[{i}]"), &source))
            .collect::<Result<_, _>>()?;
        let variables = named("variables")?
            .into_iter()
            .map(|(variable, source)| {
                let compiled = compile(&name, format!("spec.variables[{variable}]"), &source)?;
                Ok((variable, compiled))
            })
            .collect::<Result<_, PolicyError>>()?;
        let mut validations = Vec::new();
        for (i, item) in spec
            .get("validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if item.get("messageExpression").is_some() {
                return Err(unsupported(&format!("spec.validations[{i}].messageExpression")));
            }
            let source = item["expression"]
                .as_str()
                .ok_or_else(|| malformed(&format!("spec.validations[{i}].expression")))?;
            validations.push(Validation {
                expression: compile(&name, format!("spec.validations[{i}]"), source)?,
                message: item["message"].as_str().map(|m| m.trim().to_owned()),
                reason: item["reason"].as_str().map(str::to_owned),
            });
        }
        Ok(ValidatingPolicy {
            fail_closed: spec["failurePolicy"].as_str() != Some("Ignore"),
            name,
            param_kind,
            rules,
            match_conditions,
            variables,
            validations,
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `(apiVersion, kind)` of the parameter objects, if the policy takes any.
    pub fn param_kind(&self) -> Option<(&str, &str)> {
        self.param_kind.as_ref().map(|(v, k)| (v.as_str(), k.as_str()))
    }

    /// Whether the request falls under `matchConstraints.resourceRules`.
    fn rules_match(&self, request: &Value) -> bool {
        let text = |pointer: &str| request.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
        let (group, version, plural) = (
            text("/resource/group"),
            text("/resource/version"),
            text("/resource/resource"),
        );
        let (subresource, operation) = (text("/subResource"), text("/operation"));
        self.rules.iter().any(|rule| {
            matches_any(&strings(rule, "apiGroups"), group)
                && matches_any(&strings(rule, "apiVersions"), version)
                && matches_any(&strings(rule, "operations"), operation)
                && strings(rule, "resources")
                    .iter()
                    .any(|entry| resource_matches(entry, plural, subresource))
                && {
                    let names = strings(rule, "resourceNames");
                    names.is_empty() || names.iter().any(|n| n == text("/name"))
                }
        })
    }

    /// Runs the policy against one request.
    pub fn evaluate(&self, input: &AdmissionInput) -> Verdict {
        if !self.rules_match(&input.request) {
            return Verdict::NotMatched;
        }
        let mut context = Context::default();
        let converted = [
            ("request", &input.request),
            ("object", &input.object),
            ("oldObject", &input.old_object),
            ("params", &input.params),
        ]
        .into_iter()
        .try_for_each(|(name, value)| {
            let value = cel::to_value(value).map_err(|e| format!("{name} does not convert to CEL: {e}"))?;
            context.add_variable_from_value(name, value);
            Ok::<(), String>(())
        });
        if let Err(message) = converted {
            return self.failed(message);
        }
        let mut variables: HashMap<String, cel::Value> = HashMap::new();
        context.add_variable_from_value("variables", variables.clone());
        for condition in &self.match_conditions {
            match condition.program.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => return Verdict::NotMatched,
                Ok(other) => return self.failed(not_boolean(&condition.source, &other)),
                Err(error) => return self.failed(evaluation_error(&condition.source, &error)),
            }
        }
        // Kubernetes evaluates variables lazily; here each is evaluated once, in order, and one
        // that fails is left out, so that only an expression using it fails.
        for (name, variable) in &self.variables {
            if let Ok(value) = variable.program.execute(&context) {
                variables.insert(name.clone(), value);
                context.add_variable_from_value("variables", variables.clone());
            }
        }
        for validation in &self.validations {
            let failure = match validation.expression.program.execute(&context) {
                Ok(cel::Value::Bool(true)) => continue,
                Ok(cel::Value::Bool(false)) => Verdict::Denied {
                    message: validation
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("failed expression: {}", validation.expression.source.trim())),
                    reason: validation.reason.clone().unwrap_or_else(|| "Forbidden".to_owned()),
                },
                Ok(other) => self.failed(not_boolean(&validation.expression.source, &other)),
                Err(error) => self.failed(evaluation_error(&validation.expression.source, &error)),
            };
            if failure != Verdict::Allowed {
                return failure;
            }
        }
        Verdict::Allowed
    }

    fn failed(&self, message: String) -> Verdict {
        if self.fail_closed {
            Verdict::Denied {
                message,
                reason: "Forbidden".to_owned(),
            }
        } else {
            Verdict::Allowed
        }
    }
}

fn not_boolean(source: &str, value: &cel::Value) -> String {
    format!("expression '{}' did not evaluate to a bool: {value:?}", source.trim())
}

fn evaluation_error(source: &str, error: &cel::ExecutionError) -> String {
    format!("expression '{}' resulted in error: {error}", source.trim())
}

/// A policy with one of its bindings, as loaded for a request.
struct Bound {
    policy: Arc<ValidatingPolicy>,
    binding: String,
    /// The parameter object; `None` when it is missing (the binding's
    /// `parameterNotFoundAction` then decides).
    params: Option<Value>,
    deny_when_missing: bool,
}

/// The policies in force for one request, and who sent it. Loaded before the store is locked;
/// the store calls [`Admission::validate`] with the final object of each write.
pub(crate) struct Admission {
    bound: Vec<Bound>,
    user: UserInfo,
    subresource: String,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("policies", &self.bound.len())
            .field("user", &self.user.username)
            .finish()
    }
}

impl Admission {
    /// The stored policies and their bindings with `Deny` among their actions, for a request by
    /// `user` on `subresource` (empty for the object itself).
    pub(crate) fn load(store: &Store, user: &UserInfo, subresource: &str) -> Result<Admission, ApiError> {
        let table = store.resources();
        let (Some(policies), Some(bindings)) = (
            table.find(GROUP, "v1", "validatingadmissionpolicies"),
            table.find(GROUP, "v1", "validatingadmissionpolicybindings"),
        ) else {
            return Ok(Admission {
                bound: Vec::new(),
                user: user.clone(),
                subresource: subresource.to_owned(),
            });
        };
        let policies: HashMap<String, Value> = store
            .snapshot(policies, None)
            .into_iter()
            .filter_map(|p| Some((p["metadata"]["name"].as_str()?.to_owned(), p)))
            .collect();
        let mut compiled: HashMap<String, Arc<ValidatingPolicy>> = HashMap::new();
        let mut bound = Vec::new();
        for binding in store.snapshot(bindings, None) {
            let binding_name = binding["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let spec = &binding["spec"];
            if !strings(spec, "validationActions").iter().any(|a| a == "Deny") {
                continue;
            }
            let invalid = |message: String| {
                ApiError::internal(format!("ValidatingAdmissionPolicyBinding '{binding_name}': {message}"))
            };
            if !is_empty_selector(spec.get("matchResources")) {
                return Err(invalid(
                    "matchResources is not supported by the fake API server".to_owned(),
                ));
            }
            let Some(policy_name) = spec["policyName"].as_str() else {
                continue;
            };
            let Some(document) = policies.get(policy_name) else {
                continue;
            };
            let policy = match compiled.get(policy_name) {
                Some(policy) => Arc::clone(policy),
                None => {
                    let policy = Arc::new(ValidatingPolicy::new(document).map_err(|e| invalid(e.to_string()))?);
                    compiled.insert(policy_name.to_owned(), Arc::clone(&policy));
                    policy
                }
            };
            let param_ref = &spec["paramRef"];
            let params = match policy.param_kind() {
                None => Some(Value::Null),
                Some((api_version, kind)) => {
                    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
                    let resource = table
                        .all()
                        .find(|(_, t)| t.group == group && t.version == version && t.kind == kind)
                        .map(|(id, _)| id)
                        .ok_or_else(|| invalid(format!("paramKind {api_version} {kind} is not served")))?;
                    let name = param_ref["name"]
                        .as_str()
                        .ok_or_else(|| invalid("paramRef.name is required (selectors are not supported)".to_owned()))?;
                    store.get(resource, param_ref["namespace"].as_str(), name).ok()
                }
            };
            bound.push(Bound {
                policy,
                binding: binding_name.clone(),
                params,
                deny_when_missing: param_ref["parameterNotFoundAction"].as_str() != Some("Allow"),
            });
        }
        Ok(Admission {
            bound,
            user: user.clone(),
            subresource: subresource.to_owned(),
        })
    }
}

impl WriteCheck for Admission {
    /// Refuses the write when a bound policy denies it, with the apiserver's Status.
    fn validate(
        &self,
        resource: &ResourceType,
        operation: &str,
        namespace: Option<&str>,
        name: &str,
        object: Option<&Value>,
        old_object: Option<&Value>,
    ) -> Result<(), ApiError> {
        let request = AdmissionInput::request(operation, resource, &self.subresource, namespace, name, &self.user);
        for bound in &self.bound {
            let denied = |message: &str, reason: &str| {
                let cause = format!(
                    "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {message}",
                    bound.policy.name(),
                    bound.binding
                );
                ApiError::denied_by_policy(resource, name, reason, &cause)
            };
            let input = AdmissionInput {
                request: request.clone(),
                object: object.cloned().unwrap_or(Value::Null),
                old_object: old_object.cloned().unwrap_or(Value::Null),
                params: bound.params.clone().unwrap_or(Value::Null),
            };
            if bound.params.is_none() {
                if bound.deny_when_missing && bound.policy.evaluate(&input) != Verdict::NotMatched {
                    return Err(denied("no params found for policy binding", "Forbidden"));
                }
                continue;
            }
            if let Verdict::Denied { message, reason } = bound.policy.evaluate(&input) {
                return Err(denied(&message, &reason));
            }
        }
        Ok(())
    }
}
