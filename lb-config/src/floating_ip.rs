//! `[vrrp.floating_ip]`: which provider moves the floating addresses, and
//! its settings.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::problem::{FieldPath, Problems};

/// Which floating IP provider moves the addresses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// On node.public_interface, announced with gratuitous ARPs.
    #[default]
    Local,
    /// A DigitalOcean reserved IP, assigned through the API.
    Digitalocean,
    /// A user command (e.g. the classic `assign-ip` script).
    Exec,
}

/// Most attempts per assignment.
pub const MAX_PROVIDER_TRIES: u32 = 100;

/// `[vrrp.floating_ip]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FloatingIpConfig {
    pub provider: ProviderKind,
    /// While master, how often the provider checks that the addresses are
    /// still this node's (and re-asserts them if not).
    #[serde(with = "crate::duration")]
    pub reconcile_interval: Duration,
    /// Attempts per assignment and the pause between them (the classic
    /// script: 10 tries, 3 s apart).
    pub tries: u32,
    #[serde(with = "crate::duration")]
    pub retry_interval: Duration,
    /// Limit of one API request or command run.
    #[serde(with = "crate::duration")]
    pub request_timeout: Duration,
    /// digitalocean: API base URL.
    pub api_url: String,
    /// digitalocean: metadata service base URL (droplet id).
    pub metadata_url: String,
    /// digitalocean: this droplet's id; default: asked from the metadata service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub droplet_id: Option<u64>,
    /// digitalocean: environment variable holding the API token.
    pub token_env: String,
    /// digitalocean: file holding the API token (not readable by group or
    /// others); used instead of `token_env` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// exec: command that moves the addresses here (`/bin/sh -c`, with
    /// LB_FLOATING_IPS, LB_INSTANCE, LB_STATE); exit 0 = done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assign: Option<String>,
    /// exec: command run on leaving MASTER (optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// exec: command telling whether the addresses are here (exit 0);
    /// while master, a failing check runs `assign` again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl Default for FloatingIpConfig {
    fn default() -> Self {
        Self {
            provider: ProviderKind::Local,
            reconcile_interval: Duration::from_secs(2),
            tries: 10,
            retry_interval: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            api_url: "https://api.digitalocean.com".into(),
            metadata_url: "http://169.254.169.254".into(),
            droplet_id: None,
            token_env: "DIGITALOCEAN_TOKEN".into(),
            token_file: None,
            assign: None,
            release: None,
            check: None,
        }
    }
}

impl FloatingIpConfig {
    pub(crate) fn check(&self, at: &FieldPath, problems: &mut Problems) {
        if self.reconcile_interval < Duration::from_millis(100) {
            problems.push(at.key("reconcile_interval"), "must be at least 100ms");
        }
        if !(1..=MAX_PROVIDER_TRIES).contains(&self.tries) {
            problems.push(
                at.key("tries"),
                format!("{}: use 1..={MAX_PROVIDER_TRIES}", self.tries),
            );
        }
        if self.request_timeout.is_zero() {
            problems.push(at.key("request_timeout"), "must be longer than zero");
        }
        match self.provider {
            ProviderKind::Local => {}
            ProviderKind::Digitalocean => {
                for (name, url) in [
                    ("api_url", &self.api_url),
                    ("metadata_url", &self.metadata_url),
                ] {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        problems.push(
                            at.key(name),
                            format!("{url:?}: write an http:// or https:// URL"),
                        );
                    }
                }
                if self.token_env.is_empty() && self.token_file.is_none() {
                    problems.push(
                        at.key("token_env"),
                        "the digitalocean provider needs token_env or token_file (never the token itself)",
                    );
                }
            }
            ProviderKind::Exec => {
                if self.assign.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    problems.push(
                        at.key("assign"),
                        "provider = \"exec\" needs assign = \"command\"",
                    );
                }
            }
        }
        if self.provider != ProviderKind::Exec {
            for (name, field) in [
                ("assign", &self.assign),
                ("release", &self.release),
                ("check", &self.check),
            ] {
                if field.is_some() {
                    problems.push(at.key(name), "belongs to provider = \"exec\"");
                }
            }
        }
    }
}
