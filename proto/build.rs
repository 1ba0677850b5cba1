//! Generates the task.v1 stubs. Uses the vendored `protoc` so a fresh machine needs nothing
//! installed; a `PROTOC` set in the environment still wins.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // Build scripts are single-threaded; this only tells prost-build where protoc is.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("task_v1_descriptor.bin"))
        // Event payloads travel as `Bytes` so the gateway can share them without copying.
        .bytes(".task.v1.Event.payload")
        .compile_protos(
            &[PathBuf::from("task/v1/task.proto")],
            &[PathBuf::from("."), include],
        )?;
    println!("cargo:rerun-if-changed=task/v1/task.proto");

    // The Go original's proto, for compatibility tests only (client stubs, own module).
    if std::env::var_os("CARGO_FEATURE_ORIGINAL").is_some() {
        let original = out.join("original");
        std::fs::create_dir_all(&original)?;
        tonic_prost_build::configure()
            .build_server(false)
            .out_dir(&original)
            .compile_protos(
                &[PathBuf::from("original/task/v1/task.proto")],
                &[
                    PathBuf::from("original"),
                    protoc_bin_vendored::include_path()?,
                ],
            )?;
        println!("cargo:rerun-if-changed=original/task/v1/task.proto");
    }
    Ok(())
}
