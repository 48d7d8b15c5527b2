//! Compiles the part of etcd's API that `drsdb bench` uses against etcd,
//! with a vendored protoc (no system protobuf compiler needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let file = "proto/etcd_kv.proto";
    println!("cargo:rerun-if-changed={file}");
    tonic_prost_build::configure().build_server(false).compile_protos(&[file], &["proto"])?;
    Ok(())
}
