//! Task service integration tests over real gRPC, PostgreSQL and NATS.
mod auth;
mod batching;
mod faults;
mod grpc;
mod helpers;
mod outbox;
