use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use proptest::prelude::*;

use crate::*;

fn key(byte: u8) -> SyncKey {
    SyncKey::from_bytes(&[byte; 32]).expect("key")
}

fn record(n: u16) -> FlowRecord {
    FlowRecord {
        kind: RecordKind::Upsert,
        proto: 6,
        state: 2,
        client: format!("10.100.0.10:{}", 40000 + n).parse().expect("addr"),
        vip: "10.100.0.100:80".parse().expect("addr"),
        backend: "10.200.0.21:80".parse().expect("addr"),
        snat: "10.200.0.10:20000".parse().expect("addr"),
        age_ms: 250,
        ts_delta: 7,
    }
}

fn flows(count: u16) -> Message {
    Message::Flows {
        bulk: None,
        records: (0..count).map(record).collect(),
    }
}

fn endpoint() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(IpAddr::from(a), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p)),
    ]
}

fn any_record() -> impl Strategy<Value = FlowRecord> {
    (
        any::<bool>(),
        any::<u8>(),
        any::<u8>(),
        [endpoint(), endpoint(), endpoint(), endpoint()],
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(delete, proto, state, [client, vip, backend, snat], age_ms, ts_delta)| FlowRecord {
                kind: if delete {
                    RecordKind::Delete
                } else {
                    RecordKind::Upsert
                },
                proto,
                state,
                client,
                vip,
                backend,
                snat,
                age_ms,
                ts_delta,
            },
        )
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<bool>(), any::<bool>())
            .prop_map(|(want_full, in_sync)| Message::Hello { want_full, in_sync }),
        (
            proptest::option::of(any::<u32>()),
            proptest::collection::vec(any_record(), 0..=MAX_RECORDS_PER_MESSAGE)
        )
            .prop_map(|(bulk, records)| Message::Flows { bulk, records }),
        (any::<u32>(), any::<u64>()).prop_map(|(transfer_id, records)| Message::BulkDone {
            transfer_id,
            records
        }),
        any::<u64>().prop_map(|seq| Message::Ack { seq }),
    ]
}

proptest! {
    #[test]
    fn every_message_survives_the_wire(message in any_message()) {
        let mut sealer = Sealer::new(key(1), 5);
        let mut opener = Opener::new(key(1));
        let (datagram, seq) = sealer.seal(&message);
        prop_assert!(datagram.len() <= MAX_DATAGRAM);
        let opened = opener.open(&datagram, Instant::now()).expect("opens");
        prop_assert_eq!(opened.message, message);
        prop_assert_eq!((opened.session, opened.seq, opened.gap), (5, seq, 0));
    }

    #[test]
    fn arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let mut opener = Opener::new(key(1));
        prop_assert!(opener.open(&bytes, Instant::now()).is_err());
    }

    #[test]
    fn any_flipped_bit_is_rejected(message in any_message(), bit in any::<usize>()) {
        let (mut datagram, _) = Sealer::new(key(1), 5).seal(&message);
        let bit = bit % (datagram.len() * 8);
        datagram[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Opener::new(key(1)).open(&datagram, Instant::now()).is_err());
    }
}

#[test]
fn a_full_flows_message_fits_one_datagram_and_one_more_record_does_not() {
    let mut sealer = Sealer::new(key(1), 1);
    let full = sealer.seal(&flows(MAX_RECORDS_PER_MESSAGE as u16)).0;
    assert!(full.len() <= MAX_DATAGRAM, "{}", full.len());
    let over = sealer.seal(&flows(MAX_RECORDS_PER_MESSAGE as u16 + 1)).0;
    assert!(over.len() > MAX_DATAGRAM, "{}", over.len());
}

#[test]
fn the_wrong_key_and_truncations_are_rejected() {
    let (datagram, _) = Sealer::new(key(1), 5).seal(&flows(3));
    let now = Instant::now();
    let mut wrong = Opener::new(key(2));
    assert_eq!(wrong.open(&datagram, now), Err(Reject::BadTag));
    assert_eq!(wrong.stats().rejected(Reject::BadTag), 1);
    let mut opener = Opener::new(key(1));
    for len in 0..datagram.len() {
        assert!(opener.open(&datagram[..len], now).is_err(), "cut at {len}");
    }
    assert_eq!(opener.stats().accepted, 0);
}

#[test]
fn replays_are_rejected_and_reordering_within_the_window_is_not() {
    let mut sealer = Sealer::new(key(1), 5);
    let mut opener = Opener::new(key(1));
    let now = Instant::now();
    let sealed: Vec<Vec<u8>> = (0..5).map(|_| sealer.seal(&flows(1)).0).collect();
    assert_eq!(opener.open(&sealed[0], now).map(|o| o.gap), Ok(0));
    assert_eq!(opener.open(&sealed[0], now), Err(Reject::Replayed));
    // 3 arrives before 2: a gap of one, then 2 fills it.
    assert_eq!(opener.open(&sealed[2], now).map(|o| o.gap), Ok(1));
    assert_eq!(opener.open(&sealed[1], now).map(|o| o.gap), Ok(0));
    assert_eq!(opener.stats().reordered, 1);
    assert_eq!(opener.open(&sealed[1], now), Err(Reject::Replayed));
    assert_eq!(opener.open(&sealed[4], now).map(|o| o.gap), Ok(1));
    assert_eq!(opener.stats().rejected(Reject::Replayed), 2);
}

#[test]
fn numbers_that_never_arrive_are_counted_lost_once_past_the_window() {
    let mut sealer = Sealer::new(key(1), 5);
    let mut opener = Opener::new(key(1));
    let now = Instant::now();
    let first = sealer.seal(&flows(1)).0;
    opener.open(&first, now).expect("first");
    let _never = sealer.seal(&flows(1));
    let mut last = Vec::new();
    for _ in 0..2000 {
        last = sealer.seal(&flows(1)).0;
    }
    let opened = opener.open(&last, now).expect("last");
    assert_eq!(opened.gap, 2000);
    assert_eq!(opener.stats().lost, 2000 - 1024 + 1);
    let old = Sealer::new(key(1), 5).seal(&flows(1)).0;
    assert_eq!(
        opener.open(&old, now),
        Err(Reject::Replayed),
        "below the window"
    );
}

#[test]
fn sessions_only_move_forward_unless_the_old_one_fell_silent() {
    let t0 = Instant::now();
    let mut opener = Opener::new(key(1));
    let mut old = Sealer::new(key(1), 100);
    let mut new = Sealer::new(key(1), 200);
    opener
        .open(&old.seal(&flows(1)).0, t0)
        .expect("old session");
    opener
        .open(&new.seal(&flows(1)).0, t0)
        .expect("a newer session takes over");
    let hello = Message::Hello {
        want_full: true,
        in_sync: false,
    };
    assert_eq!(
        opener.open(&old.seal(&flows(1)).0, t0),
        Err(Reject::OldSession)
    );
    assert_eq!(
        opener.open(&old.seal(&hello).0, t0 + Duration::from_secs(5)),
        Err(Reject::OldSession),
        "the newer session spoke 5 s ago"
    );
    // The sender restarted with its clock set back: after 10 s of silence
    // of the newer session its Hello is taken.
    let mut restarted = Sealer::new(key(1), 150);
    assert_eq!(
        opener.open(&restarted.seal(&flows(1)).0, t0 + Duration::from_secs(11)),
        Err(Reject::OldSession),
        "only a Hello starts an older session"
    );
    let opened = opener
        .open(&restarted.seal(&hello).0, t0 + Duration::from_secs(11))
        .expect("hello after silence");
    assert_eq!(opened.session, 150);
    assert_eq!(
        opener.open(&new.seal(&flows(1)).0, t0 + Duration::from_secs(11)),
        Err(Reject::OldSession),
        "the replaced session is a dead run: its datagrams can only be replays"
    );
    assert!(
        opener
            .open(&restarted.seal(&flows(1)).0, t0 + Duration::from_secs(12))
            .is_ok(),
        "the restarted sender goes on"
    );
}
