//! Compiles the .proto files into Rust types, gRPC clients and servers, and a file
//! descriptor set for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "sup/v1/types.proto",
        "sup/v1/version.proto",
        "sup/v1/namespaces.proto",
        "sup/v1/content.proto",
        "sup/v1/images.proto",
        "sup/v1/snapshots.proto",
        "sup/v1/containers.proto",
        "sup/v1/tasks.proto",
        "sup/v1/events.proto",
        "sup/v1/leases.proto",
        "sup/shim/v1/shim.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sup_descriptor.bin"))
        .compile_protos(&files, &["."])?;
    Ok(())
}
