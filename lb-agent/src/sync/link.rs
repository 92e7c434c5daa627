//! The sync link with the peer: one task that turns the program's events
//! into sealed datagrams, installs what the peer sends, answers its
//! requests for a full transfer and keeps the status.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use lb_common::{FlowEvent, Settings};
use lb_sync::{FlowRecord, Message, Opener, RecordKind, Reject, Sealer, MAX_RECORDS_PER_MESSAGE};
use tokio::{
    io::{unix::AsyncFd, Interest},
    net::UdpSocket,
    sync::{mpsc, watch},
};
use tracing::{debug, info, warn};

use super::{
    maps::{Installed, SyncMaps},
    records::record_of,
    status::{SyncState, SyncStatus},
};
use crate::dataplane::maps::monotonic_ns;

/// How often queued changes are sent: a bound on the lag they add.
const FLUSH_EVERY: Duration = Duration::from_millis(2);
/// Heartbeat, and how often the status is published.
const HELLO_EVERY: Duration = Duration::from_secs(1);
/// A peer unheard for this long is gone until it speaks again.
const PEER_SILENT: Duration = Duration::from_secs(3);
/// Full-transfer datagrams per flush: about 100,000 records per second,
/// interleaved with the live stream, which goes first.
const BULK_MESSAGES_PER_FLUSH: usize = 16;
/// Sent messages whose acknowledgement still counts towards the lag.
const PENDING_ACKS: usize = 4096;
/// Lag samples the percentiles are taken over.
const LAG_SAMPLES: usize = 2048;
/// Bounds of how often the ages of the flows active since the last time
/// are sent again (`refresh_interval`): a flow whose packets never change
/// its state would otherwise look idle on the peer and expire there.
const REFRESH_MIN: Duration = Duration::from_secs(5);
const REFRESH_MAX: Duration = Duration::from_secs(60);
/// How long mastership waits for the peer's table before it is taken
/// without (a peer that answers but never completes a transfer).
pub(crate) const RESYNC_LIMIT: Duration = Duration::from_secs(30);

/// A change waiting to be sent.
struct Change {
    event: FlowEvent,
    kind: RecordKind,
}

/// A full transfer being sent (`id`), or a refresh of the active flows'
/// ages (`None`: no end marker).
struct Outgoing {
    id: Option<u32>,
    rest: VecDeque<FlowEvent>,
    sent: u64,
}

pub(crate) struct Link {
    pub socket: UdpSocket,
    pub peer: SocketAddr,
    pub sealer: Sealer,
    pub opener: Opener,
    pub maps: SyncMaps,
    pub queue_limit: usize,
    pub status: watch::Sender<SyncStatus>,
    /// True once this node may take mastership from the peer (it holds
    /// the peer's table, or there is no peer to wait for).
    pub may_lead: watch::Sender<bool>,
    pub started: Instant,
}

/// The link's running state.
#[derive(Default)]
struct Progress {
    queue: VecDeque<Change>,
    outgoing: Option<Outgoing>,
    next_transfer: u32,
    /// The transfer this node asked for: records received per id.
    incoming: HashMap<u32, u64>,
    have_full: bool,
    heard: Option<Instant>,
    peer_in_sync: bool,
    pending: VecDeque<(u64, u64)>,
    lags: VecDeque<u64>,
    /// When the last refresh of the peer's copies started.
    last_refresh: Option<Instant>,
    shown: SyncStatus,
}

impl Link {
    pub(crate) async fn run(
        mut self,
        ring: RingBuf<MapData>,
        mut removals: mpsc::Receiver<FlowEvent>,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        // SAFETY: the ring owns its map's descriptor for as long as the
        // AsyncFd owns the ring, and always reports that one.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        let mut progress = Progress {
            shown: SyncStatus {
                peer: Some(self.peer),
                ..SyncStatus::default()
            },
            ..Progress::default()
        };
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hello = tokio::time::interval(HELLO_EVERY);
        let mut refresh_every = refresh_interval(&self.maps.settings());
        let mut refresh = refresh_timer(refresh_every);
        let mut buf = vec![0u8; 65_536];
        info!(peer = %self.peer, "flow sync: asking the peer for its flows");
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    self.take_events(guard.get_inner_mut(), &mut progress);
                    guard.clear_ready();
                }
                Some(event) = removals.recv() => self.enqueue(&mut progress, event, RecordKind::Delete),
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.receive(&buf[..len], from, &mut progress).await,
                    Err(error) => debug!(%error, "flow sync: receiving"),
                },
                _ = flush.tick() => self.flush(&mut progress).await,
                _ = hello.tick() => {
                    self.heartbeat(&mut progress).await;
                    // A reload may shorten the timeouts, which an interval
                    // computed at start alone could outlast; checked with
                    // the heartbeat, a change takes effect within a second.
                    let derived = refresh_interval(&self.maps.settings());
                    if derived != refresh_every {
                        refresh_every = derived;
                        refresh = refresh_timer(refresh_every);
                    }
                }
                _ = refresh.tick() => self.start_refresh(&mut progress, refresh_every * 2),
            }
        }
        Ok(())
    }

    fn take_events(&mut self, ring: &mut RingBuf<MapData>, progress: &mut Progress) {
        while let Some(item) = ring.next() {
            if item.len() != std::mem::size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the program writes whole `FlowEvent`s (length checked
            // above); any bit pattern is a valid `FlowEvent`.
            let event: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            self.enqueue(progress, event, RecordKind::Upsert);
        }
    }

    fn enqueue(&self, progress: &mut Progress, event: FlowEvent, kind: RecordKind) {
        if progress.queue.len() >= self.queue_limit {
            progress.shown.queue_dropped += 1;
            return;
        }
        progress.queue.push_back(Change { event, kind });
    }

    async fn send(&mut self, message: &Message) -> Option<u64> {
        let (datagram, seq) = self.sealer.seal(message);
        match self.socket.send_to(&datagram, self.peer).await {
            Ok(_) => Some(seq),
            Err(error) => {
                debug!(%error, "flow sync: sending");
                None
            }
        }
    }

    /// Sends the queued changes, then a share of a full transfer.
    async fn flush(&mut self, progress: &mut Progress) {
        let settings = self.maps.settings();
        while !progress.queue.is_empty() {
            let now = monotonic_ns();
            let take = progress.queue.len().min(MAX_RECORDS_PER_MESSAGE);
            let changes: Vec<Change> = progress.queue.drain(..take).collect();
            let oldest = changes.iter().map(|c| c.event.at_ns).min().unwrap_or(now);
            let records: Vec<FlowRecord> = changes
                .iter()
                .map(|c| record_of(&c.event, &settings, now, c.kind))
                .collect();
            let count = records.len() as u64;
            let message = Message::Flows {
                bulk: None,
                records,
            };
            if let Some(seq) = self.send(&message).await {
                progress.shown.records_sent += count;
                if progress.pending.len() >= PENDING_ACKS {
                    progress.pending.pop_front();
                }
                progress.pending.push_back((seq, oldest));
            }
        }
        self.send_transfer_share(progress, &settings).await;
    }

    async fn send_transfer_share(
        &mut self,
        progress: &mut Progress,
        settings: &lb_common::Settings,
    ) {
        let Some(mut outgoing) = progress.outgoing.take() else {
            return;
        };
        for _ in 0..BULK_MESSAGES_PER_FLUSH {
            if outgoing.rest.is_empty() {
                break;
            }
            let now = monotonic_ns();
            let take = outgoing.rest.len().min(MAX_RECORDS_PER_MESSAGE);
            let records: Vec<FlowRecord> = outgoing
                .rest
                .drain(..take)
                .map(|e| record_of(&e, settings, now, RecordKind::Upsert))
                .collect();
            let count = records.len() as u64;
            let message = Message::Flows {
                bulk: outgoing.id,
                records,
            };
            if self.send(&message).await.is_some() {
                outgoing.sent += count;
                progress.shown.records_sent += count;
            }
        }
        if !outgoing.rest.is_empty() {
            progress.outgoing = Some(outgoing);
            return;
        }
        if let Some(transfer_id) = outgoing.id {
            let done = Message::BulkDone {
                transfer_id,
                records: outgoing.sent,
            };
            self.send(&done).await;
            progress.shown.transfers_sent += 1;
            info!(
                records = outgoing.sent,
                "flow sync: full transfer sent to the peer"
            );
        }
    }

    async fn receive(&mut self, datagram: &[u8], from: SocketAddr, progress: &mut Progress) {
        if from.ip() != self.peer.ip() {
            *progress
                .shown
                .rejected
                .entry("unknown_sender".into())
                .or_default() += 1;
            return;
        }
        let opened = match self.opener.open(datagram, Instant::now()) {
            Ok(opened) => opened,
            Err(reject) => {
                debug!(reason = reject.as_str(), "flow sync: datagram rejected");
                return;
            }
        };
        progress.heard = Some(Instant::now());
        if opened.gap > 0 && progress.have_full {
            // Lost changes leave the copy incomplete: ask for it again.
            warn!(
                lost = opened.gap,
                "flow sync: messages from the peer were lost; asking for its table again"
            );
            progress.have_full = false;
        }
        match opened.message {
            Message::Hello { want_full, in_sync } => {
                progress.peer_in_sync = in_sync;
                let transferring = progress.outgoing.as_ref().is_some_and(|o| o.id.is_some());
                if want_full && !transferring {
                    // A full transfer replaces a refresh under way.
                    self.start_transfer(progress);
                }
            }
            Message::Flows { bulk, records } => {
                self.install(&records, progress);
                if let Some(id) = bulk {
                    *progress.incoming.entry(id).or_default() += records.len() as u64;
                }
                self.send(&Message::Ack { seq: opened.seq }).await;
            }
            Message::BulkDone {
                transfer_id,
                records,
            } => self.transfer_done(transfer_id, records, progress),
            Message::Ack { seq } => acknowledged(seq, progress),
        }
    }

    fn start_transfer(&mut self, progress: &mut Progress) {
        progress.next_transfer = progress.next_transfer.wrapping_add(1);
        let rest: VecDeque<FlowEvent> = self.maps.table().into();
        info!(
            flows = rest.len(),
            "flow sync: the peer asks for this node's flows"
        );
        progress.outgoing = Some(Outgoing {
            id: Some(progress.next_transfer),
            rest,
            sent: 0,
        });
    }

    /// Sends the flows active within `window` again (twice the interval),
    /// or since the last refresh if that was longer ago (refreshes skipped
    /// while a transfer was under way, an interval shortened by a reload),
    /// so that their copies on the peer stay as fresh as they are here.
    fn start_refresh(&mut self, progress: &mut Progress, window: Duration) {
        if progress.outgoing.is_some() || !progress.peer_in_sync {
            return;
        }
        let window = refresh_window(window, progress.last_refresh.map(|at| at.elapsed()));
        progress.last_refresh = Some(Instant::now());
        let now = monotonic_ns();
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let rest: VecDeque<FlowEvent> = self
            .maps
            .table()
            .into_iter()
            .filter(|e| now.saturating_sub(e.at_ns) < window)
            .collect();
        debug!(
            flows = rest.len(),
            "flow sync: refreshing the peer's copies"
        );
        progress.outgoing = Some(Outgoing {
            id: None,
            rest,
            sent: 0,
        });
    }

    fn install(&mut self, records: &[FlowRecord], progress: &mut Progress) {
        let now = monotonic_ns();
        progress.shown.records_received += records.len() as u64;
        for record in records {
            match self.maps.install(record, now) {
                Ok(Installed::Flow) => progress.shown.installed += 1,
                Ok(Installed::Removed) => progress.shown.removed += 1,
                Ok(Installed::Unchanged) => {}
                Err(refusal) => {
                    *progress
                        .shown
                        .refused
                        .entry(refusal.as_str().into())
                        .or_default() += 1;
                }
            }
        }
    }

    fn transfer_done(&mut self, id: u32, records: u64, progress: &mut Progress) {
        let received = progress.incoming.remove(&id).unwrap_or(0);
        progress.incoming.clear();
        if received != records {
            warn!(
                received,
                sent = records,
                "flow sync: a full transfer arrived incomplete; asking again"
            );
            return;
        }
        if !progress.have_full {
            info!(records, "flow sync: holding the peer's flows");
        }
        // Before this node may lead: no new flow may meet a source the
        // peer's flows hold in a queue here.
        self.maps.take_held_sources_out();
        progress.have_full = true;
        progress.shown.transfers_received += 1;
        progress.shown.last_transfer_records = Some(records);
        progress.shown.last_transfer_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
    }

    async fn heartbeat(&mut self, progress: &mut Progress) {
        if self.maps.has_queued_claims() {
            self.maps.take_held_sources_out();
        }
        let hello = Message::Hello {
            want_full: !progress.have_full,
            in_sync: progress.have_full,
        };
        self.send(&hello).await;
        let peer_alive = progress.heard.is_some_and(|at| at.elapsed() < PEER_SILENT);
        if !peer_alive {
            progress.have_full = false;
        }
        let state = match (peer_alive, progress.have_full) {
            (false, _) => SyncState::Connecting,
            (true, false) => SyncState::Resyncing,
            (true, true) => SyncState::InSync,
        };
        let waited = self.started.elapsed();
        // Without a peer that answers there is nothing to wait for; with
        // one, mastership waits for its table (at most RESYNC_LIMIT).
        let may_lead = state == SyncState::InSync
            || (!peer_alive && waited >= PEER_SILENT)
            || waited >= RESYNC_LIMIT;
        self.may_lead.send_if_modified(|current| {
            let changed = *current != may_lead;
            *current = may_lead;
            changed
        });
        self.publish(progress, state);
    }

    fn publish(&mut self, progress: &mut Progress, state: SyncState) {
        let shown = &mut progress.shown;
        shown.state = state;
        shown.peer_in_sync = progress.peer_in_sync;
        shown.peer_heard_secs = progress.heard.map(|at| at.elapsed().as_secs());
        shown.events_lost = self.maps.events_lost();
        let stats = self.opener.stats();
        shown.lost_messages = stats.lost;
        for reject in Reject::ALL {
            let count = stats.rejected(reject);
            if count > 0 {
                shown.rejected.insert(reject.as_str().into(), count);
            }
        }
        (shown.lag_p50_us, shown.lag_p99_us) = percentiles(&progress.lags);
        self.status.send_replace(shown.clone());
    }
}

/// How often the peer's copies of active flows are refreshed under
/// `settings`: four times within the shortest timeout an active flow
/// lives by (UDP or established TCP), so that a copy outlives a lost or
/// skipped refresh; at least `REFRESH_MIN` (a tiny timeout must not turn
/// refreshes into a stream of full tables), at most `REFRESH_MAX`.
fn refresh_interval(settings: &Settings) -> Duration {
    let shortest = settings.udp_ns.min(settings.tcp_established_ns);
    Duration::from_nanos(shortest / 4).clamp(REFRESH_MIN, REFRESH_MAX)
}

/// How far back a refresh looks: `window`, or back past the last refresh
/// (`since_last` ago) by half a window, whichever is longer, so that no
/// flow active between two refreshes is left out.
fn refresh_window(window: Duration, since_last: Option<Duration>) -> Duration {
    since_last.map_or(window, |since| window.max(since + window / 2))
}

/// The refresh timer, first ticking one interval from now: at start the
/// peer is about to ask for the whole table anyway.
fn refresh_timer(every: Duration) -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + every, every)
}

fn acknowledged(seq: u64, progress: &mut Progress) {
    while let Some(&(sent, at_ns)) = progress.pending.front() {
        if sent > seq {
            break;
        }
        progress.pending.pop_front();
        if sent == seq {
            let lag_us = monotonic_ns().saturating_sub(at_ns) / 1000;
            if progress.lags.len() >= LAG_SAMPLES {
                progress.lags.pop_front();
            }
            progress.lags.push_back(lag_us);
        }
    }
}

/// The median and 99th percentile of `samples`.
fn percentiles(samples: &VecDeque<u64>) -> (Option<u64>, Option<u64>) {
    let mut sorted: Vec<u64> = samples.iter().copied().collect();
    sorted.sort_unstable();
    let at = |percent: usize| {
        let last = sorted.len().checked_sub(1)?;
        sorted.get((last * percent + 50) / 100).copied()
    };
    (at(50), at(99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_looks_back_past_the_last_one() {
        let window = Duration::from_secs(30);
        assert_eq!(refresh_window(window, None), window);
        assert_eq!(
            refresh_window(window, Some(Duration::from_secs(15))),
            window
        );
        // After a reload cut the interval from 60 s to 15 s, or refreshes
        // skipped during a transfer: back to before the last one.
        assert_eq!(
            refresh_window(window, Some(Duration::from_secs(60))),
            Duration::from_secs(75)
        );
    }

    #[test]
    fn refreshes_come_four_times_per_shortest_active_timeout_within_bounds() {
        let secs = |s: u64| s * 1_000_000_000;
        let timeouts = |udp: u64, established: u64| Settings {
            udp_ns: secs(udp),
            tcp_established_ns: secs(established),
            ..Settings::default()
        };
        // The defaults: UDP 60 s, established 15 min.
        assert_eq!(
            refresh_interval(&timeouts(60, 900)),
            Duration::from_secs(15)
        );
        assert_eq!(
            refresh_interval(&timeouts(600, 40)),
            Duration::from_secs(10)
        );
        assert_eq!(refresh_interval(&timeouts(8, 900)), REFRESH_MIN);
        assert_eq!(refresh_interval(&Settings::default()), REFRESH_MIN);
        assert_eq!(refresh_interval(&timeouts(3600, 7200)), REFRESH_MAX);
    }

    #[test]
    fn percentiles_of_a_spread() {
        let samples: VecDeque<u64> = (1..=100).collect();
        assert_eq!(percentiles(&samples), (Some(51), Some(99)));
        assert_eq!(percentiles(&VecDeque::new()), (None, None));
    }
}
