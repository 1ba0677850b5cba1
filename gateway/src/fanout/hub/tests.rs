//! The hub's board lists, seq bookkeeping and change signals.
use super::*;
use crate::fanout::outlet::Lagged;

fn d(board: i64, seq: i64) -> Delivery {
    Delivery::new(board, seq, format!("{{\"seq\":{seq}}}").as_bytes())
}

#[test]
fn board_subscribers_get_only_their_board() {
    let hub = Hub::new(8);
    let one = hub.subscribe(Some(1));
    let two = hub.subscribe(Some(2));
    assert_eq!(hub.publish(d(1, 1)), 1);
    assert_eq!(one.try_recv().unwrap().unwrap().seq, 1);
    assert!(two.try_recv().unwrap().is_none());
}

#[test]
fn all_boards_subscribers_get_everything() {
    let hub = Hub::new(8);
    let all = hub.subscribe(None);
    hub.publish(d(1, 1));
    hub.publish(d(2, 1));
    assert_eq!(all.try_recv().unwrap().unwrap().board_id, 1);
    assert_eq!(all.try_recv().unwrap().unwrap().board_id, 2);
}

#[test]
fn every_recipient_shares_one_buffer() {
    let hub = Hub::new(8);
    let a = hub.subscribe(Some(1));
    let b = hub.subscribe(Some(1));
    hub.publish(d(1, 1));
    let (x, y) = (
        a.try_recv().unwrap().unwrap(),
        b.try_recv().unwrap().unwrap(),
    );
    assert_eq!(x.frame.as_ptr(), y.frame.as_ptr());
}

#[test]
fn a_receiver_past_capacity_sees_lagged() {
    let hub = Hub::new(2);
    let slow = hub.subscribe(Some(1));
    for s in 1..=2 {
        hub.publish(d(1, s));
    }
    assert_eq!(slow.try_recv().unwrap().unwrap().seq, 1, "within the bound");
    for s in 3..=5 {
        hub.publish(d(1, s));
    }
    assert!(matches!(slow.try_recv(), Err(Lagged)));
}

#[test]
fn the_last_recipient_records_the_fan_out_time() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let count = |h: &metrics_exporter_prometheus::PrometheusHandle| {
        h.render()
            .lines()
            .find_map(|l| l.strip_prefix("taskboard_fanout_seconds_count "))
            .map(|v| v.trim().to_owned())
    };
    metrics::with_local_recorder(&recorder, || {
        let hub = Hub::new(8);
        let a = hub.subscribe(Some(1));
        let b = hub.subscribe(Some(1));
        let all = hub.subscribe(None);
        hub.publish(Delivery::live(1, 1, b"{}", None));
        let (x, y, z) = (
            a.try_recv().unwrap().unwrap(),
            b.try_recv().unwrap().unwrap(),
            all.try_recv().unwrap().unwrap(),
        );
        x.done(&hub.metrics);
        y.done(&hub.metrics);
        assert_eq!(
            count(&handle).as_deref().unwrap_or("0"),
            "0",
            "two of three wrote it"
        );
        z.done(&hub.metrics);
        assert_eq!(
            count(&handle).as_deref(),
            Some("1"),
            "the third records it once"
        );
    });
}

#[test]
fn a_board_channel_is_freed_when_its_last_subscriber_leaves() {
    let hub = Hub::new(2);
    let a = hub.subscribe(Some(7));
    let b = hub.subscribe(Some(7));
    assert_eq!(hub.board_count(), 1);
    hub.remove(&a, &[7]);
    assert_eq!(hub.board_count(), 1, "one subscriber is left");
    assert_eq!(hub.publish(d(7, 1)), 1);
    assert!(a.try_recv().unwrap().is_none(), "removed");
    hub.remove(&b, &[7]);
    assert_eq!(hub.board_count(), 0);
    assert!(hub.watched_boards().is_empty());
}

#[tokio::test]
async fn the_first_subscriber_of_a_board_and_its_last_are_changes() {
    let hub = Hub::new(2);
    let a = hub.subscribe(Some(7));
    let b = hub.subscribe(Some(7));
    tokio::time::timeout(Duration::from_secs(1), hub.changed())
        .await
        .expect("woken");
    assert_eq!(hub.take_changes(), [(Some(7), true)], "once, for the first");
    hub.remove(&a, &[7]);
    assert!(hub.take_changes().is_empty(), "one is left");
    hub.remove(&b, &[7]);
    let all = hub.subscribe(None);
    let mut c = hub.take_changes();
    c.sort();
    assert_eq!(c, [(None, true), (Some(7), false)]);
    // Joined and left before the intake looked: it sees where things stand now.
    hub.remove(&all, &[]);
    let again = hub.subscribe(Some(8));
    hub.remove(&again, &[8]);
    let mut c = hub.take_changes();
    c.sort();
    assert_eq!(c, [(None, false), (Some(8), false)]);
}

#[test]
fn a_new_subscriber_learns_the_latest_seq_under_the_same_lock() {
    let hub = Hub::new(8);
    let first = hub.outlet(false, None);
    assert_eq!(hub.add(&first, &[3]), [(3, None)], "nothing known yet");
    hub.note_head(3, 5);
    hub.publish(d(3, 6));
    hub.note_head(3, 4);
    let second = hub.outlet(false, None);
    assert_eq!(hub.add(&second, &[3]), [(3, Some(6))], "never moves back");
    hub.publish(d(3, 7));
    assert_eq!(second.try_recv().unwrap().unwrap().seq, 7);
    hub.publish(Delivery::unsequenced(3, b"{}"));
    assert_eq!(hub.known(3), Some(7), "unsequenced events do not count");
}

#[test]
fn an_event_is_compressed_once_and_only_when_a_recipient_negotiated_it() {
    let payload = br#"{"type":"updated","task_id":41,"board_id":7,"title":"Compress me once, share me with everyone","completed":true,"seq":3}"#;
    let hub = Hub::new(8).with_deflate(64);
    let plain = hub.outlet(false, None);
    hub.add(&plain, &[7]);
    hub.publish(Delivery::new(7, 1, payload));
    let only_plain = plain.try_recv().unwrap().unwrap();
    assert!(only_plain.deflated.is_none(), "nobody negotiated it");
    let zipped: Vec<_> = (0..3)
        .map(|_| {
            let o = hub.outlet(true, None);
            hub.add(&o, &[7]);
            o
        })
        .collect();
    let all = hub.outlet(true, None);
    hub.add(&all, &[]);
    hub.publish(Delivery::new(7, 2, payload));
    let got: Vec<Delivery> = zipped
        .iter()
        .chain([&all])
        .map(|o| o.try_recv().unwrap().unwrap())
        .collect();
    let first = got[0].wire(true).clone();
    assert_eq!(first[0], 0xC1, "FIN, RSV1, text");
    assert!(first.len() < got[0].frame.len());
    for d in &got {
        // One buffer for every recipient that negotiated compression.
        assert_eq!(d.wire(true).as_ptr(), first.as_ptr());
    }
    let p = plain.try_recv().unwrap().unwrap();
    assert_eq!(
        p.wire(false),
        &p.frame,
        "the plain socket gets the plain frame"
    );
    // Too small to be worth it, or compression off: plain for everyone.
    hub.publish(Delivery::new(7, 3, b"{}"));
    assert!(zipped[0].try_recv().unwrap().unwrap().deflated.is_none());
    let off = Hub::new(8);
    let o = off.outlet(true, None);
    off.add(&o, &[7]);
    off.publish(Delivery::new(7, 1, payload));
    assert!(o.try_recv().unwrap().unwrap().deflated.is_none());
    assert!(!o.deflate(), "not offered, so never negotiated");
}
