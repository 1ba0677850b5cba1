//! Generates the task.v1 stubs. Uses the vendored `protoc` so a fresh machine needs nothing
//! installed; a `PROTOC` set in the environment still wins.
use std::path::{Path, PathBuf};

/// A prost config pointing at the protoc to use (passed in, never via the process environment).
fn prost_config() -> Result<prost_build::Config, Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut c = prost_build::Config::new();
    c.protoc_executable(protoc);
    Ok(c)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("task_v1_descriptor.bin"))
        // Event payloads travel as `Bytes` so the gateway can share them without copying.
        .bytes(".task.v1.Event.payload")
        .compile_with_config(
            prost_config()?,
            &[Path::new("task/v1/task.proto")],
            &[Path::new("."), include.as_path()],
        )?;
    println!("cargo:rerun-if-changed=task/v1/task.proto");

    // The Go original's proto, for compatibility tests only (client stubs, own module).
    if std::env::var_os("CARGO_FEATURE_ORIGINAL").is_some() {
        let original = out.join("original");
        std::fs::create_dir_all(&original)?;
        tonic_prost_build::configure()
            .build_server(false)
            .out_dir(&original)
            .compile_with_config(
                prost_config()?,
                &[Path::new("original/task/v1/task.proto")],
                &[Path::new("original"), include.as_path()],
            )?;
        println!("cargo:rerun-if-changed=original/task/v1/task.proto");
    }
    Ok(())
}
