//! Taskboard's load suite: the WebSocket fan-out harness (against the gateway, the original's
//! contract, or nats-server's WebSocket listener), idle connections, the kernel's ceiling, and the
//! Goose scenarios (REST, and the mixed WebSocket workload).

pub mod accounting;
pub mod connections;
pub mod extract;
pub mod fanout;
pub mod limit;
pub mod mixed;
pub mod natsproto;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod rest;
pub mod wsclient;
