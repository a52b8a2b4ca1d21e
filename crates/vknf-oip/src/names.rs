//! How v2 model names map onto function names.
//!
//! Functions from manifests are named `namespace/name`; a `/` cannot appear in a REST path segment
//! unencoded, and Kubernetes namespaces and Service names are DNS labels, which never contain a dot. So
//! a function of the `default` namespace is the model `name`, any other is `namespace.name`, and a
//! function named without a namespace (loaded in process) is its own name. The full name is accepted
//! too, URL-encoded on REST (`namespace%2Fname`) and as is on gRPC.

/// The namespace whose functions are models of their bare name.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The v2 model name of a function.
pub fn model_name(function: &str) -> String {
    match function.split_once('/') {
        Some((DEFAULT_NAMESPACE, name)) => name.to_owned(),
        Some((namespace, name)) => format!("{namespace}.{name}"),
        None => function.to_owned(),
    }
}

/// The function names a v2 model name may denote, most specific first.
pub fn function_names(model: &str) -> Vec<String> {
    if model.contains('/') {
        return vec![model.to_owned()];
    }
    match model.split_once('.') {
        Some((namespace, name)) => vec![format!("{namespace}/{name}"), model.to_owned()],
        None => vec![format!("{DEFAULT_NAMESPACE}/{model}"), model.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_name_round_trips_through_its_model_name() {
        for function in ["default/forest", "traffic/classifier", "local"] {
            let model = model_name(function);
            assert!(
                function_names(&model).contains(&function.to_owned()),
                "{function} -> {model}"
            );
        }
        assert_eq!(model_name("default/forest"), "forest");
        assert_eq!(model_name("traffic/classifier"), "traffic.classifier");
        assert_eq!(function_names("traffic/classifier"), ["traffic/classifier"]);
    }
}
