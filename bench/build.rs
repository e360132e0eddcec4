//! Compiles the minimal etcd v3 API of `proto/etcdserverpb/rpc.proto` (the etcd side of the
//! comparison) with protox, as `proto/build.rs` does for ours: no protoc on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["etcdserverpb/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
