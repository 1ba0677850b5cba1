//! The HTTP edge: the accept loop (`server`), the route table and REST handlers (`routes`), CORS,
//! connection caps (`limits`) and the embedded board page (`page`).
//!
//! May use: `ws` (the `/ws` route hands over to its upgrade), `upstream` (handlers call the task
//! service), `auth`, and the crate's shared modules (`error`, `response`, `metrics`, `config`).
//! Nothing outside this folder imports it except `lib.rs`, which starts the server.
pub mod cors;
pub mod limits;
pub mod page;
pub mod routes;
pub mod server;
