//! Generated protobuf messages and tonic stubs for `task.v1`, plus the descriptor set for reflection.
#![forbid(unsafe_code)]

/// `task.v1`: the task service, wire-compatible with the Go original.
#[allow(clippy::all, missing_docs)]
pub mod task {
    pub mod v1 {
        tonic::include_proto!("task.v1");
    }
}

pub mod nats;

/// Client stubs of the Go original's `task.v1` (its proto, unchanged), for compatibility tests.
#[cfg(feature = "original")]
#[allow(clippy::all, missing_docs)]
pub mod original {
    include!(concat!(env!("OUT_DIR"), "/original/task.v1.rs"));
}

pub use prost_types;
pub use task::v1;

/// Encoded `FileDescriptorSet` for `task.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("task_v1_descriptor");
