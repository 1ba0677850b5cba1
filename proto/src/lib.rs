//! Generated protobuf messages and tonic stubs for `task.v1`, plus the descriptor set for reflection.

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

/// The method name of a `task.v1` RPC path (`/task.v1.TaskService/CreateTask` → `CreateTask`),
/// from the descriptor set, so every present and future RPC is known; `None` for anything else.
pub fn method_of(path: &str) -> Option<&'static str> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static METHODS: OnceLock<HashMap<String, String>> = OnceLock::new();
    let methods = METHODS.get_or_init(|| {
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(FILE_DESCRIPTOR_SET)
            .expect("the generated descriptor set decodes");
        let mut m = HashMap::new();
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    let name = method.name.unwrap_or_default();
                    m.insert(format!("/{package}.{service_name}/{name}"), name);
                }
            }
        }
        m
    });
    methods.get(path).map(String::as_str)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rpc_path_has_its_method_name() {
        assert_eq!(
            super::method_of("/task.v1.TaskService/CreateTask"),
            Some("CreateTask")
        );
        assert_eq!(
            super::method_of("/task.v1.TaskService/BoardHeads"),
            Some("BoardHeads")
        );
        assert_eq!(super::method_of("/task.v1.TaskService/Nope"), None);
        assert_eq!(super::method_of("/grpc.health.v1.Health/Check"), None);
    }
}
