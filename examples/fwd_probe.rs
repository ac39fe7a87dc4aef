use std::time::Instant;
use wick::arch::{HostData, HostTensor};
fn main() {
    let table: toml::Table = "in_features = 64\nhidden = [128, 64]\nout_features = 10\nlayer_names = [\"fc1\", \"fc2\", \"fc3\"]".parse().unwrap();
    let arch = wick::arch::configure("mlp", &table).unwrap();
    let expected = arch.expected().unwrap();
    let mapping = wick::state_dict::KeyMapping::new(Some("model.".into()), vec!["optimizer.*".into()]).unwrap();
    let loaded = wick::state_dict::load(std::path::Path::new("models/digits/1/model.safetensors"), "d", &expected, &mapping).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(loaded.tensors, candle_core::DType::F32, &candle_core::Device::Cpu);
    let model = arch.build(vb, &Default::default()).unwrap();
    for rows in [1usize, 3, 8, 32] {
        let p = model.prepare(vec![Some(HostTensor { shape: vec![rows, 64], data: HostData::F32(vec![1.0; rows * 64]) })]).unwrap();
        for _ in 0..1000 { model.forward(&[&p]).unwrap(); }
        let n = 20000;
        let t = Instant::now();
        for _ in 0..n { model.forward(&[&p]).unwrap(); }
        println!("rows {rows}: {:.2} us per forward", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}
