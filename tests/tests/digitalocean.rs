//! The `digitalocean` floating IP provider against the stand-in API
//! (`integration_tests::do_api`): assignment, retries on 5xx, 429 and
//! timeouts, final 401/404, 422 while an action is pending or when the IP
//! is already ours, giving up, cancelling, reconciling, and a token that
//! never shows. No root needed.

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use integration_tests::do_api::{self, Injection, Mock, MockConfig};
use lb_agent::{
    config::{FloatingIpConfig, ProviderKind},
    floating_ip::{Desired, DigitalOcean, DoError, Token},
};
use tokio::sync::watch;

const IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const US: u64 = 1001;
const THEM: u64 = 1002;
const TOKEN: &str = "dop_v1_secret-token-0123456789";

async fn mock(holder: Option<u64>) -> Mock {
    do_api::start(
        "127.0.0.1:0".parse::<SocketAddr>().expect("addr"),
        MockConfig {
            token: TOKEN.into(),
            reserved: vec![(IP, holder)],
            droplets: vec![(Ipv4Addr::LOCALHOST, US)],
            action_time: Duration::from_millis(50),
            on_assign: None,
        },
    )
    .await
    .expect("mock API")
}

fn config(mock: &Mock) -> FloatingIpConfig {
    let url = format!("http://{}", mock.addr);
    FloatingIpConfig {
        provider: ProviderKind::Digitalocean,
        api_url: url.clone(),
        metadata_url: url,
        tries: 4,
        retry_interval: Duration::from_millis(100),
        request_timeout: Duration::from_millis(500),
        ..FloatingIpConfig::default()
    }
}

fn provider(mock: &Mock, token: &str) -> DigitalOcean {
    DigitalOcean::new(&config(mock), Token::new(token), vec![IP]).expect("provider")
}

fn holding() -> (watch::Sender<Desired>, watch::Receiver<Desired>) {
    watch::channel(Desired {
        hold: Some(true),
        generation: 0,
    })
}

async fn wait_holder(mock: &Mock, droplet: u64) -> bool {
    for _ in 0..50 {
        if mock.holder(IP) == Some(droplet) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Assignment requests the API has seen.
fn posts(mock: &Mock) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count()
}

#[tokio::test]
async fn assigns_the_reserved_ip_to_this_droplet() {
    let mock = mock(Some(THEM)).await;
    let mut p = provider(&mock, TOKEN);
    let (_tx, wish) = holding();
    p.acquire(&wish).await.expect("assigned");
    assert_eq!(p.held(), vec![IP]);
    assert!(wait_holder(&mock, US).await, "the action completed for us");
    assert_eq!(
        mock.requests(),
        [
            "GET /metadata/v1/id",
            "POST /v2/reserved_ips/203.0.113.10/actions"
        ]
    );
    assert_eq!(mock.actions().len(), 1);
    assert_eq!(p.counts(), (2, 0));
}

#[tokio::test]
async fn retries_server_errors_rate_limits_and_timeouts() {
    let mock = mock(None).await;
    mock.inject([
        Injection::Status(500),
        Injection::Status(503),
        Injection::RateLimit(1),
    ]);
    let mut p = provider(&mock, TOKEN);
    let (_tx, wish) = holding();
    let started = Instant::now();
    p.acquire(&wish).await.expect("the fourth try works");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1200),
        "waited out Retry-After: {took:?}"
    );
    assert!(wait_holder(&mock, US).await);

    let mock = mock_slow().await;
    let mut p = provider(&mock, TOKEN);
    p.acquire(&wish).await.expect("a slow answer is retried");
    assert_eq!(p.counts().1, 1, "one timed-out request");
}

async fn mock_slow() -> Mock {
    let m = mock(None).await;
    m.inject([Injection::Delay(Duration::from_secs(2))]);
    m
}

#[tokio::test]
async fn a_refused_token_and_an_unknown_ip_are_final() {
    let mock = mock(None).await;
    let mut p = provider(&mock, "dop_v1_wrong");
    let (_tx, wish) = holding();
    let error = p.acquire(&wish).await.expect_err("401");
    assert!(matches!(error, DoError::Unauthorized), "{error}");
    assert_eq!(mock.requests().len(), 2, "metadata + one POST, no retries");

    let mut p = DigitalOcean::new(
        &config(&mock),
        Token::new(TOKEN),
        vec![Ipv4Addr::new(203, 0, 113, 99)],
    )
    .expect("provider");
    let error = p.acquire(&wish).await.expect_err("404");
    assert!(error.to_string().contains("does not exist"), "{error}");
}

#[tokio::test]
async fn pending_actions_are_waited_for_and_already_ours_is_done() {
    let mock = mock(Some(THEM)).await;
    mock.lock_ip(IP, 77);
    let unlocker = mock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        unlocker.unlock_ip(IP);
    });
    let mut p = provider(&mock, TOKEN);
    let (_tx, wish) = holding();
    p.acquire(&wish)
        .await
        .expect("assigned once the other action ended");
    assert!(wait_holder(&mock, US).await);
    assert!(p.counts().1 >= 1, "at least one 422");

    // Already ours: the 422 is looked up and counts as done.
    let mut again = provider(&mock, TOKEN);
    again.acquire(&wish).await.expect("already ours");
    assert_eq!(again.held(), vec![IP]);
    assert!(mock.requests().ends_with(&[
        "POST /v2/reserved_ips/203.0.113.10/actions".to_string(),
        "GET /v2/reserved_ips/203.0.113.10".to_string()
    ]));
}

#[tokio::test]
async fn gives_up_after_its_tries_and_stops_when_no_longer_master() {
    let mock = mock(None).await;
    mock.inject(std::iter::repeat_n(Injection::Status(502), 10));
    let mut p = provider(&mock, TOKEN);
    let (tx, wish) = holding();
    let error = p.acquire(&wish).await.expect_err("gives up");
    assert!(
        error.to_string().contains("gave up after 4 tries"),
        "{error}"
    );
    assert!(error.to_string().contains("502"), "{error}");

    let mut p = provider(&mock, TOKEN);
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.send_modify(|d| d.hold = Some(false));
        tx
    });
    let started = Instant::now();
    let error = p.acquire(&wish).await.expect_err("cancelled");
    assert!(matches!(error, DoError::Cancelled), "{error}");
    assert!(started.elapsed() < Duration::from_millis(400));
    let _ = cancel.await;
}

#[tokio::test]
async fn reconcile_takes_the_ip_back_when_it_moved() {
    let mock = mock(None).await;
    let mut p = provider(&mock, TOKEN);
    let (_tx, wish) = holding();
    p.acquire(&wish).await.expect("assigned");
    assert!(wait_holder(&mock, US).await);
    p.reconcile(&wish).await.expect("nothing to do");
    assert_eq!(posts(&mock), 1);

    mock.set_holder(IP, Some(THEM));
    p.reconcile(&wish).await.expect("re-assigned");
    assert_eq!(posts(&mock), 2);
    assert!(wait_holder(&mock, US).await);
    assert!(p.refresh().await.expect("refresh"), "all ours");
}

#[tokio::test]
async fn reconcile_leaves_an_assignment_in_progress_alone() {
    // The round right after a takeover finds this node's own assignment
    // still running and the IP still the old holder's: asking again would
    // only be refused with 422.
    let mock = mock(Some(THEM)).await;
    let mut p = provider(&mock, TOKEN);
    let (_tx, wish) = holding();
    p.acquire(&wish).await.expect("assignment started");
    assert_eq!(mock.holder(IP), Some(THEM), "the action is still running");
    p.reconcile(&wish).await.expect("waits for it");
    assert_eq!(posts(&mock), 1, "{:?}", mock.requests());
    assert_eq!(p.counts().1, 0, "nothing failed");
    assert!(wait_holder(&mock, US).await);
    p.reconcile(&wish).await.expect("ours now");
    assert_eq!(p.held(), vec![IP]);
    assert_eq!(p.counts().1, 0);
}

#[tokio::test]
async fn the_token_never_shows() {
    let mock = mock(None).await;
    let p = provider(&mock, TOKEN);
    assert!(!format!("{p:?}").contains("secret"), "{p:?}");
    let mut wrong = provider(&mock, "dop_v1_other-secret");
    let (_tx, wish) = holding();
    let error = wrong.acquire(&wish).await.expect_err("401");
    assert!(!format!("{error} {error:?}").contains("secret"));

    // From a file: only when other users cannot read it.
    let dir = std::env::temp_dir().join(format!("do-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut cfg = config(&mock);
    cfg.token_file = Some(file.clone());
    let error = Token::from_config(&cfg).expect_err("world-readable");
    assert!(error.to_string().contains("chmod 600"), "{error}");
    assert!(!error.to_string().contains("secret"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let token = Token::from_config(&cfg).expect("private file");
    assert_eq!(format!("{token:?}"), "Token(***)");
    let mut p = DigitalOcean::new(&cfg, token, vec![IP]).expect("provider");
    p.acquire(&wish).await.expect("the file's token works");
    let _ = std::fs::remove_dir_all(&dir);

    cfg.token_file = None;
    cfg.token_env = "LB_TEST_NO_SUCH_TOKEN_VAR".into();
    let error = Token::from_config(&cfg).expect_err("no token");
    assert!(
        error.to_string().contains("LB_TEST_NO_SUCH_TOKEN_VAR"),
        "{error}"
    );
}
