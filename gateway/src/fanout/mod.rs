//! The fan-out core: events in from NATS (`intake`) on the subscriptions of watched boards
//! (`interest`), the board registry and per-event delivery
//! (`hub`), each subscriber's bounded end (`outlet`), access changes that close sockets (`access`), shared log reads for resumers (`replay`) and
//! presence across gateways (`presence`).
//!
//! May use: `upstream` (gap fills and replays read the task service's log), `ws::frame` (a frame
//! is built once per event), and the crate's shared modules. It never imports `http`; `ws`
//! sessions use it, not the other way round.
pub mod access;
pub mod budget;
pub mod delivery;
pub mod hub;
pub mod intake;
pub mod interest;
pub mod outlet;
pub mod presence;
pub mod replay;
pub mod routing;
