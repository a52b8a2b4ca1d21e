//! Builders for hand-made ONNX tree ensembles (valid and hostile) and raw trees used by the tests.
#![allow(dead_code)]

use prost::Message;
use vknf_forest::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto, data_type,
};
use vknf_forest::{RawEntry, RawNode, RawTree, SplitMode};

/// One node of a classic (opset 1/3) tree ensemble.
#[derive(Clone, Debug)]
pub struct ClassicNode {
    pub tree: i64,
    pub id: i64,
    pub mode: &'static str,
    pub feature: i64,
    pub value: f32,
    pub true_id: i64,
    pub false_id: i64,
    pub missing_true: i64,
}

pub fn branch(tree: i64, id: i64, feature: i64, value: f32, t: i64, f: i64) -> ClassicNode {
    ClassicNode {
        tree,
        id,
        mode: "BRANCH_LEQ",
        feature,
        value,
        true_id: t,
        false_id: f,
        missing_true: 0,
    }
}

pub fn leaf(tree: i64, id: i64) -> ClassicNode {
    ClassicNode {
        tree,
        id,
        mode: "LEAF",
        feature: 0,
        value: 0.0,
        true_id: 0,
        false_id: 0,
        missing_true: 0,
    }
}

/// A classic ensemble under construction.
#[derive(Clone, Debug)]
pub struct Classic {
    pub classifier: bool,
    pub nodes: Vec<ClassicNode>,
    /// (tree, node, class/target id, weight)
    pub weights: Vec<(i64, i64, i64, f32)>,
    pub labels: Vec<i64>,
    pub n_features: Option<i64>,
    pub extra: Vec<AttributeProto>,
    pub with_missing: bool,
}

impl Classic {
    pub fn classifier(labels: Vec<i64>) -> Self {
        Classic {
            classifier: true,
            nodes: Vec::new(),
            weights: Vec::new(),
            labels,
            n_features: Some(4),
            extra: Vec::new(),
            with_missing: true,
        }
    }

    pub fn regressor() -> Self {
        Classic {
            classifier: false,
            ..Classic::classifier(Vec::new())
        }
    }

    pub fn node(&self) -> NodeProto {
        let n = &self.nodes;
        let mut attribute = vec![
            AttributeProto::ints("nodes_treeids", n.iter().map(|x| x.tree)),
            AttributeProto::ints("nodes_nodeids", n.iter().map(|x| x.id)),
            AttributeProto::ints("nodes_featureids", n.iter().map(|x| x.feature)),
            AttributeProto::strings("nodes_modes", n.iter().map(|x| x.mode)),
            AttributeProto::floats("nodes_values", n.iter().map(|x| x.value)),
            AttributeProto::ints("nodes_truenodeids", n.iter().map(|x| x.true_id)),
            AttributeProto::ints("nodes_falsenodeids", n.iter().map(|x| x.false_id)),
        ];
        if self.with_missing {
            attribute.push(AttributeProto::ints(
                "nodes_missing_value_tracks_true",
                n.iter().map(|x| x.missing_true),
            ));
        }
        let p = if self.classifier { "class" } else { "target" };
        let w = &self.weights;
        attribute.push(AttributeProto::ints(&format!("{p}_treeids"), w.iter().map(|x| x.0)));
        attribute.push(AttributeProto::ints(&format!("{p}_nodeids"), w.iter().map(|x| x.1)));
        attribute.push(AttributeProto::ints(&format!("{p}_ids"), w.iter().map(|x| x.2)));
        attribute.push(AttributeProto::floats(&format!("{p}_weights"), w.iter().map(|x| x.3)));
        if self.classifier {
            attribute.push(AttributeProto::ints("classlabels_int64s", self.labels.clone()));
        } else {
            let targets = w.iter().map(|x| x.2).max().unwrap_or(0) + 1;
            attribute.push(AttributeProto::int("n_targets", targets));
        }
        attribute.extend(self.extra.iter().cloned());
        NodeProto {
            input: vec!["X".into()],
            output: vec!["label".into(), "probabilities".into()],
            name: Some("ensemble".into()),
            op_type: Some(
                if self.classifier {
                    "TreeEnsembleClassifier"
                } else {
                    "TreeEnsembleRegressor"
                }
                .into(),
            ),
            attribute,
            domain: Some("ai.onnx.ml".into()),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        model_bytes(vec![self.node()], self.n_features)
    }

    /// Replaces (or adds) an attribute of the node.
    pub fn with_attr(mut self, attr: AttributeProto) -> Self {
        self.extra.push(attr);
        self
    }
}

pub fn model_bytes(nodes: Vec<NodeProto>, n_features: Option<i64>) -> Vec<u8> {
    model(nodes, n_features).encode_to_vec()
}

pub fn model(nodes: Vec<NodeProto>, n_features: Option<i64>) -> ModelProto {
    // Later attributes with the same name replace earlier ones, as a builder convenience.
    let nodes = nodes
        .into_iter()
        .map(|mut n| {
            let mut seen = std::collections::HashMap::new();
            for (i, a) in n.attribute.iter().enumerate() {
                seen.insert(a.name.clone(), i);
            }
            let keep: Vec<usize> = {
                let mut v: Vec<usize> = seen.into_values().collect();
                v.sort_unstable();
                v
            };
            n.attribute = keep.into_iter().map(|i| n.attribute[i].clone()).collect();
            n
        })
        .collect();
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![
            OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            },
            OperatorSetIdProto {
                domain: Some("ai.onnx.ml".into()),
                version: Some(3),
            },
        ],
        producer_name: Some("vknf-tests".into()),
        producer_version: None,
        graph: Some(GraphProto {
            node: nodes,
            name: Some("g".into()),
            initializer: Vec::new(),
            input: vec![ValueInfoProto::matrix("X", data_type::FLOAT, n_features)],
            output: Vec::new(),
        }),
    }
}

/// A two-level classifier over 3 classes used as the "valid" base for hostile variants.
///
/// tree 0: node0 x0 <= 0.5 ? node1 : node2; node1 leaf (class 0: 1.0); node2: x1 <= 2 ? node3 : node4;
///         node3 leaf (class 1: 0.5, class 2: 0.5); node4 leaf (class 2: 1.0)
/// tree 1: single leaf (class 1: 1.0)
pub fn small_classifier() -> Classic {
    let mut c = Classic::classifier(vec![10, 20, 30]);
    c.nodes = vec![
        branch(0, 0, 0, 0.5, 1, 2),
        leaf(0, 1),
        branch(0, 2, 1, 2.0, 3, 4),
        leaf(0, 3),
        leaf(0, 4),
        leaf(1, 0),
    ];
    c.weights = vec![
        (0, 1, 0, 0.5),
        (0, 1, 1, 0.0),
        (0, 3, 1, 0.25),
        (0, 3, 2, 0.25),
        (0, 4, 2, 0.5),
        (1, 0, 1, 0.5),
    ];
    c
}

/// A tensor of f32 values.
pub fn float_tensor(values: &[f32]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(data_type::FLOAT),
        float_data: values.to_vec(),
        ..Default::default()
    }
}

/// A tensor of f64 values (raw_data encoding).
pub fn double_tensor_raw(values: &[f64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(data_type::DOUBLE),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A uint8 tensor (int32_data encoding).
pub fn uint8_tensor(values: &[u8]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(data_type::UINT8),
        int32_data: values.iter().map(|&v| i32::from(v)).collect(),
        ..Default::default()
    }
}

/// An opset-5 TreeEnsemble node.
pub struct V5 {
    pub roots: Vec<i64>,
    pub features: Vec<i64>,
    pub splits: Vec<f32>,
    pub modes: Vec<u8>,
    pub true_ids: Vec<i64>,
    pub false_ids: Vec<i64>,
    pub true_leafs: Vec<i64>,
    pub false_leafs: Vec<i64>,
    pub leaf_targets: Vec<i64>,
    pub leaf_weights: Vec<f32>,
    pub aggregate: i64,
}

impl V5 {
    /// Tree 0: x0 <= 1 ? (x1 < 0 ? leaf0 : leaf1) : leaf2 ; tree 1: single leaf3.
    pub fn sample() -> Self {
        V5 {
            roots: vec![0, 2],
            features: vec![0, 1, 0],
            splits: vec![1.0, 0.0, 0.0],
            modes: vec![0, 1, 0],
            true_ids: vec![1, 0, 3],
            false_ids: vec![2, 1, 3],
            true_leafs: vec![0, 1, 1],
            false_leafs: vec![1, 1, 1],
            leaf_targets: vec![0, 0, 1, 1],
            leaf_weights: vec![1.0, 2.0, 3.0, 4.0],
            aggregate: 1,
        }
    }

    pub fn node(&self) -> NodeProto {
        NodeProto {
            input: vec!["X".into()],
            output: vec!["Y".into()],
            name: Some("te".into()),
            op_type: Some("TreeEnsemble".into()),
            domain: Some("ai.onnx.ml".into()),
            attribute: vec![
                AttributeProto::ints("tree_roots", self.roots.clone()),
                AttributeProto::ints("nodes_featureids", self.features.clone()),
                AttributeProto::tensor("nodes_splits", float_tensor(&self.splits)),
                AttributeProto::tensor("nodes_modes", uint8_tensor(&self.modes)),
                AttributeProto::ints("nodes_truenodeids", self.true_ids.clone()),
                AttributeProto::ints("nodes_falsenodeids", self.false_ids.clone()),
                AttributeProto::ints("nodes_trueleafs", self.true_leafs.clone()),
                AttributeProto::ints("nodes_falseleafs", self.false_leafs.clone()),
                AttributeProto::ints("leaf_targetids", self.leaf_targets.clone()),
                AttributeProto::tensor("leaf_weights", float_tensor(&self.leaf_weights)),
                AttributeProto::int("aggregate_function", self.aggregate),
                AttributeProto::int("n_targets", 2),
            ],
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        model_bytes(vec![self.node()], Some(2))
    }
}

/// A stump on feature 0 at 0.0 whose leaves weigh `left` and `right` (output, weight) entries.
pub fn stump(id: i64, left: &[(i64, f64)], right: &[(i64, f64)]) -> RawTree {
    let entries = left
        .iter()
        .map(|&(output, weight)| RawEntry {
            node: 1,
            output,
            weight,
        })
        .chain(right.iter().map(|&(output, weight)| RawEntry {
            node: 2,
            output,
            weight,
        }))
        .collect();
    RawTree {
        id,
        nodes: vec![
            RawNode::Branch {
                mode: SplitMode::Leq,
                feature: 0,
                threshold: 0.0,
                true_child: 1,
                false_child: 2,
                missing_tracks_true: false,
            },
            RawNode::Leaf,
            RawNode::Leaf,
        ],
        entries,
    }
}
