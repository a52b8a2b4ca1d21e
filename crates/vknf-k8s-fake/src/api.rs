//! HTTP request handling: parse the verb and parameters, call the store, shape the response.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use serde_json::{Value, json};

use crate::auth::{self, UserInfo};
use crate::discovery;
use crate::object::meta_str;
use crate::policy::Admission;
use crate::routes::{Route, route};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{
    DeleteOptions, Deletion, ListQuery, PatchBody, Store, Target, WatchQuery, WriteCheck, WriteContext,
};
use crate::watch::{self, WatchOptions, partial_metadata};

/// Response body type: a whole JSON document or a watch stream.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// The apiserver's default request size limit (3 MiB).
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// One request the server answered, for assertions in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `PATCH`.
    pub method: String,
    /// Path without the query, e.g. `/api/v1/namespaces/default/services/web`.
    pub path: String,
    /// Decoded query parameters in order.
    pub query: Vec<(String, String)>,
    /// `Content-Type` of the request, if any.
    pub content_type: Option<String>,
    /// HTTP status code of the response (200 for watches that started streaming).
    pub status: u16,
}

impl RecordedRequest {
    /// The first value of a query parameter.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether this was a watch request.
    pub fn is_watch(&self) -> bool {
        matches!(self.query_param("watch"), Some("true" | "1"))
    }
}

/// A failure the server will return for matching requests, to test client error handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFailure {
    method: Option<String>,
    path_contains: String,
    code: u16,
    message: String,
    remaining: usize,
}

impl InjectedFailure {
    /// Fails the next matching request with this HTTP status (as a proper `Status` body).
    pub fn status(code: u16) -> Self {
        Self {
            method: None,
            path_contains: String::new(),
            code,
            message: format!("injected failure with status {code}"),
            remaining: 1,
        }
    }

    /// Only requests with this method (case-insensitive) match.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only requests whose path contains this text match.
    pub fn path_contains(mut self, fragment: &str) -> Self {
        self.path_contains = fragment.to_string();
        self
    }

    /// Message carried in the `Status`.
    pub fn message(mut self, message: &str) -> Self {
        self.message = message.to_string();
        self
    }

    /// How many matching requests fail before the rule expires.
    pub fn times(mut self, times: usize) -> Self {
        self.remaining = times;
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.remaining > 0
            && self.method.as_deref().is_none_or(|m| m == method.as_str())
            && path.contains(&self.path_contains)
    }
}

/// Everything request handlers share.
pub(crate) struct ApiState {
    pub(crate) store: Arc<Store>,
    /// Bearer tokens and the users they authenticate.
    pub(crate) tokens: Mutex<HashMap<String, UserInfo>>,
    /// Whether RBAC limits authenticated users.
    pub(crate) rbac: bool,
    /// Whether stored ValidatingAdmissionPolicies are enforced.
    pub(crate) admission_policies: bool,
    pub(crate) server_address: String,
    pub(crate) bookmark_interval: Option<Duration>,
    pub(crate) log: Mutex<Vec<RecordedRequest>>,
    pub(crate) failures: Mutex<Vec<InjectedFailure>>,
}

enum Reply {
    Json(StatusCode, Value),
    Stream(watch::ChannelBody),
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(error: &ApiError) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &error.to_status())
}

/// Query parameters of one request.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("" | "false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid boolean value \"{other}\" for {key}"
            ))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid value \"{v}\" for {key}: not an integer")))
            })
            .transpose()
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "unsupported dryRun value \"{other}\": only \"All\" is supported"
            ))),
        }
    }

    fn labels(&self) -> Result<LabelSelector, ApiError> {
        LabelSelector::parse(self.get("labelSelector").unwrap_or_default())
    }
}

/// The parts of a request the handlers look at.
struct ApiRequest {
    /// The admission policies in force for a write.
    admission: Option<Arc<dyn WriteCheck>>,
    method: Method,
    route: Route,
    query: Query,
    content_type: String,
    accept: String,
    user_agent: String,
    body: Bytes,
}

impl ApiRequest {
    fn wants_partial_metadata(&self) -> bool {
        self.accept.contains("as=PartialObjectMetadata")
    }

    fn write_context(&self, apply: bool) -> Result<WriteContext, ApiError> {
        let manager = match self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            Some(manager) if manager.len() > 128 => {
                return Err(ApiError::bad_request(
                    "fieldManager must not be longer than 128 characters",
                ));
            }
            Some(manager) => manager.to_string(),
            None if apply => {
                return Err(ApiError::bad_request("PATCH /apply requires fieldManager to be set"));
            }
            // The apiserver names unnamed writers after their user agent's product token.
            None => self
                .user_agent
                .split('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        };
        if self.query.flag("force")? && !apply {
            return Err(ApiError::bad_request("force flag must only be set for apply"));
        }
        Ok(WriteContext {
            manager,
            dry_run: self.query.dry_run()?,
            admission: self.admission.clone(),
        })
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        let media = self.content_type.split(';').next().unwrap_or("").trim();
        let parsed = match media {
            "" | "application/json" | "*/*" => serde_json::from_slice(&self.body).map_err(|e| e.to_string()),
            "application/yaml" => serde_saphyr::from_slice(&self.body).map_err(|e| e.to_string()),
            other => return Err(ApiError::unsupported_media_type(other)),
        };
        parsed.map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))
    }

    fn patch_body(&self) -> Result<PatchBody, ApiError> {
        let media = self.content_type.split(';').next().unwrap_or("").trim();
        let json = || {
            serde_json::from_slice::<Value>(&self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
        };
        match media {
            "application/merge-patch+json" => Ok(PatchBody::Merge(json()?)),
            "application/strategic-merge-patch+json" => Ok(PatchBody::Strategic(json()?)),
            "application/json-patch+json" => Ok(PatchBody::Json(json()?)),
            "application/apply-patch+yaml" => {
                // JSON is YAML; trying JSON first keeps numbers and strings exactly as sent.
                let config = serde_json::from_slice::<Value>(&self.body).or_else(|_| {
                    serde_saphyr::from_slice::<Value>(&self.body)
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
                })?;
                if !config.is_object() {
                    return Err(ApiError::bad_request("an apply patch must be an object"));
                }
                Ok(PatchBody::Apply {
                    config,
                    force: self.query.flag("force")?,
                })
            }
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }

    fn delete_options(&self) -> Result<DeleteOptions, ApiError> {
        let body: Value = if self.body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        let text = |pointer: &str| body.pointer(pointer).and_then(Value::as_str).map(str::to_string);
        let body_dry_run = body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|modes| modes.iter().any(|m| m == "All"));
        Ok(DeleteOptions {
            uid: text("/preconditions/uid"),
            resource_version: text("/preconditions/resourceVersion"),
            dry_run: body_dry_run || self.query.dry_run()?,
        })
    }
}

impl ApiState {
    fn record(&self, request: RecordedRequest) {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(request);
    }

    fn injected_failure(&self, method: &Method, path: &str) -> Option<ApiError> {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let rule = failures.iter_mut().find(|rule| rule.matches(method, path))?;
        rule.remaining -= 1;
        Some(ApiError::injected(rule.code, &rule.message))
    }

    /// The user a request's `Authorization` header names; requests without one act as a
    /// cluster administrator.
    fn authenticate(&self, authorization: Option<&str>) -> Result<UserInfo, ApiError> {
        let Some(credentials) = authorization else {
            return Ok(UserInfo::admin());
        };
        let token = credentials.strip_prefix("Bearer ").ok_or_else(ApiError::unauthorized)?;
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(token.trim())
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }

    /// RBAC's decision on a resource request (discovery is open to every authenticated user,
    /// as the `system:discovery` ClusterRole makes it in a real cluster).
    fn authorize(&self, user: &UserInfo, request: &ApiRequest) -> Result<(), ApiError> {
        if !self.rbac || user.is_admin() {
            return Ok(());
        }
        let table = self.store.resources();
        let (resource, namespace, name, subresource) = match &request.route {
            Route::Collection { resource, namespace } => {
                // A list or watch of one object (fieldSelector=metadata.name=X) is authorised
                // for that name, as the apiserver's request info does.
                let by_name = request
                    .query
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .filter(|n| !n.contains(','));
                (*resource, namespace.as_deref(), by_name, None)
            }
            Route::Item {
                resource,
                namespace,
                name,
                target,
            } => (
                *resource,
                namespace.as_deref(),
                Some(name.as_str()),
                (*target == Target::Status).then_some("status"),
            ),
            _ => return Ok(()),
        };
        let watching = request.query.flag("watch")?;
        let is_item = matches!(request.route, Route::Item { .. });
        let attributes = auth::Attributes {
            verb: auth::verb(&request.method, is_item, watching),
            resource: table.get(resource),
            subresource,
            namespace,
            name,
        };
        auth::authorize(&self.store, user, &attributes)?;
        // A server-side apply that creates the object needs `create` too.
        let applying = request.content_type.starts_with("application/apply-patch");
        if request.method == Method::PATCH
            && applying
            && let Some(name) = name
            && self.store.get(resource, namespace, name).is_err()
        {
            auth::authorize(
                &self.store,
                user,
                &auth::Attributes {
                    verb: "create",
                    ..attributes
                },
            )?;
        }
        Ok(())
    }

    /// Serves one HTTP request. Never fails: every error becomes a `Status` response.
    pub(crate) async fn handle<B>(self: Arc<Self>, request: Request<B>) -> Result<Response<ResponseBody>, Infallible>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_string();
        let query: Vec<(String, String)> = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let header = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(header::CONTENT_TYPE);
        let mut record = RecordedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            status: 0,
        };
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                let error = ApiError::too_large(MAX_BODY_BYTES);
                record.status = error.code;
                self.record(record);
                return Ok(error_response(&error));
            }
        };
        let outcome = match self.injected_failure(&parts.method, &path) {
            Some(error) => Err(error),
            None => self
                .authenticate(header(header::AUTHORIZATION).as_deref())
                .and_then(|user| Ok((user, route(self.store.resources(), &path)?)))
                .and_then(|(user, route)| {
                    let mut request = ApiRequest {
                        admission: None,
                        method: parts.method.clone(),
                        route,
                        query: Query(query),
                        content_type: content_type.unwrap_or_default(),
                        accept: header(header::ACCEPT).unwrap_or_default(),
                        user_agent: header(header::USER_AGENT).unwrap_or_default(),
                        body,
                    };
                    self.authorize(&user, &request)?;
                    if self.admission_policies && request.method != Method::GET {
                        let subresource = match &request.route {
                            Route::Item {
                                target: Target::Status, ..
                            } => "status",
                            _ => "",
                        };
                        request.admission = Some(Arc::new(Admission::load(&self.store, &user, subresource)?));
                    }
                    self.dispatch(request)
                }),
        };
        let response = match outcome {
            Ok(Reply::Json(status, body)) => json_response(status, &body),
            Ok(Reply::Stream(body)) => {
                let mut response = Response::new(body.boxed_unsync());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(error) => {
                tracing::debug!(%path, code = error.code, reason = error.reason, "fake apiserver error");
                error_response(&error)
            }
        };
        record.status = response.status().as_u16();
        self.record(record);
        Ok(response)
    }

    fn dispatch(&self, request: ApiRequest) -> Result<Reply, ApiError> {
        let table = self.store.resources();
        let ok = |value: Value| Ok(Reply::Json(StatusCode::OK, value));
        match (&request.route, &request.method) {
            (Route::Version, &Method::GET) => ok(discovery::version()),
            (Route::CoreVersions, &Method::GET) => ok(discovery::core_versions(table, &self.server_address)),
            (Route::GroupList, &Method::GET) => ok(discovery::group_list(table)),
            (Route::Group(group), &Method::GET) => ok(discovery::group(table, group)?),
            (Route::ResourceList { group, version }, &Method::GET) => {
                ok(discovery::resource_list(table, group, version))
            }
            (Route::Collection { .. } | Route::Item { .. }, _) => self.resource_verb(&request),
            (_, method) => Err(ApiError::method_not_allowed(method.as_str())),
        }
    }

    fn resource_verb(&self, request: &ApiRequest) -> Result<Reply, ApiError> {
        let store = &self.store;
        let watching = request.query.flag("watch")?;
        match (&request.route, &request.method) {
            (Route::Collection { resource, namespace }, &Method::GET) if watching => {
                self.watch(request, *resource, namespace.as_deref(), FieldSelector::default())
            }
            (Route::Collection { resource, namespace }, &Method::GET) => {
                self.list(request, *resource, namespace.as_deref())
            }
            (Route::Collection { resource, namespace }, &Method::POST) => {
                let created = store.create(
                    *resource,
                    namespace.as_deref(),
                    request.json_body()?,
                    &request.write_context(false)?,
                )?;
                Ok(Reply::Json(StatusCode::CREATED, created))
            }
            (Route::Collection { resource, namespace }, &Method::DELETE) => {
                let rt = self.store.resources().get(*resource);
                let fields = FieldSelector::parse(request.query.get("fieldSelector").unwrap_or(""), rt)?;
                let deleted = store.delete_collection(
                    *resource,
                    namespace.as_deref(),
                    &request.query.labels()?,
                    &fields,
                    &request.delete_options()?,
                );
                Ok(Reply::Json(
                    StatusCode::OK,
                    list_document(rt, store.revision(), deleted, None, None),
                ))
            }
            (
                Route::Item {
                    resource,
                    namespace,
                    name,
                    ..
                },
                &Method::GET,
            ) if watching => self.watch(request, *resource, namespace.as_deref(), FieldSelector::for_name(name)),
            (
                Route::Item {
                    resource,
                    namespace,
                    name,
                    ..
                },
                &Method::GET,
            ) => {
                let object = store.get(*resource, namespace.as_deref(), name)?;
                Ok(Reply::Json(
                    StatusCode::OK,
                    if request.wants_partial_metadata() {
                        partial_metadata(&object)
                    } else {
                        object
                    },
                ))
            }
            (
                Route::Item {
                    resource,
                    namespace,
                    name,
                    target,
                },
                &Method::PUT,
            ) => {
                let replaced = store.replace(
                    *resource,
                    namespace.as_deref(),
                    name,
                    request.json_body()?,
                    *target,
                    &request.write_context(false)?,
                )?;
                Ok(Reply::Json(StatusCode::OK, replaced))
            }
            (
                Route::Item {
                    resource,
                    namespace,
                    name,
                    target,
                },
                &Method::PATCH,
            ) => {
                let patch = request.patch_body()?;
                let apply = matches!(patch, PatchBody::Apply { .. });
                let (object, created) = store.patch(
                    *resource,
                    namespace.as_deref(),
                    name,
                    patch,
                    *target,
                    &request.write_context(apply)?,
                )?;
                let status = if created { StatusCode::CREATED } else { StatusCode::OK };
                Ok(Reply::Json(status, object))
            }
            (
                Route::Item {
                    resource,
                    namespace,
                    name,
                    target: Target::Main,
                },
                &Method::DELETE,
            ) => {
                let rt = self.store.resources().get(*resource);
                if let Some(policies) = &request.admission
                    && let Ok(old) = store.get(*resource, namespace.as_deref(), name)
                {
                    policies.validate(rt, "DELETE", namespace.as_deref(), name, None, Some(&old))?;
                }
                match store.delete(*resource, namespace.as_deref(), name, &request.delete_options()?)? {
                    Deletion::Pending(object) => Ok(Reply::Json(StatusCode::ACCEPTED, object)),
                    Deletion::Deleted(object) if rt.returns_deleted_object => Ok(Reply::Json(StatusCode::OK, object)),
                    Deletion::Deleted(object) => {
                        let mut details = json!({
                            "name": name,
                            "kind": rt.plural,
                            "uid": meta_str(&object, "uid"),
                        });
                        if !rt.group.is_empty() {
                            details["group"] = json!(rt.group);
                        }
                        Ok(Reply::Json(
                            StatusCode::OK,
                            json!({
                                "kind": "Status",
                                "apiVersion": "v1",
                                "metadata": {},
                                "status": "Success",
                                "details": details,
                            }),
                        ))
                    }
                }
            }
            (_, method) => Err(ApiError::method_not_allowed(method.as_str())),
        }
    }

    fn list(&self, request: &ApiRequest, resource: usize, namespace: Option<&str>) -> Result<Reply, ApiError> {
        let rt = self.store.resources().get(resource);
        let query = ListQuery {
            labels: request.query.labels()?,
            fields: FieldSelector::parse(request.query.get("fieldSelector").unwrap_or(""), rt)?,
            limit: request
                .query
                .number("limit")?
                .map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            continue_token: request
                .query
                .get("continue")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            resource_version: request.query.get("resourceVersion").map(str::to_string),
            version_match: request
                .query
                .get("resourceVersionMatch")
                .filter(|m| !m.is_empty())
                .map(str::to_string),
        };
        let page = self.store.list(resource, namespace, &query)?;
        let items = if request.wants_partial_metadata() {
            page.items.iter().map(partial_metadata).collect()
        } else {
            page.items
        };
        let mut document = list_document(rt, page.revision, items, page.continue_token, page.remaining);
        if request.wants_partial_metadata() {
            document["kind"] = json!("PartialObjectMetadataList");
            document["apiVersion"] = json!("meta.k8s.io/v1");
        }
        Ok(Reply::Json(StatusCode::OK, document))
    }

    fn watch(
        &self,
        request: &ApiRequest,
        resource: usize,
        namespace: Option<&str>,
        item_selector: FieldSelector,
    ) -> Result<Reply, ApiError> {
        let rt = self.store.resources().get(resource).clone();
        let fields = FieldSelector::parse(request.query.get("fieldSelector").unwrap_or(""), &rt)?.and(item_selector);
        let send_initial_events = request.query.flag("sendInitialEvents")?;
        let bookmarks = request.query.flag("allowWatchBookmarks")?;
        if send_initial_events {
            if request.query.get("resourceVersionMatch") != Some("NotOlderThan") {
                return Err(ApiError::bad_request(
                    "sendInitialEvents requires resourceVersionMatch=NotOlderThan",
                ));
            }
            if !bookmarks {
                return Err(ApiError::bad_request(
                    "sendInitialEvents requires allowWatchBookmarks=true",
                ));
            }
        }
        let labels = request.query.labels()?;
        let query = WatchQuery {
            labels: labels.clone(),
            fields: fields.clone(),
            resource_version: request.query.get("resourceVersion").map(str::to_string),
            send_initial_events,
            bookmarks,
        };
        let subscription = self.store.watch(resource, namespace, &query)?;
        // Without timeoutSeconds the apiserver picks 30-60 minutes; an hour is close enough.
        let timeout = Duration::from_secs(request.query.number("timeoutSeconds")?.unwrap_or(3600));
        let body = watch::start(
            Arc::clone(&self.store),
            subscription,
            WatchOptions {
                resource: rt,
                labels,
                fields,
                bookmarks,
                timeout,
                bookmark_interval: self.bookmark_interval,
                partial_metadata: request.wants_partial_metadata(),
            },
        );
        Ok(Reply::Stream(body))
    }
}

/// A `{Kind}List` document; items lose apiVersion/kind, as the real apiserver encodes them.
fn list_document(
    resource: &crate::resources::ResourceType,
    revision: u64,
    items: Vec<Value>,
    continue_token: Option<String>,
    remaining: Option<usize>,
) -> Value {
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut item| {
            if let Some(fields) = item.as_object_mut() {
                if fields.get("kind").and_then(Value::as_str) != Some("PartialObjectMetadata") {
                    fields.remove("apiVersion");
                    fields.remove("kind");
                }
            }
            item
        })
        .collect();
    let mut metadata = json!({ "resourceVersion": revision.to_string() });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = remaining {
        metadata["remainingItemCount"] = json!(remaining);
    }
    json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    })
}
