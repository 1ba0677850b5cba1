//! The task service as the gateway sees it: the gRPC client (`client`) with its deadlines and
//! metadata, the circuit breaker in front of it (`breaker`), creates gathered into batch calls
//! (`gather`), and the turns calls take over several replicas (`replicas`).
//!
//! May use: `auth` (the principal whose user rides in the call's metadata) and the crate's shared
//! modules. It is the innermost layer: nothing here imports `http`, `ws` or `fanout`.
pub mod breaker;
pub mod client;
pub mod gather;
pub mod replicas;
