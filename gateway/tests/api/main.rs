//! Gateway integration tests: both services for real, on port 0, each test with its own database
//! and NATS subjects.
mod access;
mod auth;
mod bounds;
mod compression;
mod delivery;
mod failover;
mod hardening;
mod helpers;
mod idp;
mod refresh;
mod resilience;
mod rest;
mod scale;
mod tracing_otel;
mod websocket;
