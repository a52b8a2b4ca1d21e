//! The listening server and the handle tests hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::api::{ApiState, InjectedFailure, RecordedRequest};
use crate::auth::UserInfo;
use crate::resources::{ResourceId, ResourceTable, ResourceType};
use crate::status::ApiError;
use crate::store::Store;

/// Why the fake could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// Binding 127.0.0.1:0 failed.
    #[error("failed to bind the fake API server: {0}")]
    Bind(#[source] std::io::Error),
    /// The Rust type's group/version/plural is not in this server's resource table.
    #[error("resource type {0} is not served by this fake API server")]
    UnknownResource(String),
    /// The store rejected the operation, exactly as it would an HTTP request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A typed object did not convert to or from JSON.
    #[error("object does not convert to or from JSON: {0}")]
    Serde(#[from] serde_json::Error),
    /// `kube` refused to build a client for the fake.
    #[error("failed to build a kube client for the fake API server: {0}")]
    Client(#[source] kube::Error),
    /// A YAML document did not parse.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// The server URL did not parse as a URI (should not happen for a bound socket).
    #[error("invalid server URL {0}")]
    Url(String),
}

/// Configures a [`FakeApiServer`] before it starts.
#[derive(Debug, Clone)]
pub struct FakeApiServerBuilder {
    resources: Vec<ResourceType>,
    bookmark_interval: Option<Duration>,
    authorize_rbac: bool,
    admission_policies: bool,
}

impl Default for FakeApiServerBuilder {
    fn default() -> Self {
        Self {
            resources: ResourceType::defaults(),
            bookmark_interval: None,
            authorize_rbac: false,
            admission_policies: false,
        }
    }
}

impl FakeApiServerBuilder {
    /// Also serves this resource type (e.g. `ResourceType::of::<Pod>()`); replaces a default
    /// with the same group/version/plural.
    pub fn resource(mut self, resource: ResourceType) -> Self {
        self.resources.push(resource);
        self
    }

    /// Sends bookmarks to bookmark-enabled watches this often (default: only on
    /// [`FakeApiServer::send_bookmarks`] and just before a watch times out).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = Some(interval);
        self
    }

    /// Authorises the requests of users with a token ([`FakeApiServer::add_token`]) by RBAC,
    /// from the Roles, ClusterRoles and bindings stored in the server (their types are served).
    pub fn authorize_rbac(mut self) -> Self {
        self.authorize_rbac = true;
        self.resources.extend(crate::auth::rbac_resource_types());
        self
    }

    /// Enforces the ValidatingAdmissionPolicies and bindings stored in the server (their types
    /// are served) on every write.
    pub fn admission_policies(mut self) -> Self {
        self.admission_policies = true;
        self.resources.extend(crate::policy::policy_resource_types());
        self
    }

    /// Binds 127.0.0.1 on a free port and starts serving on the current Tokio runtime.
    pub async fn start(self) -> Result<FakeApiServer, FakeError> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(FakeError::Bind)?;
        let address = listener.local_addr().map_err(FakeError::Bind)?;
        let store = Arc::new(Store::new(ResourceTable::new(self.resources)));
        let state = Arc::new(ApiState {
            store: Arc::clone(&store),
            tokens: Mutex::new(HashMap::new()),
            rbac: self.authorize_rbac,
            admission_policies: self.admission_policies,
            server_address: address.to_string(),
            bookmark_interval: self.bookmark_interval,
            log: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
        });
        let accept_loop = tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(FakeApiServer {
            address,
            state,
            accept_loop,
        })
    }
}

async fn serve(listener: TcpListener, state: Arc<ApiState>) {
    // Connections live in this set, so aborting the accept loop closes them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = Arc::clone(&state);
                    connections.spawn(async move {
                        let service = service_fn(move |request| Arc::clone(&state).handle(request));
                        if let Err(error) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(%error, "fake apiserver connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    // Usually file-descriptor exhaustion; back off instead of spinning.
                    tracing::warn!(%error, "fake apiserver failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// An in-process fake Kubernetes API server on 127.0.0.1, speaking the real REST protocol.
///
/// Dropping the handle stops the server and closes every connection and watch.
pub struct FakeApiServer {
    address: SocketAddr,
    state: Arc<ApiState>,
    accept_loop: JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts a server with the default resource types.
    pub async fn start() -> Result<Self, FakeError> {
        FakeApiServerBuilder::default().start().await
    }

    /// Configures a server (extra resource types, bookmark interval) before starting it.
    pub fn builder() -> FakeApiServerBuilder {
        FakeApiServerBuilder::default()
    }

    /// The socket address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A `kube::Config` for this server, with `default` as the default namespace.
    pub fn config(&self) -> Result<kube::Config, FakeError> {
        let url = self.url();
        let uri = url.parse().map_err(|_| FakeError::Url(url.clone()))?;
        Ok(kube::Config::new(uri))
    }

    /// A `kube::Client` talking to this server.
    pub fn client(&self) -> Result<kube::Client, FakeError> {
        kube::Client::try_from(self.config()?).map_err(FakeError::Client)
    }

    /// Makes `token` authenticate `user` (a bearer token, as a ServiceAccount token would).
    pub fn add_token(&self, token: &str, user: UserInfo) {
        self.state
            .tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(token.to_owned(), user);
    }

    /// A `kube::Config` that authenticates with a bearer token.
    pub fn config_with_token(&self, token: &str) -> Result<kube::Config, FakeError> {
        let mut config = self.config()?;
        config.auth_info.token = Some(token.to_owned().into());
        Ok(config)
    }

    /// A `kube::Client` that authenticates with a bearer token.
    pub fn client_with_token(&self, token: &str) -> Result<kube::Client, FakeError> {
        kube::Client::try_from(self.config_with_token(token)?).map_err(FakeError::Client)
    }

    /// Creates or replaces every object of a multi-document YAML file (`---` separated;
    /// empty documents are skipped), as an administrator would with `kubectl apply`. Each
    /// object's type must be served. Returns the stored objects.
    pub fn insert_yaml(&self, yaml: &str) -> Result<Vec<Value>, FakeError> {
        let documents: Vec<Value> =
            serde_saphyr::from_str_multiple(yaml).map_err(|e| FakeError::Yaml(e.to_string()))?;
        let table = self.state.store.resources();
        let mut stored = Vec::new();
        for document in documents.into_iter().filter(|d| !d.is_null()) {
            let api_version = document["apiVersion"].as_str().unwrap_or_default();
            let kind = document["kind"].as_str().unwrap_or_default();
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let resource = table
                .all()
                .find(|(_, t)| t.group == group && t.version == version && t.kind == kind)
                .map(|(id, _)| id)
                .ok_or_else(|| FakeError::UnknownResource(format!("{api_version} {kind}")))?;
            stored.push(self.state.store.upsert(resource, document)?);
        }
        Ok(stored)
    }

    /// A kubeconfig document pointing at this server, for child processes (`KUBECONFIG`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: vknf-fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: vknf-fake\n  user: {{}}\n\
             contexts:\n\
             - name: vknf-fake\n  context:\n    cluster: vknf-fake\n    user: vknf-fake\n    namespace: default\n\
             current-context: vknf-fake\n",
            url = self.url()
        )
    }

    fn resource_id<K>(&self) -> Result<ResourceId, FakeError>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        self.state
            .store
            .resources()
            .find_typed::<K>()
            .ok_or_else(|| FakeError::UnknownResource(K::api_version(&()).to_string() + "/" + &K::plural(&())))
    }

    /// Creates or replaces an object directly, as if some other client wrote it.
    ///
    /// The namespace defaults to `default`; server fields are set and watchers are notified.
    /// Returns the stored object.
    pub fn insert<K>(&self, object: &K) -> Result<K, FakeError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let resource = self.resource_id::<K>()?;
        let stored = self.state.store.upsert(resource, serde_json::to_value(object)?)?;
        Ok(serde_json::from_value(stored)?)
    }

    /// Reads one object (`namespace` is ignored for cluster-scoped types).
    pub fn get<K>(&self, namespace: &str, name: &str) -> Result<Option<K>, FakeError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let resource = self.resource_id::<K>()?;
        match self.state.store.get(resource, Some(namespace), name) {
            Ok(object) => Ok(Some(serde_json::from_value(object)?)),
            Err(error) if error.code == 404 => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// All objects of a type, in one namespace or (with `None`) everywhere, ordered by
    /// namespace and name.
    pub fn list<K>(&self, namespace: Option<&str>) -> Result<Vec<K>, FakeError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let resource = self.resource_id::<K>()?;
        self.state
            .store
            .snapshot(resource, namespace)
            .into_iter()
            .map(|object| serde_json::from_value(object).map_err(FakeError::from))
            .collect()
    }

    /// Deletes an object directly (finalizers still apply); returns its last state, if any.
    pub fn remove<K>(&self, namespace: &str, name: &str) -> Result<Option<K>, FakeError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        use crate::store::{DeleteOptions, Deletion};
        let resource = self.resource_id::<K>()?;
        match self
            .state
            .store
            .delete(resource, Some(namespace), name, &DeleteOptions::default())
        {
            Ok(Deletion::Deleted(object) | Deletion::Pending(object)) => Ok(Some(serde_json::from_value(object)?)),
            Err(error) if error.code == 404 => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.revision()
    }

    /// Compacts history: every resourceVersion handed out so far becomes too old, so watches
    /// resuming from one get a `410 Gone` ERROR event (and exact lists / continue tokens get
    /// 410). Open watches keep running, as in a real cluster; follow with
    /// [`drop_watches`](Self::drop_watches) to force clients to reconnect and relist.
    /// Returns the compaction revision.
    pub fn compact(&self) -> u64 {
        self.state.store.compact()
    }

    /// Ends every open watch stream (like an apiserver restart); clients resume from their
    /// last resourceVersion.
    pub fn drop_watches(&self) {
        self.state.store.drop_watches();
    }

    /// Compacts and drops watches: every watching client must relist.
    pub fn force_relist(&self) -> u64 {
        let revision = self.compact();
        self.drop_watches();
        revision
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that allows bookmarks.
    pub fn send_bookmarks(&self) {
        self.state.store.send_bookmarks();
    }

    /// Every request served so far, oldest first.
    pub fn request_log(&self) -> Vec<RecordedRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Forgets the requests logged so far.
    pub fn clear_request_log(&self) {
        self.state
            .log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    /// Makes matching requests fail with the given status until the rule is used up.
    pub fn inject_failure(&self, failure: InjectedFailure) {
        self.state
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(failure);
    }

    /// Stops the server and waits until the accept loop has ended.
    pub async fn shutdown(mut self) {
        self.stop();
        // A cancelled task is the expected outcome here.
        let _ = (&mut self.accept_loop).await;
    }

    fn stop(&self) {
        self.accept_loop.abort();
        self.state.store.drop_watches();
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("address", &self.address)
            .field("resource_version", &self.resource_version())
            .finish()
    }
}
