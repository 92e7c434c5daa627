//! Calls a running agent's control API.

use std::{path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::{
    protocol::{Request, Response},
    MAX_LINE,
};

/// Errors of talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no agent listens on {path} ({source}); is `lb-agent --instance {instance} run` running?"
    )]
    NotRunning {
        path: String,
        instance: String,
        #[source]
        source: std::io::Error,
    },
    /// The socket is root-only.
    #[error("permission denied on {path}: run as root")]
    Denied { path: String },
    /// The exchange failed midway.
    #[error("talking to the agent on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The agent answered something unreadable.
    #[error("unreadable answer from the agent: {0}")]
    BadReply(String),
    /// No complete answer in time: a hung or overloaded agent, or
    /// something else holding the socket.
    #[error(
        "the agent did not answer within {} s on {path}; is it running (`systemctl status lb-agent`, or `lb-agent --instance {instance} run`)? \
         Its log says why it is stuck; give a busy agent longer with --timeout",
        seconds(*.after)
    )]
    TimedOut {
        path: String,
        instance: String,
        after: Duration,
    },
}

/// How long a client command waits for the agent by default: connecting,
/// sending the request and reading the whole reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `10`, `1.5`: seconds as people write them.
fn seconds(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// Sends `request` to the agent at `path` and returns its response, or
/// `TimedOut` when connecting, sending and reading the reply took longer
/// than `timeout` together.
pub async fn call(
    path: &Path,
    instance: &str,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    tokio::time::timeout(timeout, exchange(path, instance, request))
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::TimedOut {
                path: path.display().to_string(),
                instance: instance.to_string(),
                after: timeout,
            })
        })
}

/// One request and its response, however long it takes.
async fn exchange(path: &Path, instance: &str, request: &Request) -> Result<Response, ClientError> {
    let shown = path.display().to_string();
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::Denied {
                path: shown.clone(),
            },
            _ => ClientError::NotRunning {
                path: shown.clone(),
                instance: instance.to_string(),
                source,
            },
        })?;
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).await.map_err(io)?;
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
    let mut answer = String::new();
    reader.read_line(&mut answer).await.map_err(io)?;
    serde_json::from_str(answer.trim())
        .map_err(|e| ClientError::BadReply(format!("{e}: {answer:?}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::control::{
        protocol::{Reply, Response},
        server::{bind, serve, ControlHandler, ServeLimits},
    };

    struct Echo;

    impl ControlHandler for Echo {
        fn handle(&self, request: Request) -> Response {
            match request {
                Request::BackendsList { service } => Response::Error {
                    message: format!("no service {service}"),
                },
                _ => Response::Ok(Reply::Changed {
                    message: "ok".into(),
                }),
            }
        }
    }

    #[tokio::test]
    async fn round_trip_over_a_real_socket() {
        let dir = std::env::temp_dir().join(format!("lb-ctl-{}", std::process::id()));
        let path = dir.join("t.sock");
        let listener = bind(&path).await.expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Echo),
            ServeLimits::new(8),
            async {
                let _ = stopped.await;
            },
        ));
        let answer = call(&path, "t", &Request::Stats, DEFAULT_TIMEOUT)
            .await
            .expect("call");
        assert_eq!(
            answer,
            Response::Ok(Reply::Changed {
                message: "ok".into()
            })
        );
        let answer = call(
            &path,
            "t",
            &Request::BackendsList {
                service: "x".into(),
            },
            DEFAULT_TIMEOUT,
        )
        .await
        .expect("call");
        assert_eq!(
            answer,
            Response::Error {
                message: "no service x".into()
            }
        );

        // A second agent on the same socket is refused.
        assert!(matches!(
            bind(&path).await,
            Err(crate::control::server::ServerError::InUse { .. })
        ));

        // Garbage gets an error answer, not a hang.
        let mut raw = UnixStream::connect(&path).await.expect("connect");
        raw.write_all(b"{nonsense}\n").await.expect("write");
        let mut reply = String::new();
        BufReader::new(raw)
            .read_line(&mut reply)
            .await
            .expect("read");
        assert!(reply.contains("malformed request"), "{reply}");

        let _ = stop.send(());
        server.await.expect("server stops");
        let _ = std::fs::remove_dir_all(dir);

        let missing = call(&path, "gone", &Request::Stats, DEFAULT_TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(missing.contains("--instance gone run"), "{missing}");
    }

    #[tokio::test]
    async fn an_agent_that_never_answers_times_out_with_a_clear_message() {
        let dir = std::env::temp_dir().join(format!("lb-ctl-mute-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("mute.sock");
        // Accepts (the kernel does, into the backlog) and never reads.
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let started = std::time::Instant::now();
        let error = call(&path, "mute", &Request::Stats, Duration::from_millis(300))
            .await
            .expect_err("no answer");
        let took = started.elapsed();
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(error, ClientError::TimedOut { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("did not answer within 0.3 s") && message.contains("--timeout"),
            "{message}"
        );
        assert!(took < Duration::from_secs(2), "gave up after {took:?}");
    }
}
