//! The `digitalocean` provider: assigns a reserved (floating) IP to this
//! droplet through the DigitalOcean API, as the classic `assign-ip` script
//! does: `POST /v2/reserved_ips/{ip}/actions` with
//! `{"type":"assign","droplet_id":N}` and a bearer token, the droplet id
//! from the metadata service, 10 tries 3 s apart by default.
//!
//! Status codes: 401 (bad token) and 404 (no such reserved IP in this
//! account) are final; 422 means an action is in progress or the IP is
//! already assigned, so the assignment is looked up and "already ours"
//! counts as done; 429 waits as `Retry-After` / `RateLimit-Reset` say; 5xx,
//! timeouts and connection errors are retried. The token never appears in
//! logs, errors or `Debug` output.

use std::{
    fmt,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use reqwest::{header::HeaderMap, StatusCode};
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::{cancelled, FloatingIpError, Wish};
use crate::config::FloatingIpConfig;

/// Longest wait a rate limit may impose before the next try.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// The API token. Shown as `***` wherever it is printed.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// From `token_file` (which must not be readable by group or others)
    /// or else the environment variable `token_env`.
    pub fn from_config(config: &FloatingIpConfig) -> Result<Self, DoError> {
        // Commands the agent runs (checks, hooks) have no use for it.
        crate::shell::hide_from_children(&config.token_env);
        if let Some(path) = &config.token_file {
            let shown = path.display().to_string();
            let meta = std::fs::metadata(path).map_err(|error| DoError::Token {
                message: format!("cannot read vrrp.floating_ip.token_file {shown}: {error}"),
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(DoError::Token {
                    message: format!(
                        "vrrp.floating_ip.token_file {shown} has mode {mode:03o}: other users can read the token; run chmod 600 {shown}"
                    ),
                });
            }
            let text = std::fs::read_to_string(path).map_err(|error| DoError::Token {
                message: format!("cannot read vrrp.floating_ip.token_file {shown}: {error}"),
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(DoError::Token {
                    message: format!("vrrp.floating_ip.token_file {shown} is empty"),
                });
            }
            return Ok(Self::new(token));
        }
        match std::env::var(&config.token_env) {
            Ok(token) if !token.trim().is_empty() => Ok(Self::new(token.trim())),
            _ => Err(DoError::Token {
                message: format!(
                    "no DigitalOcean API token: set the environment variable {} or vrrp.floating_ip.token_file",
                    config.token_env
                ),
            }),
        }
    }
}

/// Errors of the DigitalOcean provider. None of them carries the token.
#[derive(Debug, thiserror::Error)]
pub enum DoError {
    #[error("{message}")]
    Token { message: String },
    #[error(
        "the DigitalOcean API refused the token (401): check it (a read-write token is needed)"
    )]
    Unauthorized,
    #[error("reserved IP {ip} does not exist in this account (404): check vrrp.virtual_addresses")]
    NotFound { ip: Ipv4Addr },
    #[error("the metadata service at {url} did not give a droplet id: {reason}")]
    Metadata { url: String, reason: String },
    #[error("assigning {ip} to droplet {droplet}: gave up after {tries} tries; last: {last}")]
    GaveUp {
        ip: Ipv4Addr,
        droplet: u64,
        tries: u32,
        last: String,
    },
    #[error("unexpected reply from the DigitalOcean API: {0}")]
    BadReply(String),
    #[error("cancelled: no longer master")]
    Cancelled,
}

impl From<DoError> for FloatingIpError {
    fn from(error: DoError) -> Self {
        match error {
            DoError::Cancelled => FloatingIpError::Cancelled,
            other => FloatingIpError::DigitalOcean(other),
        }
    }
}

/// What one request's outcome means for the next step.
enum Attempt {
    Done,
    /// Try again after this long; why.
    Retry(Duration, String),
    Fatal(DoError),
}

#[derive(Deserialize)]
struct ReservedIpReply {
    reserved_ip: ReservedIp,
}

#[derive(Deserialize)]
struct ReservedIp {
    droplet: Option<Droplet>,
    /// An action on the IP (ours or another droplet's) is still running.
    #[serde(default)]
    locked: bool,
}

/// Where a reserved IP stands.
struct Assignment {
    droplet: Option<u64>,
    locked: bool,
}

#[derive(Deserialize)]
struct Droplet {
    id: u64,
}

/// The provider.
pub struct DigitalOcean {
    client: reqwest::Client,
    api_url: String,
    metadata_url: String,
    token: Token,
    addresses: Vec<Ipv4Addr>,
    droplet: Option<u64>,
    tries: u32,
    retry_interval: Duration,
    held: Vec<Ipv4Addr>,
    calls: u64,
    errors: u64,
}

impl fmt::Debug for DigitalOcean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOcean")
            .field("api_url", &self.api_url)
            .field("metadata_url", &self.metadata_url)
            .field("token", &self.token)
            .field("addresses", &self.addresses)
            .field("droplet", &self.droplet)
            .finish_non_exhaustive()
    }
}

/// How long a 429 asks to wait: `Retry-After` seconds, else the
/// `RateLimit-Reset` epoch, else the regular retry interval; capped.
fn rate_limit_wait(headers: &HeaderMap, fallback: Duration) -> Duration {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let wait = if let Some(seconds) = number("retry-after") {
        Duration::from_secs(seconds)
    } else if let Some(reset) = number("ratelimit-reset") {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Duration::from_secs(reset.saturating_sub(now))
    } else {
        fallback
    };
    wait.clamp(Duration::from_millis(100), MAX_RATE_LIMIT_WAIT)
}

/// Waits `duration` unless the wish to hold goes away first.
async fn pause(wish: &Wish, duration: Duration) -> Result<(), DoError> {
    // A clone, so the worker still sees the change it is waiting for.
    let mut watch = wish.clone();
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(()),
            changed = watch.changed() => {
                if changed.is_err() || cancelled(&watch) {
                    return Err(DoError::Cancelled);
                }
            }
        }
    }
}

impl DigitalOcean {
    pub fn new(
        config: &FloatingIpConfig,
        token: Token,
        addresses: Vec<Ipv4Addr>,
    ) -> Result<Self, DoError> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(concat!("lb-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| DoError::BadReply(format!("building the HTTP client: {error}")))?;
        Ok(Self {
            client,
            api_url: config.api_url.trim_end_matches('/').to_string(),
            metadata_url: config.metadata_url.trim_end_matches('/').to_string(),
            token,
            addresses,
            droplet: config.droplet_id,
            tries: config.tries.max(1),
            retry_interval: config.retry_interval,
            held: Vec::new(),
            calls: 0,
            errors: 0,
        })
    }

    pub fn counts(&self) -> (u64, u64) {
        (self.calls, self.errors)
    }

    /// The addresses assigned to this droplet when last looked at.
    pub fn held(&self) -> Vec<Ipv4Addr> {
        self.held.clone()
    }

    /// Forgets what it holds (after leaving MASTER; the next master takes
    /// the IP over by assigning it to itself).
    pub fn forget(&mut self) {
        self.held.clear();
    }

    /// This droplet's id, from the config or the metadata service.
    pub async fn droplet(&mut self) -> Result<u64, DoError> {
        if let Some(id) = self.droplet {
            return Ok(id);
        }
        let url = format!("{}/metadata/v1/id", self.metadata_url);
        self.calls += 1;
        let failed = |reason: String| DoError::Metadata {
            url: url.clone(),
            reason,
        };
        let reply = self.client.get(&url).send().await;
        let text = match reply {
            Ok(r) if r.status().is_success() => r.text().await.map_err(|e| failed(e.to_string())),
            Ok(r) => Err(failed(format!("HTTP {}", r.status()))),
            Err(e) => Err(failed(e.without_url().to_string())),
        };
        let id = text.and_then(|t| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| failed(format!("not a droplet id: {:?}", t.trim())))
        });
        match id {
            Ok(id) => {
                self.droplet = Some(id);
                Ok(id)
            }
            Err(error) => {
                self.errors += 1;
                Err(error)
            }
        }
    }

    /// Which droplet `ip` is assigned to (`None`: unassigned), and whether
    /// an action on it is still running.
    async fn holder(&mut self, ip: Ipv4Addr) -> Result<Assignment, Attempt> {
        let url = format!("{}/v2/reserved_ips/{ip}", self.api_url);
        self.calls += 1;
        let reply = self
            .client
            .get(&url)
            .bearer_auth(&self.token.0)
            .send()
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                self.errors += 1;
                return Err(Attempt::Retry(
                    self.retry_interval,
                    format!("looking up {ip}: {}", e.without_url()),
                ));
            }
        };
        let status = reply.status();
        if status.is_success() {
            return match reply.json::<ReservedIpReply>().await {
                Ok(body) => Ok(Assignment {
                    droplet: body.reserved_ip.droplet.map(|d| d.id),
                    locked: body.reserved_ip.locked,
                }),
                Err(e) => {
                    self.errors += 1;
                    Err(Attempt::Retry(
                        self.retry_interval,
                        format!("reading {ip}'s assignment: {}", e.without_url()),
                    ))
                }
            };
        }
        self.errors += 1;
        Err(self.classify(status, reply.headers(), ip))
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, ip: Ipv4Addr) -> Attempt {
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Attempt::Fatal(DoError::Unauthorized)
            }
            StatusCode::NOT_FOUND => Attempt::Fatal(DoError::NotFound { ip }),
            StatusCode::TOO_MANY_REQUESTS => Attempt::Retry(
                rate_limit_wait(headers, self.retry_interval),
                "rate limited (429)".into(),
            ),
            s => Attempt::Retry(self.retry_interval, format!("HTTP {s}")),
        }
    }

    /// One assignment request.
    async fn assign_once(&mut self, ip: Ipv4Addr, droplet: u64) -> Attempt {
        let url = format!("{}/v2/reserved_ips/{ip}/actions", self.api_url);
        self.calls += 1;
        let reply = self
            .client
            .post(&url)
            .bearer_auth(&self.token.0)
            .json(&serde_json::json!({ "type": "assign", "droplet_id": droplet }))
            .send()
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                self.errors += 1;
                return Attempt::Retry(self.retry_interval, e.without_url().to_string());
            }
        };
        let status = reply.status();
        if status.is_success() {
            return Attempt::Done;
        }
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            // Already assigned, or an action on the IP is in progress:
            // done if it is ours, else wait for the other action.
            return match self.holder(ip).await {
                Ok(Assignment {
                    droplet: Some(id), ..
                }) if id == droplet => Attempt::Done,
                Ok(_) => {
                    self.errors += 1;
                    Attempt::Retry(
                        self.retry_interval,
                        "422: another action on the IP is in progress".into(),
                    )
                }
                Err(attempt) => attempt,
            };
        }
        self.errors += 1;
        self.classify(status, reply.headers(), ip)
    }

    /// Assigns `ip` to this droplet, retrying as configured.
    async fn assign(&mut self, ip: Ipv4Addr, wish: &Wish) -> Result<(), DoError> {
        let droplet = self.droplet_with_retries(wish).await?;
        let mut last = String::new();
        for attempt in 1..=self.tries {
            if cancelled(wish) {
                return Err(DoError::Cancelled);
            }
            match self.assign_once(ip, droplet).await {
                Attempt::Done => {
                    info!(%ip, droplet, attempt, "reserved IP assigned to this droplet");
                    if !self.held.contains(&ip) {
                        self.held.push(ip);
                    }
                    return Ok(());
                }
                Attempt::Fatal(error) => return Err(error),
                Attempt::Retry(wait, why) => {
                    warn!(%ip, attempt, tries = self.tries, reason = %why, "assigning the reserved IP; retrying");
                    last = why;
                    if attempt < self.tries {
                        pause(wish, wait).await?;
                    }
                }
            }
        }
        Err(DoError::GaveUp {
            ip,
            droplet,
            tries: self.tries,
            last,
        })
    }

    async fn droplet_with_retries(&mut self, wish: &Wish) -> Result<u64, DoError> {
        let mut last = None;
        for attempt in 1..=self.tries {
            match self.droplet().await {
                Ok(id) => return Ok(id),
                Err(error) => {
                    warn!(%error, attempt, "asking the metadata service for the droplet id");
                    last = Some(error);
                    if attempt < self.tries {
                        pause(wish, self.retry_interval).await?;
                    }
                }
            }
        }
        Err(last.unwrap_or(DoError::Cancelled))
    }

    /// Assigns every address that is not this droplet's yet.
    pub async fn acquire(&mut self, wish: &Wish) -> Result<(), DoError> {
        for ip in self.addresses.clone() {
            self.assign(ip, wish).await?;
        }
        Ok(())
    }

    /// Looks each address up; re-assigns those assigned elsewhere.
    pub async fn reconcile(&mut self, wish: &Wish) -> Result<(), DoError> {
        let droplet = self.droplet_with_retries(wish).await?;
        for ip in self.addresses.clone() {
            match self.holder(ip).await {
                Ok(Assignment {
                    droplet: Some(id), ..
                }) if id == droplet => {
                    if !self.held.contains(&ip) {
                        self.held.push(ip);
                    }
                }
                // An assignment still running (most often the one this
                // node just asked for at takeover) decides the holder;
                // asking again now would only be refused. The next round
                // looks again.
                Ok(Assignment {
                    droplet: other,
                    locked: true,
                }) => {
                    debug!(%ip, holder = ?other, "an action on the reserved IP is in progress; looking again next round");
                }
                Ok(Assignment { droplet: other, .. }) => {
                    warn!(%ip, holder = ?other, "the reserved IP is not this droplet's while master: assigning it again");
                    self.held.retain(|a| *a != ip);
                    self.assign(ip, wish).await?;
                }
                Err(Attempt::Fatal(error)) => return Err(error),
                // The next round looks again.
                Err(Attempt::Retry(_, why)) => {
                    warn!(%ip, reason = %why, "checking the reserved IP's assignment")
                }
                Err(Attempt::Done) => {}
            }
        }
        Ok(())
    }

    /// Looks up every address; true when all are this droplet's.
    pub async fn refresh(&mut self) -> Result<bool, DoError> {
        let droplet = self.droplet().await?;
        self.held.clear();
        for ip in self.addresses.clone() {
            match self.holder(ip).await {
                Ok(Assignment {
                    droplet: Some(id), ..
                }) if id == droplet => self.held.push(ip),
                Ok(_) => {}
                Err(Attempt::Fatal(error)) => return Err(error),
                Err(_) => return Ok(false),
            }
        }
        Ok(!self.addresses.is_empty() && self.held.len() == self.addresses.len())
    }
}
