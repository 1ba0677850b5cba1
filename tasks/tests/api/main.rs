//! Task service integration tests over real gRPC, PostgreSQL and NATS.
mod grpc;
mod helpers;
mod outbox;
