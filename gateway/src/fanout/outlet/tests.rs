use super::*;

fn d(board: i64, seq: i64) -> Delivery {
    Delivery::new(board, seq, format!("{{\"seq\":{seq}}}").as_bytes())
}

/// Offer times far enough apart for every offer to be a sparse one.
fn next() -> Instant {
    use std::sync::atomic::{AtomicU64, Ordering};
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(Instant::now);
    base + MIN_GAP * (N.fetch_add(1, Ordering::Relaxed) as u32 + 1) * 2
}

#[test]
fn a_full_queue_marks_the_subscriber_lagged_and_frees_it() {
    let m = WsMetrics::new();
    let o = Outlet::new(2);
    assert_eq!(o.offer(&d(1, 1), true, next(), &m), Offered::Queued);
    assert_eq!(o.offer(&d(1, 2), true, next(), &m), Offered::Queued);
    assert_eq!(o.offer(&d(1, 3), true, next(), &m), Offered::Queued);
    assert!(matches!(o.try_recv(), Err(Lagged)));
    assert_eq!(o.offer(&d(1, 4), true, next(), &m), Offered::Dropped);
    assert!(
        o.lock().queue.is_empty(),
        "nothing is kept for a closing session"
    );
}

#[test]
fn a_session_parks_only_with_nothing_waiting_and_gets_its_last_back() {
    let m = WsMetrics::new();
    let o = Outlet::new(8);
    let mut last = HashMap::from([(1, 4)]);
    assert!(o.park(&mut last));
    assert!(last.is_empty(), "moved, not copied");
    // No socket attached: queued, never written here.
    assert_eq!(o.offer(&d(1, 5), true, next(), &m), Offered::Queued);
    o.unpark(&mut last);
    assert_eq!(last, HashMap::from([(1, 4)]));
    assert!(!o.park(&mut last), "an event is waiting");
    assert_eq!(last, HashMap::from([(1, 4)]));
    let mut got = Vec::new();
    assert!(o.take(&mut got, 64).unwrap().is_none());
    assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), [5]);
}

/// A connected pair: the server side attached to a new outlet, and the client side.
async fn attached(capacity: usize) -> (Arc<Outlet>, TcpStream, Arc<TcpStream>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let server = Arc::new(l.accept().await.unwrap().0);
    // Writable once the connection is up (try_write relies on the readiness tokio saw).
    server.writable().await.unwrap();
    let o = Outlet::new(capacity);
    o.attach(server.clone());
    (o, client, server)
}

async fn read_frames(client: &mut TcpStream, frames: &[&Delivery]) {
    use tokio::io::AsyncReadExt;
    let want: Vec<u8> = frames.iter().flat_map(|d| d.frame.to_vec()).collect();
    let mut got = vec![0u8; want.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_parked_session_gets_the_boards_next_event_written_by_the_publisher() {
    let m = WsMetrics::new();
    let (o, mut client, _server) = attached(8).await;
    let mut last = HashMap::from([(1, 4)]);
    assert!(o.park(&mut last));
    let (e5, e6) = (d(1, 5), d(1, 6));
    assert_eq!(o.offer(&e5, true, next(), &m), Offered::Direct);
    assert_eq!(
        o.offer(&e5, true, next(), &m),
        Offered::Dropped,
        "already sent"
    );
    assert_eq!(o.offer(&e6, true, next(), &m), Offered::Direct);
    let other = d(2, 1);
    assert_eq!(
        o.offer(&other, true, next(), &m),
        Offered::Direct,
        "a board without a start"
    );
    read_frames(&mut client, &[&e5, &e6, &other]).await;
    o.unpark(&mut last);
    assert_eq!(
        last,
        HashMap::from([(1, 6), (2, 1)]),
        "what the publisher wrote"
    );
    assert!(
        o.try_recv().unwrap().is_none(),
        "nothing left for the session"
    );
}

#[tokio::test]
async fn a_subscriber_whose_events_come_fast_gets_them_through_its_session() {
    let m = WsMetrics::new();
    let (o, mut client, _server) = attached(8).await;
    let mut last = HashMap::new();
    assert!(o.park(&mut last));
    let t = Instant::now();
    let (e1, e2, e3) = (d(1, 1), d(1, 2), d(1, 3));
    assert_eq!(o.offer(&e1, true, t, &m), Offered::Direct);
    assert_eq!(
        o.offer(&e2, true, t + MIN_GAP / 2, &m),
        Offered::Queued,
        "too soon after the last"
    );
    o.unpark(&mut last);
    let mut got = Vec::new();
    o.take(&mut got, 64).unwrap();
    assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), [2]);
    last.insert(1, 2);
    assert!(o.park(&mut last));
    assert_eq!(o.offer(&e3, true, t + MIN_GAP * 2, &m), Offered::Direct);
    read_frames(&mut client, &[&e1, &e3]).await;
}

#[tokio::test]
async fn a_gap_is_left_to_the_session_and_what_follows_it_queues_behind() {
    let m = WsMetrics::new();
    let (o, _client, _server) = attached(8).await;
    let mut last = HashMap::from([(1, 4)]);
    assert!(o.park(&mut last));
    assert_eq!(
        o.offer(&d(1, 7), true, next(), &m),
        Offered::Queued,
        "5 and 6 are missing"
    );
    assert_eq!(
        o.offer(&d(1, 8), true, next(), &m),
        Offered::Queued,
        "in order behind 7"
    );
    assert_eq!(
        o.offer(&Delivery::head(1, 9), true, next(), &m),
        Offered::Queued
    );
    o.unpark(&mut last);
    assert_eq!(last, HashMap::from([(1, 4)]));
    let mut got = Vec::new();
    o.take(&mut got, 64).unwrap();
    assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), [7, 8, 9]);
}

#[tokio::test]
async fn nothing_is_written_directly_unless_parked_and_allowed() {
    let m = WsMetrics::new();
    let (o, _client, _server) = attached(8).await;
    assert_eq!(
        o.offer(&d(1, 1), true, next(), &m),
        Offered::Queued,
        "not parked"
    );
    let mut got = Vec::new();
    o.take(&mut got, 64).unwrap();
    let mut last = HashMap::new();
    assert!(o.park(&mut last));
    assert_eq!(
        o.offer(&d(1, 2), false, next(), &m),
        Offered::Queued,
        "over budget"
    );
    let mut last = HashMap::new();
    o.unpark(&mut last);
    o.take(&mut got, 64).unwrap();
    o.detach();
    assert!(o.park(&mut last));
    assert_eq!(
        o.offer(&d(1, 3), true, next(), &m),
        Offered::Queued,
        "detached"
    );
}

#[tokio::test]
async fn a_frame_the_socket_takes_only_part_of_is_finished_by_the_session() {
    let m = WsMetrics::new();
    let (o, mut client, _server) = attached(8).await;
    let mut last = HashMap::new();
    assert!(o.park(&mut last));
    // Far larger than the socket's buffers while the client reads nothing.
    let big = Delivery::new(1, 1, &vec![b'x'; 16 << 20]);
    assert_eq!(o.offer(&big, true, next(), &m), Offered::Direct);
    let after = d(1, 2);
    assert_eq!(
        o.offer(&after, true, next(), &m),
        Offered::Queued,
        "behind the rest"
    );
    assert!(!o.park(&mut last), "the rest is waiting");
    o.unpark(&mut last);
    assert_eq!(
        last,
        HashMap::from([(1, 1)]),
        "a frame begun counts as sent"
    );
    let mut queued = Vec::new();
    let (rest, of) = o.take(&mut queued, 64).unwrap().expect("the rest");
    assert_eq!(of.seq, 1);
    assert!(!rest.is_empty() && rest.len() < big.frame.len());
    assert_eq!(&big.frame[big.frame.len() - rest.len()..], &rest[..]);
    assert_eq!(queued.iter().map(|d| d.seq).collect::<Vec<_>>(), [2]);
    // The client gets the start of the frame now; the session writes `rest` after it.
    use tokio::io::AsyncReadExt;
    let mut start = vec![0u8; big.frame.len() - rest.len()];
    client.read_exact(&mut start).await.unwrap();
    assert_eq!(&start[..], &big.frame[..start.len()]);
}

#[tokio::test]
async fn a_full_socket_leaves_the_event_to_the_session() {
    let m = WsMetrics::new();
    let (o, _client, server) = attached(8).await;
    let chunk = vec![0u8; 1 << 16];
    while server.try_write(&chunk).is_ok() {}
    let mut last = HashMap::new();
    assert!(o.park(&mut last));
    assert_eq!(o.offer(&d(1, 1), true, next(), &m), Offered::Queued);
    o.unpark(&mut last);
    assert!(last.is_empty(), "not sent");
}
