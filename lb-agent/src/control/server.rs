//! Serves the control API on a Unix socket, root (or the agent's own user) only.

use std::{
    future::Future,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::debug;

use super::{
    protocol::{Request, Response},
    MAX_REQUEST,
};
use crate::limits::AcceptGate;

/// Answers control requests.
pub trait ControlHandler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Response;
}

/// Errors of setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another agent already serves this socket.
    #[error("{path} is served by a running agent; stop it or use another --instance")]
    InUse { path: String },
    /// Creating or binding the socket failed.
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// For the whole request line to arrive: idle and half-sent requests
/// give their connection back after this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// For the client to take the response: a reader that stalls is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Service names are at most 32 characters (config); a longer one cannot
/// name anything and is shown cut to this length.
const MAX_NAME: usize = 32;
/// Longest error text quoted from a request's parse error.
const MAX_QUOTED: usize = 200;

/// How the control server guards itself against clients that hog it.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once; more are answered with an error and
    /// closed at once.
    pub max_connections: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl ServeLimits {
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections,
            read_timeout: READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// `text` cut to `max` characters, marked with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Fails if an agent answers on `path`.
pub async fn ensure_not_running(path: &Path) -> Result<(), ServerError> {
    if path.exists() && UnixStream::connect(path).await.is_ok() {
        return Err(ServerError::InUse {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// Binds `path` (directory 0700, socket 0600), replacing a stale socket.
pub async fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let io = |source| ServerError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse {
                path: path.display().to_string(),
            });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    handler: Arc<dyn ControlHandler>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let own_uid = nix::unistd::geteuid().as_raw();
    let mut gate = AcceptGate::new("control", limits.max_connections);
    let refused = refusal(limits.max_connections);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) if gate.back_off(&error, &mut shutdown).await => continue,
                    Err(_) => break,
                };
                let Some(permit) = gate.admit() else {
                    // Never waits: a client that does not read misses it.
                    let _ = stream.try_write(refused.as_bytes());
                    continue;
                };
                let allowed = stream
                    .peer_cred()
                    .map(|cred| cred.uid() == 0 || cred.uid() == own_uid)
                    .unwrap_or(false);
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(error) = connection(stream, handler, allowed, limits).await {
                        debug!(%error, "control connection");
                    }
                });
            }
        }
    }
}

/// The line a connection beyond the cap gets before it is closed.
fn refusal(cap: usize) -> String {
    let response = Response::Error {
        message: format!(
            "the agent is serving {cap} control connections already (its limit); try again shortly"
        ),
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads one request line of at most `MAX_REQUEST` bytes.
async fn read_request(
    read: tokio::net::unix::OwnedReadHalf,
    limits: ServeLimits,
) -> Result<Request, String> {
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = String::new();
    match tokio::time::timeout(limits.read_timeout, reader.read_line(&mut line)).await {
        Err(_) => {
            return Err(format!(
                "no complete request line within {:?}",
                limits.read_timeout
            ))
        }
        Ok(Err(error)) => return Err(format!("reading the request: {error}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return Err(format!(
            "request longer than {} KiB refused",
            MAX_REQUEST >> 10
        ));
    }
    let request = serde_json::from_str::<Request>(line.trim())
        .map_err(|error| format!("malformed request: {}", cut(&error.to_string(), MAX_QUOTED)))?;
    if let Some(name) = request.service() {
        if name.chars().count() > MAX_NAME {
            return Err(format!(
                "no service named {:?} ({} characters; service names have at most {MAX_NAME})",
                cut(name, MAX_NAME),
                name.chars().count()
            ));
        }
    }
    Ok(request)
}

async fn connection(
    stream: UnixStream,
    handler: Arc<dyn ControlHandler>,
    allowed: bool,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let response = if !allowed {
        Response::Error {
            message: "permission denied: the control API is for root".into(),
        }
    } else {
        match read_request(read, limits).await {
            Err(message) => Response::Error { message },
            Ok(request) => {
                let handler = handler.clone();
                tokio::task::spawn_blocking(move || handler.handle(request))
                    .await
                    .unwrap_or_else(|e| Response::Error {
                        message: format!("the agent failed handling the request: {e}"),
                    })
            }
        }
    };
    let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    let sent = async {
        write.write_all(text.as_bytes()).await?;
        write.shutdown().await
    };
    tokio::time::timeout(limits.write_timeout, sent)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")
        })?
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::control::protocol::Reply;

    struct Named;

    impl ControlHandler for Named {
        fn handle(&self, request: Request) -> Response {
            match request.service() {
                Some(name) => Response::Error {
                    message: format!("no service named {name:?}"),
                },
                None => Response::Ok(Reply::Changed {
                    message: "ok".into(),
                }),
            }
        }
    }

    struct Server {
        path: std::path::PathBuf,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(name: &str, limits: ServeLimits) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-ctl-{name}-{}", std::process::id()));
            let path = dir.join("t.sock");
            let listener = bind(&path).await.expect("bind");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, Arc::new(Named), limits, async {
                let _ = stopped.await;
            }));
            Self {
                path,
                stop: Some(stop),
                task,
            }
        }

        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let _ = (&mut self.task).await;
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Sends `request` raw and reads the answer line (bounded in time).
    async fn exchange(path: &Path, request: &[u8]) -> String {
        let mut stream = UnixStream::connect(path).await.expect("connect");
        // The server may answer and close before all of a huge request is
        // written: a write error then is fine.
        let _ = stream.write_all(request).await;
        let mut answer = String::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            BufReader::new(stream).read_line(&mut answer),
        )
        .await
        .expect("an answer within 5 s")
        .expect("read");
        answer
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_refused_at_once_and_idle_ones_time_out() {
        let limits = ServeLimits {
            max_connections: 3,
            read_timeout: Duration::from_millis(400),
            write_timeout: Duration::from_secs(1),
        };
        let server = Server::start("cap", limits).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(UnixStream::connect(&server.path).await.expect("connect"));
        }
        // Let the server take the three before the fourth arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let answer = exchange(&server.path, b"{\"op\":\"stats\"}\n").await;
        assert!(
            answer.contains("serving 3 control connections already"),
            "{answer}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "refused at once"
        );

        // The idle ones are answered and closed once their time is up.
        for stream in idle {
            let mut answer = String::new();
            tokio::time::timeout(
                Duration::from_secs(3),
                BufReader::new(stream).read_line(&mut answer),
            )
            .await
            .expect("closed by the server in time")
            .expect("read");
            assert!(answer.contains("no complete request line"), "{answer}");
        }
        // Their permits are back: a request is served again.
        let answer = exchange(&server.path, b"{\"op\":\"stats\"}\n").await;
        assert!(answer.contains("\"status\":\"ok\""), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn huge_requests_and_names_are_not_echoed() {
        let server = Server::start("big", ServeLimits::new(8)).await;
        let huge = format!(
            "{{\"op\":\"backends_list\",\"service\":\"{}\"}}\n",
            "a".repeat(1 << 20)
        );
        let answer = exchange(&server.path, huge.as_bytes()).await;
        assert!(answer.len() < 200, "{} bytes back", answer.len());
        assert!(answer.contains("longer than 64 KiB"), "{answer}");

        let long = format!(
            "{{\"op\":\"backends_list\",\"service\":\"{}\"}}\n",
            "b".repeat(10_000)
        );
        let answer = exchange(&server.path, long.as_bytes()).await;
        assert!(answer.len() < 200, "{answer}");
        assert!(
            answer.contains("10000 characters; service names have at most 32"),
            "{answer}"
        );

        let bad_op = format!("{{\"op\":\"{}\"}}\n", "c".repeat(10_000));
        let answer = exchange(&server.path, bad_op.as_bytes()).await;
        assert!(
            answer.len() < 400 && answer.contains("malformed request"),
            "{answer}"
        );

        // A real name still gets the handler's answer.
        let answer = exchange(
            &server.path,
            b"{\"op\":\"backends_list\",\"service\":\"www\"}\n",
        )
        .await;
        assert!(answer.contains("no service named \\\"www\\\""), "{answer}");
        server.stop().await;
    }
}
