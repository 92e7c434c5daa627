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
use tracing::{debug, warn};

use super::{
    protocol::{Request, Response},
    MAX_LINE,
};

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

const READ_TIMEOUT: Duration = Duration::from_secs(5);

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
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        warn!(%error, "control accept");
                        continue;
                    }
                };
                let allowed = stream
                    .peer_cred()
                    .map(|cred| cred.uid() == 0 || cred.uid() == own_uid)
                    .unwrap_or(false);
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(error) = connection(stream, handler, allowed).await {
                        debug!(%error, "control connection");
                    }
                });
            }
        }
    }
}

async fn connection(
    stream: UnixStream,
    handler: Arc<dyn ControlHandler>,
    allowed: bool,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64);
    let mut line = String::new();
    let response = if !allowed {
        Response::Error {
            message: "permission denied: the control API is for root".into(),
        }
    } else {
        match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => Response::Error {
                message: "no request line within 5 s".into(),
            },
            Ok(Err(error)) => Response::Error {
                message: format!("reading the request: {error}"),
            },
            Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                Ok(request) => {
                    let handler = handler.clone();
                    tokio::task::spawn_blocking(move || handler.handle(request))
                        .await
                        .unwrap_or_else(|e| Response::Error {
                            message: format!("the agent failed handling the request: {e}"),
                        })
                }
                Err(error) => Response::Error {
                    message: format!("malformed request: {error}"),
                },
            },
        }
    };
    let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}
