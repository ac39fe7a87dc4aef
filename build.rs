//! Compiles proto/inference.proto (the KServe v2 / Triton gRPC protocol) into Rust with protox,
//! a protobuf compiler written in Rust, and tonic's code generator: no `protoc` is needed on any
//! machine, and the generated code can never drift from the .proto beside it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let descriptors = protox::compile(["proto/inference.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        // RPCs a service does not implement answer UNIMPLEMENTED (the admin side serves only the
        // repository RPCs, the inference side every other one).
        .generate_default_stubs(true)
        // Raw tensor bytes stay `bytes::Bytes` slices of the received message: no copy per input.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(descriptors)?;
    Ok(())
}
