//! Function manifests: generation, parsing, placement, and every validation error.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde_norway::Value;
use vknf_functions::DType;
use vknf_functions::families::generic::{
    ABI_PARAM, AbiInput, AbiOutput, AbiResident, AbiRowCount, BindingRef, GenericAbi,
};
use vknf_functions::{SpecConstantKey, SpecConstantValue};
use vknf_manifest::{
    GenerateError, HostManifest, ManifestError, ManifestRequest, ParseOptions, Placement, SpecError, annotations,
    build_objects, generate_yaml, load_dir,
};

/// The forest kernel's SPIR-V (parsing checks its header; nothing here runs it).
fn forest_spirv() -> &'static [u8] {
    vknf_kernels::by_name("forest").expect("vknf-kernels has the forest kernel")
}

fn request<'a>(name: &str, spirv: &'a [u8], model: Option<&'a [u8]>) -> ManifestRequest<'a> {
    ManifestRequest {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        port: 7000,
        oip_port: None,
        kind: "forest".to_owned(),
        spirv,
        entry_point: None,
        model,
        spec_constants: None,
        params: Default::default(),
        max_batch_rows: None,
        max_wait_us: None,
        node_addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))],
        part_bytes: 1_000_000,
    }
}

fn write_values(dir: &Path, file: &str, values: &[Value]) {
    let mut text = String::new();
    for value in values {
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(value).unwrap());
    }
    std::fs::write(dir.join(file), text).unwrap();
}

fn load_all(dir: &Path) -> HostManifest {
    load_dir(dir, &Placement::All, &ParseOptions::default()).unwrap()
}

fn model_bytes() -> Vec<u8> {
    vknf_testkit::synthetic::random_classifier(4, 3, 3, 3, 1).to_vkf_bytes()
}

/// Builds a forest function's objects, lets `mutate` edit them, and returns the only rejection.
fn rejection(mutate: impl FnOnce(&mut Vec<Value>)) -> SpecError {
    let model = model_bytes();
    let mut values = build_objects(&request("f", forest_spirv(), Some(&model))).unwrap();
    mutate(&mut values);
    let dir = tempfile::tempdir().unwrap();
    write_values(dir.path(), "f.yaml", &values);
    let mut host = load_all(dir.path());
    assert!(
        host.functions.is_empty(),
        "expected a rejection, got {:?}",
        host.functions[0].spec.key
    );
    assert_eq!(host.rejected.len(), 1);
    host.rejected.remove(0).error
}

fn service(values: &mut [Value]) -> &mut Value {
    values.iter_mut().find(|v| v["kind"] == "Service").unwrap()
}

fn set_annotation(values: &mut [Value], key: &str, value: &str) {
    let annotations = &mut service(values)["metadata"]["annotations"];
    annotations.as_mapping_mut().unwrap().insert(key.into(), value.into());
}

#[test]
fn generated_manifests_parse_back_to_the_same_function() {
    let model = model_bytes();
    let mut req = request("iris", forest_spirv(), Some(&model));
    req.entry_point = Some("main".into());
    req.max_batch_rows = Some(512);
    req.max_wait_us = Some(150);
    req.spec_constants = Some(r#"{"0": 64, "use_compact": true, "scale": 0.5}"#.into());
    req.node_addresses.push("fd00::7".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("iris.yaml"), generate_yaml(&req).unwrap()).unwrap();
    let host = load_all(dir.path());
    assert!(host.rejected.is_empty(), "{:?}", host.rejected);
    let function = &host.functions[0];
    let spec = &function.spec;
    assert_eq!(spec.key.to_string(), "default/iris");
    assert_eq!((spec.port, spec.function.kind.as_str()), (7000, "forest"));
    assert_eq!(spec.function.spirv, forest_spirv());
    assert_eq!(spec.function.max_batch_rows, Some(512));
    assert_eq!(spec.max_wait, Some(std::time::Duration::from_micros(150)));
    assert_eq!(
        spec.function.spec_constants[&SpecConstantKey::Id(0)],
        SpecConstantValue::Int(64)
    );
    assert_eq!(
        spec.function.spec_constants[&SpecConstantKey::Name("use_compact".into())],
        SpecConstantValue::Bool(true)
    );
    assert_eq!(
        spec.function.spec_constants[&SpecConstantKey::Name("scale".into())],
        SpecConstantValue::Float(0.5)
    );
    assert_eq!(function.model.as_deref(), Some(model.as_slice()));
    let mut endpoints = spec.endpoints.clone();
    endpoints.sort();
    assert_eq!(
        endpoints,
        vec!["10.0.0.7".parse::<IpAddr>().unwrap(), "fd00::7".parse().unwrap()]
    );
}

#[test]
fn large_models_are_split_over_configmaps_and_reassembled() {
    let model = model_bytes();
    let mut req = request("split", forest_spirv(), Some(&model));
    req.part_bytes = model.len() / 3 + 1;
    let values = build_objects(&req).unwrap();
    let configmaps = values.iter().filter(|v| v["kind"] == "ConfigMap").count();
    assert_eq!(configmaps, 3);
    let dir = tempfile::tempdir().unwrap();
    // Objects may be spread over several files in any order.
    write_values(dir.path(), "b-service.yaml", &values[3..]);
    write_values(dir.path(), "a-models.yaml", &values[..3]);
    let host = load_all(dir.path());
    assert_eq!(host.functions[0].model.as_deref(), Some(model.as_slice()));
    assert_eq!(host.functions[0].spec.model.as_ref().unwrap().configmaps.len(), 3);
}

#[test]
fn placement_follows_endpoint_slices_and_endpoints() {
    let model = model_bytes();
    let dir = tempfile::tempdir().unwrap();
    // Placed by an EndpointSlice on 10.0.0.7.
    write_values(
        dir.path(),
        "a.yaml",
        &build_objects(&request("a", forest_spirv(), Some(&model))).unwrap(),
    );
    // Placed by a core/v1 Endpoints object on 10.0.0.8.
    let mut req = request("b", forest_spirv(), Some(&model));
    req.port = 7001;
    req.node_addresses.clear();
    let mut values = build_objects(&req).unwrap();
    values.push(
        serde_norway::from_str(
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: b, namespace: default}\nsubsets:\n- addresses: [{ip: 10.0.0.8}]\n  ports: [{port: 7001}]\n",
        )
        .unwrap(),
    );
    write_values(dir.path(), "b.yaml", &values);

    let on = |ip: [u8; 4]| {
        let placement = Placement::Addresses(vec![IpAddr::V4(Ipv4Addr::from(ip))]);
        let host = load_dir(dir.path(), &placement, &ParseOptions::default()).unwrap();
        let mut names: Vec<String> = host.functions.iter().map(|f| f.spec.key.name.clone()).collect();
        names.sort();
        (names, host.elsewhere.len())
    };
    assert_eq!(on([10, 0, 0, 7]), (vec!["a".to_owned()], 1));
    assert_eq!(on([10, 0, 0, 8]), (vec!["b".to_owned()], 1));
    assert_eq!(on([10, 0, 0, 9]), (vec![], 2));
    assert_eq!(load_all(dir.path()).functions.len(), 2);
}

#[test]
fn services_without_the_label_and_other_kinds_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("other.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
    let host = load_all(dir.path());
    assert!(host.functions.is_empty() && host.rejected.is_empty() && host.elsewhere.is_empty());
}

#[test]
fn broken_yaml_and_duplicates_make_the_directory_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: [\n",
    )
    .unwrap();
    let error = load_dir(dir.path(), &Placement::All, &ParseOptions::default()).unwrap_err();
    assert!(matches!(error, ManifestError::Document { document: 1, .. }), "{error}");

    let dir = tempfile::tempdir().unwrap();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m}\n";
    std::fs::write(dir.path().join("a.yaml"), cm).unwrap();
    std::fs::write(dir.path().join("b.yaml"), cm).unwrap();
    let error = load_dir(dir.path(), &Placement::All, &ParseOptions::default()).unwrap_err();
    assert!(
        matches!(error, ManifestError::Duplicate { kind: "ConfigMap", .. }),
        "{error}"
    );

    let error = load_dir(
        Path::new("/nonexistent/vknf"),
        &Placement::All,
        &ParseOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(error, ManifestError::ReadDir { .. }));
}

#[test]
fn bad_spirv_is_rejected() {
    let error = rejection(|v| set_annotation(v, annotations::SPIRV, "not base64!"));
    assert!(
        matches!(&error, SpecError::BadAnnotation { annotation, reason } if *annotation == annotations::SPIRV && reason.contains("base64")),
        "{error}"
    );
    let error = rejection(|v| set_annotation(v, annotations::SPIRV, "AAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    assert!(
        error.to_string().contains("not a SPIR-V module") || error.to_string().contains("magic"),
        "{error}"
    );
    let error = rejection(|v| {
        service(v)["metadata"]["annotations"]
            .as_mapping_mut()
            .unwrap()
            .remove(annotations::SPIRV);
    });
    assert_eq!(error, SpecError::MissingAnnotation(annotations::SPIRV.into()));
}

#[test]
fn model_problems_are_rejected() {
    let error = rejection(|v| v.retain(|o| o["kind"] != "ConfigMap"));
    assert_eq!(error, SpecError::MissingConfigMap("f-model-0".into()));

    let error = rejection(|v| set_annotation(v, annotations::MODEL_SHA256, &"0".repeat(64)));
    assert!(matches!(error, SpecError::DigestMismatch { .. }), "{error}");

    let error = rejection(|v| set_annotation(v, annotations::MODEL_SHA256, "abc"));
    assert!(matches!(error, SpecError::BadAnnotation { .. }), "{error}");

    let error = rejection(|v| {
        let cm = v.iter_mut().find(|o| o["kind"] == "ConfigMap").unwrap();
        let data = cm["binaryData"].as_mapping_mut().unwrap();
        let part = data.remove("model.vkf.part0").unwrap();
        data.insert("model.vkf".into(), part);
    });
    assert!(matches!(error, SpecError::MissingModelPart { .. }), "{error}");

    let error = rejection(|v| {
        service(v)["metadata"]["annotations"]
            .as_mapping_mut()
            .unwrap()
            .remove(annotations::MODEL_SHA256);
    });
    assert_eq!(error, SpecError::MissingAnnotation(annotations::MODEL_SHA256.into()));

    // A limit below the model's size.
    let model = model_bytes();
    let dir = tempfile::tempdir().unwrap();
    write_values(
        dir.path(),
        "f.yaml",
        &build_objects(&request("f", forest_spirv(), Some(&model))).unwrap(),
    );
    let options = ParseOptions {
        max_model_bytes: model.len() - 1,
        ..ParseOptions::default()
    };
    let host = load_dir(dir.path(), &Placement::All, &options).unwrap();
    assert!(matches!(host.rejected[0].error, SpecError::ModelTooLarge { .. }));
}

#[test]
fn service_shape_problems_are_rejected() {
    let error = rejection(|v| {
        service(v)["spec"]["selector"] = serde_norway::from_str("{app: x}").unwrap();
    });
    assert_eq!(error, SpecError::HasSelector);

    let error = rejection(|v| {
        service(v)["spec"]["ports"][0]["protocol"] = "UDP".into();
    });
    assert!(
        matches!(error, SpecError::BadPort(ref m) if m.contains("UDP")),
        "{error}"
    );

    let error = rejection(|v| {
        let ports = service(v)["spec"]["ports"].as_sequence_mut().unwrap();
        ports.push(ports[0].clone());
    });
    assert!(matches!(error, SpecError::BadPort(_)), "{error}");

    let error = rejection(|v| {
        service(v)["spec"]["ports"][0]["port"] = 0.into();
    });
    assert!(matches!(error, SpecError::BadPort(_)), "{error}");

    let error = rejection(|v| set_annotation(v, annotations::KIND, "lstm"));
    assert!(error.to_string().contains("unknown kind"), "{error}");
    let error = rejection(|v| set_annotation(v, annotations::MAX_BATCH_ROWS, "0"));
    assert!(error.to_string().contains("max-batch-rows"), "{error}");
    let error = rejection(|v| set_annotation(v, annotations::MAX_WAIT_US, "-5"));
    assert!(error.to_string().contains("max-wait-us"), "{error}");
    let error = rejection(|v| set_annotation(v, annotations::SPEC_CONSTANTS, r#"{"a": "text"}"#));
    assert!(error.to_string().contains("spec-constants"), "{error}");
    let error = rejection(|v| set_annotation(v, annotations::ABI, "{}"));
    assert!(error.to_string().contains("only to kind generic"), "{error}");
    let error = rejection(|v| set_annotation(v, "example.com/blob", &"x".repeat(300 * 1024)));
    assert!(matches!(error, SpecError::AnnotationsTooLarge { .. }), "{error}");
}

#[test]
fn two_functions_on_one_port_are_both_rejected() {
    let model = model_bytes();
    let dir = tempfile::tempdir().unwrap();
    for name in ["one", "two"] {
        write_values(
            dir.path(),
            &format!("{name}.yaml"),
            &build_objects(&request(name, forest_spirv(), Some(&model))).unwrap(),
        );
    }
    let host = load_all(dir.path());
    assert!(host.functions.is_empty());
    let errors: Vec<String> = host
        .rejected
        .iter()
        .map(|r| format!("{}: {}", r.key, r.error))
        .collect();
    assert_eq!(
        errors,
        [
            "default/one: port 7000 is also used by default/two",
            "default/two: port 7000 is also used by default/one"
        ]
    );
}

fn generic_abi(model_len: u64) -> GenericAbi {
    GenericAbi {
        input: AbiInput {
            at: BindingRef { set: 0, binding: 0 },
            width: 8,
            dtype: DType::F32,
        },
        resident: vec![AbiResident {
            at: BindingRef { set: 0, binding: 1 },
            offset: 0,
            length: model_len,
        }],
        outputs: vec![AbiOutput {
            at: BindingRef { set: 0, binding: 2 },
            name: "sum".into(),
            dtype: DType::F32,
            width: 1,
            on_request: false,
        }],
        row_count: AbiRowCount {
            push_constant_offset: 0,
        },
        accepts_nan: false,
    }
}

#[test]
fn generic_functions_carry_a_validated_abi() {
    let model = vec![0u8; 64];
    let spirv = vknf_kernels::by_name("add").unwrap();
    let mut req = request("adder", spirv, Some(&model));
    req.kind = "generic".into();
    let set_abi = |req: &mut ManifestRequest<'_>, abi: Option<GenericAbi>| match abi {
        Some(abi) => req.params.insert(ABI_PARAM.to_owned(), abi.to_json()),
        None => req.params.remove(ABI_PARAM),
    };
    set_abi(&mut req, Some(generic_abi(64)));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adder.yaml"), generate_yaml(&req).unwrap()).unwrap();
    let host = load_all(dir.path());
    let parsed = host.functions[0].spec.function.param(ABI_PARAM).unwrap();
    assert_eq!(GenericAbi::parse(parsed, 64).unwrap(), generic_abi(64));

    // Resident bytes beyond the model.
    set_abi(&mut req, Some(generic_abi(65)));
    let error = generate_yaml(&req).unwrap_err();
    assert!(error.to_string().contains("outside the 64-byte model"), "{error}");
    // A binding used twice.
    let mut abi = generic_abi(64);
    abi.outputs[0].at.binding = 0;
    set_abi(&mut req, Some(abi));
    assert!(generate_yaml(&req).unwrap_err().to_string().contains("used twice"));
    // No ABI at all.
    set_abi(&mut req, None);
    assert!(
        matches!(generate_yaml(&req), Err(GenerateError::Invalid(SpecError::MissingAnnotation(a))) if a == annotations::ABI)
    );
}

#[test]
fn generation_refuses_what_kubernetes_would_refuse() {
    let model = model_bytes();
    // SPIR-V whose base64 alone exceeds the 256 KiB annotation budget.
    let mut big = forest_spirv().to_vec();
    big.resize(200 * 1024, 0);
    let error = generate_yaml(&request("big", &big, Some(&model))).unwrap_err();
    assert!(
        matches!(error, GenerateError::Invalid(SpecError::AnnotationsTooLarge { .. })),
        "{error}"
    );

    let mut req = request("parts", forest_spirv(), Some(&model));
    req.part_bytes = 2 << 20;
    assert!(matches!(generate_yaml(&req), Err(GenerateError::PartTooLarge { .. })));

    let req = request("Bad_Name", forest_spirv(), Some(&model));
    assert!(matches!(generate_yaml(&req), Err(GenerateError::BadName(_))));
}

#[test]
fn objects_from_the_api_server_resolve_like_files() {
    use vknf_manifest::{ObjectSet, resolve};
    let model = model_bytes();
    let mut objects = ObjectSet::default();
    for value in build_objects(&request("api", forest_spirv(), Some(&model))).unwrap() {
        match value["kind"].as_str() {
            Some("ConfigMap") => objects.add_configmap(serde_norway::from_value(value).unwrap()),
            Some("Service") => objects.add_service(serde_norway::from_value(value).unwrap()),
            Some("EndpointSlice") => objects.add_endpoint_slice(serde_norway::from_value(value).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let here = Placement::Addresses(vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))]);
    let host = resolve(&objects, &here, &ParseOptions::default());
    assert_eq!(host.functions.len(), 1);
    assert_eq!(host.functions[0].model.as_deref(), Some(model.as_slice()));
    let elsewhere = Placement::Addresses(vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 8))]);
    assert_eq!(
        resolve(&objects, &elsewhere, &ParseOptions::default()).elsewhere.len(),
        1
    );
}

#[test]
fn the_open_inference_protocol_port_is_declared_beside_the_function_s_and_not_taken_for_it() {
    let model = model_bytes();
    let mut with_oip = request("f", forest_spirv(), Some(&model));
    with_oip.oip_port = Some(8080);
    let values = build_objects(&with_oip).unwrap();
    let of_kind = |kind: &str| values.iter().find(|v| v["kind"] == kind).unwrap().clone();
    for (object, ports) in [(of_kind("Service"), "spec"), (of_kind("EndpointSlice"), "ports")] {
        let ports = if ports == "spec" {
            &object["spec"]["ports"]
        } else {
            &object["ports"]
        };
        assert_eq!(ports[0]["port"], 7000, "{ports:?}");
        assert_eq!(ports[1]["name"], annotations::OIP_PORT_NAME, "{ports:?}");
        assert_eq!(ports[1]["port"], 8080, "{ports:?}");
        assert_eq!(ports[1]["appProtocol"], annotations::OIP_APP_PROTOCOL, "{ports:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    write_values(dir.path(), "f.yaml", &values);
    let host = load_all(dir.path());
    assert!(host.rejected.is_empty(), "{:?}", host.rejected);
    assert_eq!(host.functions[0].spec.port, 7000);

    // Two ports, neither of them the OIP port: still refused.
    let mut two = values.clone();
    for value in &mut two {
        if value["kind"] == "Service" {
            value["spec"]["ports"][1]["name"] = "other".into();
        }
    }
    write_values(dir.path(), "f.yaml", &two);
    assert_eq!(load_all(dir.path()).rejected.len(), 1);
}

/// A `.vkf` carrying `digest` as its feature schema digest (what `vknf compile-model` keeps from a
/// model trained by `python/train_traffic.py`).
fn bound_model(digest: &str) -> Vec<u8> {
    let mut metadata = vknf_forest::VkfMetadata::new();
    metadata.insert(annotations::MODEL_SCHEMA_DIGEST.to_owned(), digest.to_owned());
    vknf_testkit::synthetic::random_classifier(4, 3, 3, 3, 1).to_vkf_bytes_with_metadata(&metadata)
}

/// The function of `model` with the feature schema annotation set to `declared` (none: left out),
/// resolved from files and from API objects alike.
fn with_schema(model: &[u8], declared: Option<&str>) -> Result<vknf_manifest::ManifestFunction, SpecError> {
    let mut values = build_objects(&request("f", forest_spirv(), Some(model))).unwrap();
    if let Some(digest) = declared {
        set_annotation(&mut values, annotations::FEATURE_SCHEMA_SHA256, digest);
    }
    let dir = tempfile::tempdir().unwrap();
    write_values(dir.path(), "f.yaml", &values);
    let mut host = load_all(dir.path());
    // A client of the function reads the same objects the same way.
    let files = vknf_manifest::manifest_files(dir.path()).unwrap();
    let objects = vknf_manifest::read_objects(&files).unwrap();
    let key = vknf_manifest::FunctionKey {
        namespace: "default".into(),
        name: "f".into(),
    };
    let single = vknf_manifest::resolve_function(&objects, &key, &ParseOptions::default()).unwrap();
    match (host.functions.pop(), host.rejected.pop()) {
        (Some(function), None) => {
            assert_eq!(single.unwrap().spec, function.spec);
            Ok(function)
        }
        (None, Some(rejected)) => {
            assert_eq!(single.unwrap_err(), rejected.error);
            Err(rejected.error)
        }
        other => panic!("expected one function or one rejection, got {other:?}"),
    }
}

#[test]
fn a_declared_feature_schema_must_be_the_one_the_model_carries() {
    let (a, b) = ("a1".repeat(32), "b2".repeat(32));
    let model = bound_model(&a);

    // Declared and carried alike (the declaration's case does not matter).
    let function = with_schema(&model, Some(&a.to_uppercase())).unwrap();
    let bound = function.spec.schema.unwrap();
    assert_eq!((bound.digest.as_str(), bound.declared), (a.as_str(), true));

    // Declared another: refused, naming both.
    let error = with_schema(&model, Some(&b)).unwrap_err();
    assert_eq!(
        error,
        SpecError::SchemaMismatch {
            declared: b.clone(),
            model: a.clone()
        }
    );
    let message = error.to_string();
    assert!(message.contains(&a) && message.contains(&b), "{message}");

    // Declared for a model that carries no digest (a version 1 .vkf): refused.
    let error = with_schema(&model_bytes(), Some(&a)).unwrap_err();
    assert!(
        matches!(&error, SpecError::SchemaUnbound { declared, .. } if *declared == a),
        "{error}"
    );
    assert!(error.to_string().contains(annotations::MODEL_SCHEMA_DIGEST), "{error}");

    // Not a digest at all.
    let error = with_schema(&model, Some("abc")).unwrap_err();
    assert!(
        matches!(&error, SpecError::BadAnnotation { annotation, .. } if annotation == annotations::FEATURE_SCHEMA_SHA256),
        "{error}"
    );

    // Not declared: served, bound to the model's schema, which the server reports.
    let bound = with_schema(&model, None).unwrap().spec.schema.unwrap();
    assert_eq!((bound.digest.as_str(), bound.declared), (a.as_str(), false));
    assert_eq!(with_schema(&model_bytes(), None).unwrap().spec.schema, None);
}
