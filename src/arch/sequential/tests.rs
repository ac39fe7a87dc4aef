//! Config-time checks of `sequential`: the keys it asks for, shape inference and its errors.
//! The numbers are checked against PyTorch through HTTP in tests/it/arch_sequential.rs.

use crate::arch::configure;
use crate::arch::testing::{param_names, table};

const MNIST: &str = r#"
input = { name = "input", shape = [1, 28, 28] }
layers = [
  { type = "Conv2d", in_channels = 1, out_channels = 32, kernel_size = 3, padding = 1 },
  { type = "BatchNorm2d", num_features = 32 },
  { type = "ReLU" },
  { type = "MaxPool2d", kernel_size = 2 },
  { type = "Flatten" },
  { type = "Dropout", p = 0.25 },
  { type = "Linear", in_features = 6272, out_features = 10 },
]
"#;

fn error(config: &str) -> String {
    configure("sequential", &table(config))
        .unwrap_err()
        .to_string()
}

#[test]
fn keys_are_those_of_nn_sequential_state_dict() {
    assert_eq!(
        param_names("sequential", MNIST),
        [
            "0.weight",
            "0.bias",
            "1.running_mean",
            "1.running_var",
            "1.weight",
            "1.bias",
            "6.weight",
            "6.bias"
        ]
    );
    let arch = configure("sequential", &table(MNIST)).unwrap();
    let sig = arch.signature();
    assert_eq!(sig.inputs[0].dims, [1, 28, 28]);
    assert_eq!(sig.outputs[0].name, "output");
    assert_eq!(sig.outputs[0].dims, [10]);
    let optional = arch.expected().unwrap().optional.clone();
    assert!(optional.iter().any(|g| g.matches("1.num_batches_tracked")));
    assert!(!optional.iter().any(|g| g.matches("6.num_batches_tracked")));

    let prefixed = format!("prefix = \"features.\"\n{MNIST}");
    assert_eq!(param_names("sequential", &prefixed)[0], "features.0.weight");
}

#[test]
fn a_shape_mismatch_names_the_layer_and_both_shapes() {
    let bad = MNIST.replace("in_features = 6272", "in_features = 6000");
    let err = error(&bad);
    assert!(err.contains("layers[6] (Linear)"), "{err}");
    assert!(err.contains("[N, *, 6000]"), "{err}");
    assert!(err.contains("[N, 6272]"), "{err}");

    let bad = MNIST.replace("num_features = 32", "num_features = 16");
    let err = error(&bad);
    assert!(
        err.contains(
            "layers[1] (BatchNorm2d) takes [N, 16, H, W], but its input is [N, 32, 28, 28]"
        ),
        "{err}"
    );

    let err = error(
        "input = { shape = [3, 4, 4] }\nlayers = [{ type = \"Conv2d\", in_channels = 3, out_channels = 2, kernel_size = 5 }]",
    );
    assert!(
        err.contains("layers[0] (Conv2d)") && err.contains("[N, 3, 4, 4]"),
        "{err}"
    );
}

#[test]
fn arguments_are_pytorch_s_and_checked() {
    let err = error("input = { shape = [4] }\nlayers = [{ type = \"Linear\", in_features = 4, out_feature = 2 }]");
    assert!(
        err.contains("layers[0]") && err.contains("out_feature"),
        "{err}"
    );
    let err = error("input = { shape = [4] }\nlayers = [{ type = \"Conv3d\" }]");
    assert!(
        err.contains("Conv3d") && err.contains("LogSoftmax"),
        "{err}"
    );
    let err = error("input = { shape = [4] }\nlayers = [{ type = \"Softmax\", dim = 0 }]");
    assert!(err.contains("batch dimension"), "{err}");
    let err = error("input = { shape = [4] }\nlayers = [{ type = \"ReLU\" }, { type = \"Embedding\", num_embeddings = 3, embedding_dim = 2 }]");
    assert!(
        err.contains("layers[1] (Embedding)") && err.contains("first layer"),
        "{err}"
    );
    let err = error("input = { shape = [4] }\nlayers = [{ type = \"BatchNorm1d\", num_features = 4, track_running_stats = false }]");
    assert!(err.contains("track_running_stats"), "{err}");
    let err = error("input = { shape = [4] }\nlayers = []");
    assert!(err.contains("layers"), "{err}");
    let err = error("input = { shape = [4] }\nprefix = \"a*\"\nlayers = [{ type = \"ReLU\" }]");
    assert!(err.contains("prefix"), "{err}");
    let err = error("input = { shape = [65536, 65536] }\nlayers = [{ type = \"ReLU\" }]");
    assert!(err.contains("at most"), "{err}");
    // Identity ignores its arguments, as nn.Identity does.
    configure(
        "sequential",
        &table("input = { shape = [4] }\nlayers = [{ type = \"Identity\", anything = 1 }]"),
    )
    .unwrap();
}

#[test]
fn shapes_follow_pytorch_s_formulas() {
    let arch = configure(
        "sequential",
        &table(
            r#"
input = { name = "tokens", shape = [12] }
layers = [
  { type = "Embedding", num_embeddings = 50, embedding_dim = 16 },
  { type = "Conv1d", in_channels = 12, out_channels = 8, kernel_size = 3, stride = 2, groups = 2, bias = false },
  { type = "Flatten" },
  { type = "Unflatten", dim = 1, unflattened_size = [4, -1] },
  { type = "LogSoftmax", dim = -1 },
]
output = { name = "scores" }
"#,
        ),
    )
    .unwrap();
    let sig = arch.signature();
    assert_eq!(sig.inputs[0].kind, crate::model::ElemKind::I64);
    assert_eq!(sig.outputs[0].name, "scores");
    assert_eq!(sig.outputs[0].dims, [4, 14]);
    assert_eq!(
        param_names("sequential", "input = { shape = [3, 9, 9] }\nlayers = [{ type = \"Conv2d\", in_channels = 3, out_channels = 4, kernel_size = [1, 3], groups = 1, bias = false }, { type = \"MaxPool2d\", kernel_size = 3, stride = 2, padding = 1, ceil_mode = true }, { type = \"AdaptiveAvgPool2d\", output_size = 2 }, { type = \"GroupNorm\", num_groups = 2, num_channels = 4 }, { type = \"LayerNorm\", normalized_shape = [2, 2], elementwise_affine = false }]"),
        ["0.weight", "3.weight", "3.bias"]
    );
    use super::shapes::window_out;
    // ceil_mode: 9 -> ceil((9 + 2 - 3) / 2) + 1 = 5, and its last window starts inside.
    assert_eq!(window_out(9, 3, 2, 1, 1, true), Some(5));
    assert_eq!(window_out(8, 2, 2, 0, 1, true), Some(4));
    assert_eq!(window_out(5, 2, 2, 1, 1, true), Some(3));
    assert_eq!(window_out(4, 5, 1, 0, 1, false), None);
}
