//! Kafka authentication as landfall's clients do it (src/source/auth.rs,
//! src/source/msk_iam.rs), through the real AWS credential chain and
//! librdkafka's real OAUTHBEARER refresh machinery.
//!
//! What cannot be shown here: a consumer session through MSK IAM, TLS or
//! SASL/SCRAM end to end. librdkafka's mock cluster, the only broker on these
//! machines, speaks plaintext Kafka only (it has no SaslHandshake handler and
//! no TLS listener); `the_mock_cluster_speaks_neither_tls_nor_sasl` below
//! proves that, so this gap is not an assumption. Those settings are checked
//! by `landfall validate` (src/config/kafka.rs) and, against a real cluster,
//! by `landfall check`. docs/security.md says the same.
//!
//! The credential chain reads the process environment, which all tests of
//! this binary share: every test sets up the same environment once
//! ([`aws_env`]) and picks its case by profile name.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use landfall::config::{KafkaAuth, KafkaConfig};
use landfall::metrics::{Metrics, TokenStats};
use landfall::source::auth::{base_consumer, ClientAuth};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;

struct AwsEnv {
    _dir: tempfile::TempDir,
    /// One line per run of the short-lived profile's credential_process.
    process_runs: PathBuf,
}

/// An AWS config file with three profiles, and nothing else the chain could
/// find (no keys in the environment, no instance metadata):
/// - `short-lived`: a credential_process whose credentials expire 3 s after
///   it runs (as instance-role and assumed-role credentials expire, only
///   sooner);
/// - `static`: keys in the file;
/// - anything else (e.g. `nowhere`): no credentials at all.
fn aws_env() -> &'static AwsEnv {
    static ENV: OnceLock<AwsEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("process-runs");
        let script = dir.path().join("short-lived-credentials.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho run >> '{}'\nexp=$(date -u -d '+3 seconds' +%Y-%m-%dT%H:%M:%SZ)\n\
                 printf '{{\"Version\":1,\"AccessKeyId\":\"AKIDSHORTLIVED\",\"SecretAccessKey\":\"s3cret-short-lived\",\
                 \"SessionToken\":\"short-session\",\"Expiration\":\"%s\"}}' \"$exp\"\n",
                runs.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            format!(
                "[profile short-lived]\ncredential_process = {}\n\n[profile static]\naws_access_key_id = AKIDSTATIC\n\
                 aws_secret_access_key = s3cret-static-key\n",
                script.display()
            ),
        )
        .unwrap();
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ] {
            std::env::remove_var(var);
        }
        std::env::set_var("AWS_CONFIG_FILE", &config);
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("no-credentials-file"));
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        AwsEnv { _dir: dir, process_runs: runs }
    })
}

fn msk_iam_config(bootstrap: &str, profile: &str) -> KafkaConfig {
    let text = format!(
        "bootstrap_servers = \"{bootstrap}\"\ngroup_id = \"auth-test\"\ntopics = [\"t\"]\n\
         auth = {{ method = \"aws-msk-iam\", region = \"eu-west-1\", profile = \"{profile}\" }}\n"
    );
    let c: KafkaConfig = toml::from_str(&text).unwrap();
    c.validate().unwrap();
    c
}

/// A port nothing listens on: the refresh path needs no broker (librdkafka
/// asks for tokens whether or not a connection succeeds).
const NO_BROKER: &str = "127.0.0.1:9";

fn decode(token: &str) -> String {
    String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_before_the_credentials_expire() {
    let env = aws_env();
    let cfg = msk_iam_config(NO_BROKER, "short-lived");
    let metrics = Arc::new(Metrics::default());
    let (consumer, ctx) = landfall::source::kafka::subscribe(&cfg, Default::default(), Duration::from_secs(1), metrics.clone()).unwrap();
    let runs_before = std::fs::read_to_string(&env.process_runs).unwrap_or_default().lines().count();

    // The stream is polled as the pipeline polls it; librdkafka serves its
    // refresh requests inside those polls.
    let start = Instant::now();
    let mut first = None;
    while metrics.kafka_tokens.refreshes.load(Ordering::Relaxed) < 3 {
        assert!(start.elapsed() < Duration::from_secs(30), "3 tokens not made in 30 s: {:?}", metrics.kafka_tokens);
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        if first.is_none() && metrics.kafka_tokens.refreshes.load(Ordering::Relaxed) == 1 {
            first = Some(Instant::now());
        }
    }
    let first = first.expect("the first token was seen");
    assert_eq!(metrics.kafka_tokens.failures.load(Ordering::Relaxed), 0);
    // Each token lives until its credentials expire (2-3 s), and librdkafka
    // asks for the next at 80 % of that: the refreshes follow the lifetime,
    // they are not a retry loop.
    assert!(first.elapsed() >= Duration::from_millis(2500), "3 tokens within {:?} of the first", first.elapsed());
    // Every refresh ran the credential chain again (fresh credentials).
    let runs = std::fs::read_to_string(&env.process_runs).unwrap().lines().count() - runs_before;
    assert!(runs >= 3, "credential_process ran {runs} times for 3 tokens");

    // What such a token holds: the profile's credentials, and a lifetime cut
    // to theirs.
    let iam = ctx.auth.msk_iam().expect("MSK IAM configured");
    let token = iam.token().unwrap();
    let url = decode(&token.token);
    assert!(url.starts_with("https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect&"), "{url}");
    assert!(url.contains("X-Amz-Credential=AKIDSHORTLIVED%2F") && url.contains("X-Amz-Security-Token=short-session"), "{url}");
    assert!(!url.contains("s3cret"), "the secret key is in the token");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(token.lifetime_ms > now_ms && token.lifetime_ms <= now_ms + 3_000, "lifetime {} vs now {now_ms}", token.lifetime_ms);
    drop(consumer);
}

#[test]
fn without_credentials_the_refresh_fails_clearly_and_names_no_secret() {
    aws_env();
    let cfg = msk_iam_config(NO_BROKER, "nowhere");
    let stats = Arc::new(TokenStats::default());
    let auth = ClientAuth::new(&cfg, stats.clone()).unwrap();
    let err = auth.msk_iam().unwrap().token().unwrap_err().to_string();
    assert!(err.contains("no AWS credentials") && err.contains("role"), "{err}");
    // It says what the chain tried, on one line.
    assert!(err.contains("Profile") && err.contains("`nowhere`") && err.contains("Ec2InstanceMetadata") && !err.contains('\n'), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    assert_eq!((stats.refreshes.load(Ordering::Relaxed), stats.failures.load(Ordering::Relaxed)), (0, 1));
    // Through librdkafka: the failure is reported to it (it retries later),
    // and counted.
    let stats = Arc::new(TokenStats::default());
    let _consumer = base_consumer(&cfg, stats.clone()).unwrap();
    assert_eq!((stats.refreshes.load(Ordering::Relaxed), stats.failures.load(Ordering::Relaxed)), (0, 1));
}

#[test]
fn a_short_lived_client_has_its_token_before_it_connects() {
    aws_env();
    let cfg = msk_iam_config(NO_BROKER, "static");
    let stats = Arc::new(TokenStats::default());
    let consumer = base_consumer(&cfg, stats.clone()).unwrap();
    // Served inside base_consumer: a client used only for metadata or
    // offsets never polls, so it would otherwise never authenticate.
    assert_eq!(stats.refreshes.load(Ordering::Relaxed), 1);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
    // Static keys do not expire: the token lives its full 15 minutes.
    let t = ClientAuth::new(&cfg, Default::default()).unwrap().msk_iam().unwrap().token().unwrap();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((t.lifetime_ms - now_ms - 900_000).abs() < 2_000, "{} vs {now_ms}", t.lifetime_ms);
    assert!(decode(&t.token).contains("X-Amz-Credential=AKIDSTATIC%2F"));
    drop(consumer);
}

#[test]
fn the_mock_cluster_speaks_neither_tls_nor_sasl() {
    aws_env();
    let kafka = landfall::harness::demo::LocalKafka::start("auth.limits", 1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let metadata = |extra: &[(&str, &str)]| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &bootstrap).set("socket.timeout.ms", "3000");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        let consumer: BaseConsumer<ClientAuth> = c.create_with_context(ClientAuth::default()).unwrap();
        let _ = consumer.poll(Duration::ZERO);
        consumer.fetch_metadata(Some("auth.limits"), Duration::from_secs(4)).map(|m| m.topics().len())
    };
    assert_eq!(metadata(&[]).expect("plaintext metadata from the mock cluster"), 1);
    let scram =
        [("security.protocol", "SASL_PLAINTEXT"), ("sasl.mechanism", "SCRAM-SHA-512"), ("sasl.username", "u"), ("sasl.password", "p")];
    assert!(metadata(&scram).is_err(), "the mock cluster answered a SASL/SCRAM client: test SCRAM end to end here");
    assert!(metadata(&[("security.protocol", "SSL")]).is_err(), "the mock cluster answered a TLS client: test TLS end to end here");

    // An MSK IAM client with a valid token is refused as well: the limit is
    // the broker's, not the token's.
    let cfg = msk_iam_config(&bootstrap, "static");
    let auth = ClientAuth::new(&cfg, Default::default()).unwrap();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &bootstrap)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "OAUTHBEARER")
        .set("socket.timeout.ms", "3000");
    let consumer: BaseConsumer<ClientAuth> = c.create_with_context(auth).unwrap();
    let _ = consumer.poll(Duration::ZERO);
    assert!(
        consumer.fetch_metadata(Some("auth.limits"), Duration::from_secs(4)).is_err(),
        "the mock cluster accepted OAUTHBEARER: run a consumer session through it"
    );
    assert!(matches!(cfg.auth, KafkaAuth::AwsMskIam { .. }));
}

/// `landfall check` with MSK IAM: the AWS credentials get a line of their
/// own, before any broker is asked.
#[test]
fn check_reports_the_aws_credentials_behind_msk_iam() {
    aws_env();
    let kafka = landfall::harness::demo::LocalKafka::start("auth.check", 1).unwrap();
    let verdict = |profile: &str| {
        let lines = landfall::check::kafka::check(&msk_iam_config(&kafka.bootstrap_servers(), profile));
        let l = lines.iter().find(|l| l.check == "AWS credentials (MSK IAM)").unwrap_or_else(|| panic!("{lines:#?}")).clone();
        let tls = lines.iter().find(|l| l.check == "TLS handshake").unwrap().clone();
        (l, tls)
    };
    let (creds, tls) = verdict("static");
    assert_eq!(creds.verdict, landfall::check::Verdict::Pass, "{creds:?}");
    assert!(creds.detail.contains("eu-west-1"), "{creds:?}");
    // The mock cluster has no TLS listener: the TLS line says so.
    assert_eq!(tls.verdict, landfall::check::Verdict::Fail, "{tls:?}");
    let (creds, _) = verdict("nowhere");
    assert_eq!(creds.verdict, landfall::check::Verdict::Fail, "{creds:?}");
    assert!(creds.detail.contains("no AWS credentials"), "{creds:?}");
}
