//! A bounded flood of spoofed TCP SYNs, sent as raw frames from inside a
//! namespace: sources spread over a range of addresses and ports, paced to
//! a rate, stopped at a frame count or a deadline, whichever comes first.

use std::{
    net::Ipv4Addr,
    os::fd::{FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::{
    netns::NetNs,
    packet::{Frame, Mac, TCP_SYN},
};

/// What to send.
#[derive(Debug, Clone)]
pub struct SynFlood {
    /// Namespace and interface to send from.
    pub namespace: String,
    pub interface: String,
    /// The balancer's MAC on that link.
    pub to_mac: Mac,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// Spoofed sources: `prefix.low..=prefix.high` (last octet).
    pub source_prefix: [u8; 3],
    pub source_low: u8,
    pub source_high: u8,
    pub frames: u32,
    pub per_second: u32,
    /// Stop here even if not all frames are out.
    pub deadline: Duration,
}

/// What was sent.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    pub sent: u32,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        f64::from(self.sent) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Frames between two looks at the clock.
const BATCH: u32 = 500;

impl SynFlood {
    /// Sends the flood from a thread inside the namespace; blocks until done.
    pub fn run(&self) -> FloodReport {
        let flood = self.clone();
        std::thread::spawn(move || {
            NetNs::existing(&flood.namespace).enter_current_thread();
            flood.send_all()
        })
        .join()
        .expect("flood thread")
    }

    /// The `n`th spoofed SYN: sources cycle over the addresses first, then
    /// move to the next source port, so every frame is a new connection.
    fn frame(&self, n: u32, from_mac: Mac) -> Vec<u8> {
        let span = u32::from(self.source_high - self.source_low) + 1;
        let [a, b, c] = self.source_prefix;
        let source = [a, b, c, self.source_low + (n % span) as u8];
        let sport = 1024 + (n / span % 64_000) as u16;
        Frame::tcp(source, sport, self.vip.octets(), self.port, TCP_SYN)
            .macs(from_mac, self.to_mac)
            .build()
    }

    fn send_all(&self) -> FloodReport {
        let ifindex = lb_agent::dataplane::loader::interface_index(&self.interface)
            .unwrap_or_else(|| panic!("{} in {}", self.interface, self.namespace));
        let from_mac = lb_agent::dataplane::loader::interface_mac(&self.interface)
            .unwrap_or_else(|| panic!("MAC of {}", self.interface));
        let socket = send_only_packet_socket();
        let start = Instant::now();
        let mut sent = 0;
        while sent < self.frames && start.elapsed() < self.deadline {
            for _ in 0..BATCH.min(self.frames - sent) {
                send(&socket, ifindex, &self.frame(sent, from_mac));
                sent += 1;
            }
            let due = Duration::from_secs_f64(f64::from(sent) / f64::from(self.per_second));
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        FloodReport {
            sent,
            elapsed: start.elapsed(),
        }
    }
}

/// A raw packet socket that receives nothing (protocol 0).
fn send_only_packet_socket() -> OwnedFd {
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(
        raw >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd we own.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Sends one frame; a full device queue (ENOBUFS) drops it, as a real
/// link would.
fn send(socket: &OwnedFd, ifindex: u32, frame: &[u8]) {
    if let Err(error) = lb_agent::floating_ip::send_frame(socket, ifindex, frame) {
        assert_eq!(error.raw_os_error(), Some(libc::ENOBUFS), "send: {error}");
    }
}
