//! Generated protobuf messages and tonic stubs for `task.v1`, plus the descriptor set for reflection.

/// `task.v1`: the task service, wire-compatible with the Go original.
#[allow(clippy::all, missing_docs)]
pub mod task {
    pub mod v1 {
        tonic::include_proto!("task.v1");
    }
}

pub mod nats;

/// gRPC error metadata of a FAILED_PRECONDITION for a stale `expected_version`: the task's current
/// version (decimal), which the gateway turns into the 412's `ETag`.
pub const VERSION_METADATA: &str = "x-taskboard-version";

/// Response metadata of a CreateTask that answered a retry with the first call's result.
pub const REPLAYED_METADATA: &str = "x-taskboard-replayed";

/// gRPC metadata between the gateway and the task service (see the service comment in the proto).
pub mod auth {
    /// The end user a call is made for (decimal user id).
    pub const USER_HEADER: &str = "x-taskboard-user";
    /// `service` when that user holds the service role (every board).
    pub const ROLE_HEADER: &str = "x-taskboard-role";
    /// The role name that sees and changes every board.
    pub const SERVICE_ROLE: &str = "service";
}

/// Client stubs of the Go original's `task.v1` (its proto, unchanged), for compatibility tests.
#[cfg(feature = "original")]
#[allow(clippy::all, missing_docs)]
pub mod original {
    include!(concat!(env!("OUT_DIR"), "/original/task.v1.rs"));
}

pub use prost_types;

/// Largest gRPC message either side sends or accepts. The worst legal answer is a ListTasks page of
/// 100 tasks at the field limits (500 + 10,000 four-byte characters each): ~4.2 MB, over tonic's
/// 4 MiB default; 16 MiB leaves room. ListEvents pages are cut at [`EVENTS_PAGE_BYTES`] instead.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A ListEvents page stops before its payloads pass this many bytes (it always holds at least one
/// event): callers page on until the last seq reaches `head_seq`, not until a short page.
pub const EVENTS_PAGE_BYTES: usize = 4 * 1024 * 1024;
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
