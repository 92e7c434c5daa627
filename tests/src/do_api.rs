//! A stand-in for the DigitalOcean API and metadata service, faithful in
//! what the `digitalocean` provider relies on: bearer-token checks (401),
//! unknown reserved IPs (404), assign actions that take a while to
//! complete, 422 while an action is pending or when the IP is already the
//! droplet's, rate limits (429 with `Retry-After` and `RateLimit-*`
//! headers), and the metadata service's droplet id per caller. Tests can
//! queue failures and delays. In the lab it runs in the client namespace
//! (the "cloud") and moves the VIP's route to the droplet it was assigned
//! to.

use std::{
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

/// What the next action request gets instead of normal handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// Answer with this status and a DigitalOcean-style error body.
    Status(u16),
    /// 429 asking to wait this many seconds.
    RateLimit(u64),
    /// Wait this long, then handle the request normally (a slow API).
    Delay(Duration),
}

/// One assign action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub id: u64,
    pub ip: Ipv4Addr,
    pub droplet: u64,
    pub completed: bool,
}

/// Called when an assignment completes (the lab moves the route).
pub type AssignHook = Arc<dyn Fn(Ipv4Addr, u64) + Send + Sync>;

/// The mock's configuration.
#[derive(Clone)]
pub struct MockConfig {
    pub token: String,
    /// Reserved IPs of the account and the droplet each is assigned to.
    pub reserved: Vec<(Ipv4Addr, Option<u64>)>,
    /// The metadata service's answer per caller address.
    pub droplets: Vec<(Ipv4Addr, u64)>,
    /// How long an assign action stays in progress.
    pub action_time: Duration,
    pub on_assign: Option<AssignHook>,
}

struct Inner {
    config: MockConfig,
    holders: HashMap<Ipv4Addr, Option<u64>>,
    /// IPs with an action in progress.
    locked: HashMap<Ipv4Addr, u64>,
    actions: Vec<Action>,
    queue: VecDeque<Injection>,
    requests: Vec<String>,
    next_action: u64,
}

/// A handle on a running mock.
#[derive(Clone)]
pub struct Mock {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

fn error_body(status: StatusCode, id: &str, message: &str) -> Response {
    (status, Json(json!({ "id": id, "message": message }))).into_response()
}

fn not_found() -> Response {
    error_body(
        StatusCode::NOT_FOUND,
        "not_found",
        "The resource you were accessing could not be found.",
    )
}

impl Mock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues answers for the next action requests.
    pub fn inject(&self, injections: impl IntoIterator<Item = Injection>) {
        self.lock().queue.extend(injections);
    }

    /// Which droplet `ip` is assigned to.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<u64> {
        self.lock().holders.get(&ip).copied().flatten()
    }

    /// Assigns `ip` elsewhere behind the agent's back.
    pub fn set_holder(&self, ip: Ipv4Addr, droplet: Option<u64>) {
        self.lock().holders.insert(ip, droplet);
    }

    /// Marks an action on `ip` as in progress (as another droplet's would).
    pub fn lock_ip(&self, ip: Ipv4Addr, action: u64) {
        self.lock().locked.insert(ip, action);
    }

    pub fn unlock_ip(&self, ip: Ipv4Addr) {
        self.lock().locked.remove(&ip);
    }

    /// "METHOD path" of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    pub fn actions(&self) -> Vec<Action> {
        self.lock().actions.clone()
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let expected = format!("Bearer {}", self.lock().config.token);
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == expected)
    }

    /// The API's first two checks: a valid token (else 401), a reserved
    /// IP that parses (else 404).
    fn admit(&self, headers: &HeaderMap, ip: &str) -> Result<Ipv4Addr, Box<Response>> {
        if !self.authorized(headers) {
            return Err(Box::new(error_body(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unable to authenticate you",
            )));
        }
        ip.parse().map_err(|_| Box::new(not_found()))
    }

    fn log(&self, line: String) {
        self.lock().requests.push(line);
    }
}

async fn metadata_id(
    State(mock): State<Mock>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    mock.log("GET /metadata/v1/id".into());
    let ip = match peer.ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let inner = mock.lock();
    let found = inner
        .config
        .droplets
        .iter()
        .find(|(caller, _)| *caller == ip || caller.is_unspecified())
        .map(|(_, id)| *id);
    match found {
        Some(id) => id.to_string().into_response(),
        None => (StatusCode::NOT_FOUND, "not a droplet\n").into_response(),
    }
}

fn reserved_ip_json(ip: Ipv4Addr, holder: Option<u64>, locked: bool) -> serde_json::Value {
    json!({
        "reserved_ip": {
            "ip": ip.to_string(),
            "region": { "slug": "lab1", "name": "Lab 1", "available": true },
            "droplet": holder.map(|id| json!({ "id": id, "name": format!("lb-{id}"), "status": "active" })),
            "locked": locked,
            "project_id": "00000000-0000-4000-8000-000000000000",
        }
    })
}

async fn get_reserved_ip(
    State(mock): State<Mock>,
    Path(ip): Path<String>,
    headers: HeaderMap,
) -> Response {
    mock.log(format!("GET /v2/reserved_ips/{ip}"));
    let ip = match mock.admit(&headers, &ip) {
        Ok(ip) => ip,
        Err(refusal) => return *refusal,
    };
    let inner = mock.lock();
    match inner.holders.get(&ip) {
        Some(holder) => Json(reserved_ip_json(
            ip,
            *holder,
            inner.locked.contains_key(&ip),
        ))
        .into_response(),
        None => error_body(
            StatusCode::NOT_FOUND,
            "not_found",
            "The resource you were accessing could not be found.",
        ),
    }
}

async fn post_action(
    State(mock): State<Mock>,
    Path(ip): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    mock.log(format!("POST /v2/reserved_ips/{ip}/actions"));
    let injection = mock.lock().queue.pop_front();
    match injection {
        Some(Injection::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error_body(status, "server_error", "Injected failure");
        }
        Some(Injection::RateLimit(seconds)) => {
            let mut response = error_body(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "API Rate limit exceeded.",
            );
            let h = response.headers_mut();
            for (name, value) in [
                ("retry-after", seconds.to_string()),
                ("ratelimit-limit", "5000".into()),
                ("ratelimit-remaining", "0".into()),
            ] {
                if let Ok(value) = value.parse() {
                    h.insert(name, value);
                }
            }
            return response;
        }
        Some(Injection::Delay(wait)) => tokio::time::sleep(wait).await,
        None => {}
    }
    let ip = match mock.admit(&headers, &ip) {
        Ok(ip) => ip,
        Err(refusal) => return *refusal,
    };
    let request: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error_body(StatusCode::BAD_REQUEST, "bad_request", "Invalid JSON"),
    };
    if request["type"] != "assign" {
        return error_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            "Unknown action type",
        );
    }
    let Some(droplet) = request["droplet_id"].as_u64() else {
        return error_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            "droplet_id is required",
        );
    };
    let (id, action_time) = {
        let mut inner = mock.lock();
        let Some(holder) = inner.holders.get(&ip).copied() else {
            return error_body(
                StatusCode::NOT_FOUND,
                "not_found",
                "The resource you were accessing could not be found.",
            );
        };
        if inner.locked.contains_key(&ip) {
            return error_body(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable_entity",
                "The reserved IP already has a pending event.",
            );
        }
        if holder == Some(droplet) {
            return error_body(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable_entity",
                "The reserved IP is already assigned to that Droplet.",
            );
        }
        inner.next_action += 1;
        let id = inner.next_action;
        inner.locked.insert(ip, id);
        inner.actions.push(Action {
            id,
            ip,
            droplet,
            completed: false,
        });
        (id, inner.config.action_time)
    };
    let completer = mock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(action_time).await;
        let hook = {
            let mut inner = completer.lock();
            inner.holders.insert(ip, Some(droplet));
            inner.locked.remove(&ip);
            if let Some(action) = inner.actions.iter_mut().find(|a| a.id == id) {
                action.completed = true;
            }
            inner.config.on_assign.clone()
        };
        if let Some(hook) = hook {
            hook(ip, droplet);
        }
    });
    (
        StatusCode::CREATED,
        Json(json!({
            "action": {
                "id": id,
                "status": "in-progress",
                "type": "assign_ip",
                "started_at": "2026-11-24T00:00:00Z",
                "completed_at": null,
                "resource_id": u32::from(ip),
                "resource_type": "reserved_ip",
                "region_slug": "lab1",
            }
        })),
    )
        .into_response()
}

async fn get_action(
    State(mock): State<Mock>,
    Path((ip, id)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Response {
    mock.log(format!("GET /v2/reserved_ips/{ip}/actions/{id}"));
    if !mock.authorized(&headers) {
        return error_body(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unable to authenticate you",
        );
    }
    let inner = mock.lock();
    match inner.actions.iter().find(|a| a.id == id) {
        Some(action) => Json(json!({
            "action": {
                "id": action.id,
                "status": if action.completed { "completed" } else { "in-progress" },
                "type": "assign_ip",
                "resource_type": "reserved_ip",
            }
        }))
        .into_response(),
        None => error_body(
            StatusCode::NOT_FOUND,
            "not_found",
            "The resource you were accessing could not be found.",
        ),
    }
}

/// Starts the mock on `listen` (port 0 for any) in the current tokio
/// runtime; it serves until the runtime ends.
pub async fn start(listen: SocketAddr, config: MockConfig) -> std::io::Result<Mock> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let holders = config.reserved.iter().copied().collect();
    let mock = Mock {
        inner: Arc::new(Mutex::new(Inner {
            config,
            holders,
            locked: HashMap::new(),
            actions: Vec::new(),
            queue: VecDeque::new(),
            requests: Vec::new(),
            next_action: 0,
        })),
        addr,
    };
    let app = Router::new()
        .route("/metadata/v1/id", get(metadata_id))
        .route("/v2/reserved_ips/{ip}", get(get_reserved_ip))
        .route(
            "/v2/reserved_ips/{ip}/actions",
            axum::routing::post(post_action),
        )
        .route("/v2/reserved_ips/{ip}/actions/{id}", get(get_action))
        .with_state(mock.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok(mock)
}
