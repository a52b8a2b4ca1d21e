//! Bearer tokens, RBAC and ValidatingAdmissionPolicies, through an ordinary `kube::Client`.

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use vknf_k8s_fake::{FakeApiServer, UserInfo};

use crate::service;

const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: team-a}
rules:
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["list", "watch"]
  - apiGroups: [""]
    resources: ["configmaps"]
    resourceNames: ["settings"]
    verbs: ["get", "update"]
  - apiGroups: [""]
    resources: ["services/status"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects:
  - {kind: ServiceAccount, name: app, namespace: apps}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: service-patcher}
rules:
  - apiGroups: [""]
    resources: ["services"]
    verbs: ["patch", "create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: patchers, namespace: team-b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: service-patcher}
subjects:
  - {kind: Group, apiGroup: rbac.authorization.k8s.io, name: "system:serviceaccounts:apps"}
"#;

fn configmap(name: &str, namespace: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Default::default()
    }
}

fn status_code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn rbac_fake() -> (FakeApiServer, kube::Client) {
    let fake = FakeApiServer::builder()
        .authorize_rbac()
        .admission_policies()
        .start()
        .await
        .expect("fake starts");
    fake.insert_yaml(RBAC).expect("rbac objects");
    fake.add_token("app-token", UserInfo::service_account("apps", "app"));
    let client = fake.client_with_token("app-token").expect("client");
    (fake, client)
}

#[tokio::test]
async fn rbac_allows_exactly_the_bound_rules() {
    let (fake, client) = rbac_fake().await;
    for (name, namespace) in [("settings", "team-a"), ("other", "team-a"), ("settings", "team-b")] {
        fake.insert(&configmap(name, namespace)).unwrap();
    }
    let team_a: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    assert_eq!(team_a.list(&ListParams::default()).await.unwrap().items.len(), 2);
    assert!(
        team_a.get("settings").await.is_ok(),
        "resourceNames allow the named object"
    );
    assert_eq!(status_code(team_a.get("other").await), 403, "but no other");
    let team_b: Api<ConfigMap> = Api::namespaced(client.clone(), "team-b");
    assert_eq!(
        status_code(team_b.list(&ListParams::default()).await),
        403,
        "a Role is namespaced"
    );
    let everywhere: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(status_code(everywhere.list(&ListParams::default()).await), 403);

    // The Status is the apiserver's, word for word.
    let Err(kube::Error::Api(status)) = team_a.get("other").await else {
        panic!("forbidden")
    };
    assert_eq!(status.reason, "Forbidden");
    assert_eq!(
        status.message,
        "configmaps \"other\" is forbidden: User \"system:serviceaccount:apps:app\" cannot get resource \
         \"configmaps\" in API group \"\" in the namespace \"team-a\""
    );

    // A ClusterRole bound by a RoleBinding grants it in that namespace only, to a group.
    fake.insert(&service("web", &[])).unwrap();
    let mut web_b = service("web", &[]);
    web_b.metadata.namespace = Some("team-b".into());
    fake.insert(&web_b).unwrap();
    let patch = serde_json::json!({"metadata": {"annotations": {"a": "b"}}});
    let b: Api<Service> = Api::namespaced(client.clone(), "team-b");
    b.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let default: Api<Service> = Api::namespaced(client.clone(), "default");
    assert_eq!(
        status_code(
            default
                .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        ),
        403
    );
    // A subresource needs its own rule: services/status does not grant services.
    let a: Api<Service> = Api::namespaced(client.clone(), "team-a");
    assert_eq!(
        status_code(a.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await),
        403
    );

    // Unknown tokens are 401; requests without one act as an administrator.
    let stranger = fake.client_with_token("nobody").unwrap();
    let stranger: Api<ConfigMap> = Api::namespaced(stranger, "team-a");
    assert_eq!(status_code(stranger.list(&ListParams::default()).await), 401);
    let admin: Api<ConfigMap> = Api::namespaced(fake.client().unwrap(), "team-b");
    assert_eq!(admin.list(&ListParams::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn server_side_apply_that_creates_needs_create() {
    let (fake, client) = rbac_fake().await;
    fake.insert_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: apply-only, namespace: team-c}
rules:
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: apply-only, namespace: team-c}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: apply-only}
subjects:
  - {kind: ServiceAccount, name: app, namespace: apps}
"#,
    )
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "team-c");
    let params = PatchParams::apply("test").force();
    let config = configmap("new", "team-c");
    assert_eq!(
        status_code(api.patch("new", &params, &Patch::Apply(&config)).await),
        403
    );
    fake.insert(&configmap("new", "team-c")).unwrap();
    let mut changed = configmap("new", "team-c");
    changed.data = Some([("k".to_owned(), "w".to_owned())].into());
    api.patch("new", &params, &Patch::Apply(&changed)).await.unwrap();
}

const POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: limited-values}
spec:
  failurePolicy: Fail
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE", "UPDATE", "DELETE"]
        resources: ["configmaps"]
  matchConditions:
    - name: apps-only
      expression: "request.userInfo.username.startsWith('system:serviceaccount:apps:')"
  variables:
    - name: cm
      expression: "request.operation == 'DELETE' ? oldObject : object"
  validations:
    - expression: "!has(variables.cm.data) || variables.cm.data.all(k, variables.cm.data[k] == params.data.allowed)"
      message: "only the allowed value"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: limited-values}
spec:
  policyName: limited-values
  validationActions: ["Deny"]
  paramRef: {name: policy-params, namespace: kube-system, parameterNotFoundAction: Deny}
"#;

#[tokio::test]
async fn admission_policies_refuse_writes_their_validations_reject() {
    let (fake, client) = rbac_fake().await;
    fake.insert(&configmap("settings", "team-a")).unwrap();
    fake.insert_yaml(POLICY).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "team-a");
    let mut settings = api.get("settings").await.unwrap();
    settings.data = Some([("k".to_owned(), "yes".to_owned())].into());

    // Without its params, a binding with parameterNotFoundAction: Deny refuses.
    let Err(kube::Error::Api(status)) = api.replace("settings", &PostParams::default(), &settings).await else {
        panic!("denied without params")
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert!(status.message.contains("no params found"), "{}", status.message);

    fake.insert(&{
        let mut params = configmap("policy-params", "kube-system");
        params.data = Some([("allowed".to_owned(), "yes".to_owned())].into());
        params
    })
    .unwrap();
    let replaced = api
        .replace("settings", &PostParams::default(), &settings)
        .await
        .unwrap();
    let mut refused = replaced.clone();
    refused.data = Some([("k".to_owned(), "no".to_owned())].into());
    let Err(kube::Error::Api(status)) = api.replace("settings", &PostParams::default(), &refused).await else {
        panic!("denied value")
    };
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "configmaps \"settings\" is forbidden: ValidatingAdmissionPolicy 'limited-values' with binding \
         'limited-values' denied request: only the allowed value"
    );
    assert_eq!(
        fake.get::<ConfigMap>("team-a", "settings").unwrap().unwrap().data,
        replaced.data,
        "a refused write changes nothing"
    );
    // Administrators are outside the match condition.
    let admin: Api<ConfigMap> = Api::namespaced(fake.client().unwrap(), "team-a");
    admin
        .replace("settings", &PostParams::default(), &{
            let mut c = replaced.clone();
            c.data = Some([("k".to_owned(), "no".to_owned())].into());
            c
        })
        .await
        .unwrap();
}
