//! An in-process fake Kubernetes API server for tests.
//!
//! [`FakeApiServer`] listens on `127.0.0.1:<random port>` and speaks the real Kubernetes REST
//! protocol (JSON only), so an ordinary `kube::Client` — from [`FakeApiServer::client`] or from
//! the kubeconfig of [`FakeApiServer::kubeconfig_yaml`] — works against it unchanged:
//! `Api::get/list/create/replace/patch/delete`, `kube::runtime::watcher`, reflectors, leases.
//!
//! # What is faithful
//! - One global resourceVersion counter shared by all types (like etcd); uid,
//!   creationTimestamp and generation (bumped when anything outside metadata/status changes)
//!   are set by the server; identical writes are no-ops that keep the resourceVersion.
//! - list: label selectors (full syntax), field selectors (`metadata.name`,
//!   `metadata.namespace` and the per-kind labels the apiserver supports), resourceVersion
//!   with `NotOlderThan`/`Exact` (exact lists replay history backwards), `limit`/`continue`
//!   paging over a consistent snapshot, `PartialObjectMetadata` lists.
//! - watch: history replay from a resourceVersion, synthetic ADDED events for `""`/`"0"`,
//!   streaming lists (`sendInitialEvents` with the `initial-events-end` bookmark), selector
//!   transitions (an object leaving a selection is DELETED), BOOKMARK events (on demand, at an
//!   optional interval and before a watch times out), `timeoutSeconds`, and an ERROR event
//!   with a 410 `Expired` Status when the resourceVersion was compacted.
//! - create (201, 409 AlreadyExists, generateName), update (409 Conflict on a stale
//!   resourceVersion), delete (preconditions, finalizers with deletionTimestamp and 202),
//!   deletecollection, dry runs, status subresources (Service), and `Status` bodies with the
//!   apiserver's codes, reasons and messages.
//! - patch: JSON merge patch, JSON patch (RFC 6902), and server-side apply with field
//!   managers: managedFields are tracked and rendered, fields dropped from an applied
//!   configuration are removed, applying over another manager's different value is a 409
//!   Conflict unless `force=true`.
//! - Validation and defaulting: object names, label syntax, Service cluster-IP/node-port
//!   allocation and immutability, required fields of EndpointSlices, Leases, ConfigMaps and
//!   events.k8s.io Events (422 Invalid with causes).
//!
//! - Authentication and authorization, when asked for
//!   ([`FakeApiServerBuilder::authorize_rbac`]): bearer tokens name users
//!   ([`FakeApiServer::add_token`]); their requests are authorised by RBAC from the Roles,
//!   ClusterRoles, RoleBindings and ClusterRoleBindings stored in the fake (rbac/v1 rule
//!   semantics: verbs, API groups, resources and subresources, resourceNames, User/Group/
//!   ServiceAccount subjects; a server-side apply that creates also needs `create`), and a refusal
//!   is the apiserver's 403 `Forbidden` Status. Requests without a token act as a cluster
//!   administrator.
//! - ValidatingAdmissionPolicies, when asked for ([`FakeApiServerBuilder::admission_policies`]):
//!   stored policies and their `Deny` bindings are evaluated with a CEL interpreter on every
//!   create, update, patch and delete ([`policy`] says what is supported).
//!
//! # Known limitations
//! - Strategic merge patch is applied as a JSON merge patch, and server-side apply treats
//!   every list as atomic: lists are replaced whole, never merged by key.
//! - Namespaces are implicit (writing into any namespace works); there is no garbage
//!   collection of owned objects, no endpoints controller, no aggregated ClusterRoles, no
//!   admission policies on deletecollection, no protobuf and no Table output. core/v1 and events.k8s.io/v1 Events are stored apart.
//! - PUT to a missing object is 404 (never create-on-update).

mod admission;
mod api;
mod auth;
mod discovery;
mod object;
mod ownership;
mod patch;
pub mod policy;
mod resources;
mod routes;
mod selector;
mod server;
mod status;
mod store;
mod watch;

pub use api::{InjectedFailure, RecordedRequest};
pub use auth::UserInfo;
pub use resources::ResourceType;
pub use server::{FakeApiServer, FakeApiServerBuilder, FakeError};
pub use status::ApiError;
