//! Compiles the fenceflake.v1 protos with protox (pure Rust: no protoc on the build machine),
//! and writes the descriptor set that server reflection serves.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["fenceflake/v1/registry.proto", "fenceflake/v1/raft.proto", "fenceflake/v1/generator.proto"];
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set itself, so reflection gets it from here.
    std::fs::write(out.join("fenceflake_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=fenceflake");
    Ok(())
}
