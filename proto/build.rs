//! Compiles `proto/drsdb.proto` with a vendored protoc, so that building
//! drsdb never needs a system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    println!("cargo:rerun-if-changed=proto/drsdb.proto");
    tonic_prost_build::configure().compile_protos(&["proto/drsdb.proto"], &["proto"])?;
    Ok(())
}
