//! Sealing (numbering and authenticating) and opening (verifying, then
//! checking session and sequence) datagrams.

use std::time::{Duration, Instant, SystemTime};

use ring::hmac;

use crate::{key::SyncKey, message::Message};

const MAGIC: &[u8; 4] = b"LBSY";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 1 + 2 + 8 + 8 + 2;
const TAG: usize = 32;
pub(crate) const OVERHEAD: usize = HEADER + TAG;
/// Sequence numbers remembered behind the highest seen.
const WINDOW: u64 = 1024;
/// A silent session after which an older one may take over (its sender
/// restarted with a clock set back).
const SESSION_SILENCE: Duration = Duration::from_secs(10);

/// Seals the messages of one sender.
pub struct Sealer {
    key: hmac::Key,
    session: u64,
    next_seq: u64,
}

impl Sealer {
    /// `session`: chosen once per agent start (`new_session_id`).
    pub fn new(key: SyncKey, session: u64) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.bytes()),
            session,
            next_seq: 1,
        }
    }

    /// Wall-clock nanoseconds now: a restarted sender's session is newer
    /// than any it had before.
    pub fn new_session_id() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The datagram of `message` and its sequence number.
    pub fn seal(&mut self, message: &Message) -> (Vec<u8>, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut payload = Vec::with_capacity(crate::MAX_DATAGRAM);
        message.encode_payload(&mut payload);
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(message.type_code());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&payload);
        let tag = hmac::sign(&self.key, &out);
        out.extend_from_slice(tag.as_ref());
        (out, seq)
    }
}

/// Why a datagram was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    TooShort,
    BadMagic,
    BadVersion,
    BadLength,
    /// Forged, corrupted or sealed with another key.
    BadTag,
    /// Seen before, or too old for the window.
    Replayed,
    /// From an earlier session of the sender.
    OldSession,
    /// Authentic but not a valid message.
    Malformed,
}

impl Reject {
    pub const ALL: [Reject; 8] = [
        Reject::TooShort,
        Reject::BadMagic,
        Reject::BadVersion,
        Reject::BadLength,
        Reject::BadTag,
        Reject::Replayed,
        Reject::OldSession,
        Reject::Malformed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Reject::TooShort => "too_short",
            Reject::BadMagic => "bad_magic",
            Reject::BadVersion => "bad_version",
            Reject::BadLength => "bad_length",
            Reject::BadTag => "bad_tag",
            Reject::Replayed => "replayed",
            Reject::OldSession => "old_session",
            Reject::Malformed => "malformed",
        }
    }
}

/// An accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub message: Message,
    pub session: u64,
    pub seq: u64,
    /// Sequence numbers skipped since the highest seen before (lost or
    /// still on their way); 0 in order.
    pub gap: u64,
}

/// What an `Opener` has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenerStats {
    pub accepted: u64,
    /// Messages skipped that had not arrived when the window passed them.
    pub lost: u64,
    /// Messages that arrived after a later one, within the window.
    pub reordered: u64,
    rejected: [u64; Reject::ALL.len()],
}

impl OpenerStats {
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected[reason as usize]
    }
}

/// The sequence numbers seen of one session.
#[derive(Debug, Clone)]
struct Window {
    session: u64,
    highest: u64,
    /// Bit i: `highest - i` was seen.
    seen: [u64; (WINDOW / 64) as usize],
    last_valid: Instant,
}

impl Window {
    fn new(session: u64, now: Instant) -> Self {
        Self {
            session,
            highest: 0,
            seen: [0; (WINDOW / 64) as usize],
            last_valid: now,
        }
    }

    fn bit(&self, back: u64) -> bool {
        self.seen[(back / 64) as usize] & (1 << (back % 64)) != 0
    }

    fn set(&mut self, back: u64) {
        self.seen[(back / 64) as usize] |= 1 << (back % 64);
    }

    /// Moves the window up by `by` (a new highest number); returns how
    /// many numbers left it, or skipped it, without having arrived.
    fn advance(&mut self, by: u64) -> u64 {
        if self.highest == 0 {
            // The session's first message: what came before is not ours
            // to miss.
            return 0;
        }
        let mut lost = 0;
        for back in WINDOW.saturating_sub(by)..WINDOW {
            if back < self.highest && !self.bit(back) {
                lost += 1;
            }
        }
        lost += by.saturating_sub(WINDOW);
        let mut shifted = [0u64; (WINDOW / 64) as usize];
        for back in 0..WINDOW.saturating_sub(by) {
            if self.bit(back) {
                let to = back + by;
                shifted[(to / 64) as usize] |= 1 << (to % 64);
            }
        }
        self.seen = shifted;
        lost
    }
}

/// Verifies the datagrams of one peer.
pub struct Opener {
    key: hmac::Key,
    window: Option<Window>,
    /// The highest session an older one replaced (its sender restarted
    /// with a clock set back): sessions up to it are dead runs, and a
    /// datagram of theirs can only be a replay.
    retired: u64,
    stats: OpenerStats,
}

impl Opener {
    pub fn new(key: SyncKey) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.bytes()),
            window: None,
            retired: 0,
            stats: OpenerStats::default(),
        }
    }

    pub fn stats(&self) -> &OpenerStats {
        &self.stats
    }

    /// Authenticates `datagram` first (nothing of it is interpreted
    /// before, beyond the lengths needed to check it), then its session
    /// and sequence number.
    pub fn open(&mut self, datagram: &[u8], now: Instant) -> Result<Opened, Reject> {
        let result = self.check(datagram, now);
        match &result {
            Ok(_) => self.stats.accepted += 1,
            Err(reason) => self.stats.rejected[*reason as usize] += 1,
        }
        result
    }

    fn check(&mut self, datagram: &[u8], now: Instant) -> Result<Opened, Reject> {
        if datagram.len() < OVERHEAD {
            return Err(Reject::TooShort);
        }
        if &datagram[..4] != MAGIC {
            return Err(Reject::BadMagic);
        }
        if datagram[4] != VERSION {
            return Err(Reject::BadVersion);
        }
        let len = usize::from(u16::from_be_bytes([datagram[24], datagram[25]]));
        if datagram.len() != OVERHEAD + len {
            return Err(Reject::BadLength);
        }
        let (signed, tag) = datagram.split_at(HEADER + len);
        hmac::verify(&self.key, signed, tag).map_err(|_| Reject::BadTag)?;
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&datagram[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        let (session, seq) = (word(8), word(16));
        if datagram[6..8] != [0, 0] || seq == 0 {
            return Err(Reject::Malformed);
        }
        let message = Message::decode(datagram[5], &signed[HEADER..]).ok_or(Reject::Malformed)?;
        let is_hello = matches!(message, Message::Hello { .. });
        let gap = self.admit(session, seq, is_hello, now)?;
        Ok(Opened {
            message,
            session,
            seq,
            gap,
        })
    }

    /// Accepts `seq` of `session` once; returns the gap it leaves.
    fn admit(&mut self, session: u64, seq: u64, hello: bool, now: Instant) -> Result<u64, Reject> {
        let window = match &mut self.window {
            Some(current) if session == current.session => current,
            Some(current) if session < current.session || session <= self.retired => {
                let silent = now.saturating_duration_since(current.last_valid) >= SESSION_SILENCE;
                if !(hello && silent) {
                    return Err(Reject::OldSession);
                }
                self.retired = self.retired.max(current.session);
                self.window.insert(Window::new(session, now))
            }
            _ => self.window.insert(Window::new(session, now)),
        };
        let gap = if seq > window.highest {
            let first = window.highest == 0;
            let by = seq - window.highest;
            self.stats.lost += window.advance(by);
            window.highest = seq;
            window.set(0);
            if first {
                0
            } else {
                by - 1
            }
        } else {
            let back = window.highest - seq;
            if back >= WINDOW || window.bit(back) {
                return Err(Reject::Replayed);
            }
            window.set(back);
            self.stats.reordered += 1;
            0
        };
        window.last_valid = now;
        Ok(gap)
    }
}
