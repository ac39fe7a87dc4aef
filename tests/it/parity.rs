//! Served outputs against PyTorch's, through HTTP: `simple` and `digits` within 1e-5, and the
//! whole digits test split classified exactly as PyTorch does.

use crate::util::{
    assert_close, assert_error, fixture, infer_request, output_f32, read_tensors, TestServer,
    Tolerance,
};

/// wick's F32 against PyTorch's F32.
const TOLERANCE: Tolerance = Tolerance::Absolute(1e-5);

#[tokio::test]
async fn simple_matches_pytorch() {
    let (server, _repo) = TestServer::demo("").await;
    let io = read_tensors(&fixture("simple_io.safetensors"));
    let (x_shape, x) = &io["x"];
    let (_, y) = &io["y"];
    let (status, answer) = server.infer_f32("simple", "input", x_shape, x.f32()).await;
    assert_eq!(status, 200, "{answer}");
    assert_close(&output_f32(&answer, "output"), y.f32(), TOLERANCE, "simple");
    server.shutdown().await;
}

#[tokio::test]
async fn digits_test_split_matches_pytorch_exactly() {
    let (server, _repo) = TestServer::demo("").await;
    let split = read_tensors(&fixture("digits_test.safetensors"));
    let (shape, x) = &split["x"];
    let labels = split["label"].1.i64();
    let logits = split["logits"].1.f32();
    let expected_pred = split["pred"].1.i64();
    let n = shape[0];
    assert_eq!(n, 360);

    // One request per sample (as clients send them) plus the whole split in one request.
    let mut predictions = Vec::with_capacity(n);
    for i in 0..n {
        let row = &x.f32()[i * 64..(i + 1) * 64];
        let (status, answer) = server.infer_f32("digits", "input", &[1, 64], row).await;
        assert_eq!(status, 200);
        let got = output_f32(&answer, "output");
        let want = &logits[i * 10..(i + 1) * 10];
        assert_close(&got, want, TOLERANCE, &format!("sample {i}"));
        predictions.push(argmax(&got));
    }
    assert_eq!(
        predictions, expected_pred,
        "predictions differ from PyTorch's"
    );
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| *p == *l)
        .count();
    let accuracy = correct as f64 / n as f64;
    assert!(accuracy >= 0.95, "accuracy {accuracy}");

    // Multi-row requests up to max_batch_size (64) give the same answers...
    let mut batched = Vec::with_capacity(n);
    for chunk in x.f32().chunks(60 * 64) {
        let rows = chunk.len() / 64;
        let (status, answer) = server
            .infer_f32("digits", "input", &[rows, 64], chunk)
            .await;
        assert_eq!(status, 200);
        batched.extend(output_f32(&answer, "output").chunks(10).map(argmax));
    }
    assert_eq!(batched, expected_pred);
    // ...and so does the whole split in one request: it is cut into batches of max_batch_size
    // rows and its answers joined back in order.
    assert!(n > 64, "{n} rows do not exceed max_batch_size");
    let (status, answer) = server.infer_f32("digits", "input", &[n, 64], x.f32()).await;
    assert_eq!(status, 200);
    let whole: Vec<i64> = output_f32(&answer, "output")
        .chunks(10)
        .map(argmax)
        .collect();
    assert_eq!(whole, expected_pred);
    // Above max_request_rows (2048) a request is refused with the reason.
    let many: Vec<f32> = x.f32().iter().copied().cycle().take(2049 * 64).collect();
    let (status, answer) = server
        .infer_f32("digits", "input", &[2049, 64], &many)
        .await;
    assert_error("2049 rows", (status, &answer), 400, "max_request_rows");

    // Raw pixels as integers convert losslessly into the FP32 input.
    let ints: Vec<i64> = x.f32()[..64].iter().map(|v| *v as i64).collect();
    let body = infer_request("input", "INT64", [1, 64], ints);
    let (status, answer) = server.post_json("/v2/models/digits/infer", &body).await;
    assert_eq!(status, 200);
    assert_eq!(argmax(&output_f32(&answer, "output")), expected_pred[0]);
    server.shutdown().await;
}

fn argmax(values: &[f32]) -> i64 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as i64
}
