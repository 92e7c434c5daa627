//! `[service.health_check]` (also per backend).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    bounded::{Jitter, RiseFall, StatusRange},
    problem::{FieldPath, Problems},
};

/// Kind of health check.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect to the backend.
    #[default]
    Tcp,
    /// An HTTP request whose status (and optionally body) is checked.
    Http,
    /// A command; exit 0 = healthy.
    Exec,
    /// No check: the backend is always up.
    None,
}

/// Health state of a backend when the agent starts, before any check.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAs {
    #[default]
    Up,
    Down,
}

/// HTTP methods a check may use: none of them changes the backend.
pub const CHECK_METHODS: [&str; 4] = ["GET", "HEAD", "POST", "OPTIONS"];

/// `[service.health_check]` / `[service.backend.health_check]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// "tcp" (default), "http", "exec" or "none".
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// Time between checks of one backend.
    #[serde(with = "crate::duration")]
    pub interval: Duration,
    /// A check taking longer fails.
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up (1..=100).
    pub rise: RiseFall,
    /// Consecutive failures that take an up backend down (1..=100).
    pub fall: RiseFall,
    /// "up" (default) or "down" until the checks say otherwise.
    pub start_as: StartAs,
    /// Each interval is randomly stretched or shrunk by up to this fraction
    /// (0.0..=0.5), so many backends are not probed in lock step.
    pub jitter: Jitter,
    /// Port to check; defaults to the backend's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// http: request method.
    pub method: String,
    /// http: request path.
    pub path: String,
    /// http: accepted status codes, inclusive range.
    pub expect_status: StatusRange,
    /// http: Host header (default: the backend address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// http: the body must contain this text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// exec: command run by /bin/sh -c with LB_BACKEND_ADDR, LB_BACKEND_PORT
    /// and LB_SERVICE in its environment; exit 0 = healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: RiseFall::new(2).unwrap_or_default(),
            fall: RiseFall::new(3).unwrap_or_default(),
            start_as: StartAs::Up,
            jitter: Jitter::default(),
            port: None,
            method: "GET".into(),
            path: "/".into(),
            expect_status: StatusRange::default(),
            host: None,
            body_contains: None,
            command: None,
        }
    }
}

impl HealthCheckConfig {
    /// A check of `kind` with defaults for the rest.
    pub fn of_kind(kind: CheckKind) -> Self {
        Self {
            kind,
            ..Self::default()
        }
    }

    pub(crate) fn check(&self, at: &FieldPath, problems: &mut Problems) {
        if self.kind == CheckKind::None {
            return;
        }
        if self.interval.is_zero() {
            problems.push(at.key("interval"), "must be longer than zero");
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            problems.push(
                at.key("timeout"),
                "must be longer than zero and at most the interval",
            );
        }
        if self.port == Some(0) {
            problems.push(at.key("port"), "port 0 cannot be checked");
        }
        match self.kind {
            CheckKind::Http => self.check_http(at, problems),
            CheckKind::Exec => {
                if self.command.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    problems.push(at.key("command"), "type = \"exec\" needs command = \"...\"");
                }
            }
            CheckKind::Tcp | CheckKind::None => {}
        }
    }

    fn check_http(&self, at: &FieldPath, problems: &mut Problems) {
        if !CHECK_METHODS.contains(&self.method.as_str()) {
            problems.push(
                at.key("method"),
                format!(
                    "{:?} is not one of {}",
                    self.method,
                    CHECK_METHODS.join(", ")
                ),
            );
        }
        if !self.path.starts_with('/') {
            problems.push(
                at.key("path"),
                format!("{:?} must start with '/'", self.path),
            );
        }
        // They go into the request as they are: a CR or LF would end the
        // line and start another header (or request), a space would split
        // the request line.
        if self.path.chars().any(|c| c.is_control() || c == ' ') {
            problems.push_with_hint(
                at.key("path"),
                format!(
                    "{:?} has a space or a control character (CR, LF, NUL, ...)",
                    self.path
                ),
                "percent-encode it, e.g. %20",
            );
        }
        if let Some(host) = &self.host {
            if host.is_empty() || host.chars().any(|c| c.is_control() || c == ' ') {
                problems.push(
                    at.key("host"),
                    format!("{host:?} must be a host name (and port), without spaces or control characters (CR, LF, NUL, ...)"),
                );
            }
        }
    }
}
