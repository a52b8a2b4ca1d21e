//! Generates the gRPC service of the Open Inference Protocol from `proto/open_inference_grpc.proto` with
//! a pure-Rust protobuf compiler (protox), so that building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/open_inference_grpc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .bytes(".inference")
        .compile_fds(descriptors)?;
    Ok(())
}
