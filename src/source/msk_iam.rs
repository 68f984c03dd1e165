//! Amazon MSK IAM authentication: SASL/OAUTHBEARER with a SigV4-signed token.
//!
//! MSK's IAM listener (port 9098) takes as OAUTHBEARER token a presigned
//! `GET https://kafka.{region}.amazonaws.com/?Action=kafka-cluster:Connect`
//! URL, base64url-encoded without padding. This module makes that token the
//! way AWS's own signers do and hands it to librdkafka through its token
//! refresh callback ([`rdkafka::ClientContext::generate_oauth_token`]).
//!
//! What it guarantees:
//! - **The signature is AWS's.** Signing is done by `aws-sigv4` (the AWS
//!   SDK's signer); this module only lays out the URL. The test
//!   `signs_the_same_url_as_aws_python_signer` compares the token, for fixed
//!   credentials and a fixed clock, with the one AWS's reference signer
//!   (`aws-msk-iam-sasl-signer-python`) makes (tests/fixtures/msk_iam/).
//! - **Credentials come from the standard AWS chain**: environment, the
//!   shared config/credentials files (profiles, `credential_process`,
//!   assume-role), web identity (EKS), the ECS container endpoint, the EC2
//!   instance role. Nothing needs to be on disk for an instance role.
//! - **Tokens are renewed before they expire.** A token lives for 15 minutes
//!   or until the credentials it was signed with expire, whichever is first;
//!   librdkafka asks for the next one at 80 % of that lifetime.
//! - **No async runtime is blocked.** librdkafka asks for tokens from inside
//!   a consumer poll, which may run on a tokio worker. The credential chain
//!   is async: it runs on a thread of its own with its own runtime, and the
//!   poll waits for it outside the scheduler (as a rebalance does).
//! - **No secret is logged.** Errors name the provider that failed, never a
//!   key; the token itself is never logged.
//!
//! Why not the `aws-msk-iam-sasl-signer` crate: it reads the wall clock
//! inside (no fixed-clock test against a known-good token is possible), loads
//! the whole AWS config again for every token and pulls in an STS client for
//! debugging; its signing core is the same `aws-sigv4` call made here.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use base64::Engine as _;

pub use crate::metrics::TokenStats;

/// How long a token is valid (what AWS's signers use).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// The principal name given to librdkafka (MSK takes the identity from the
/// signature; the name only appears in librdkafka's own logs).
pub const PRINCIPAL: &str = "aws-msk-iam";
const SIGNING_NAME: &str = "kafka-cluster";
const USER_AGENT: &str = concat!("landfall/", env!("CARGO_PKG_VERSION"));
/// Upper bound of one run of the credential chain (IMDS, STS, a process).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MskIamError {
    #[error(
        "no AWS credentials for MSK IAM authentication: {0}. Give the instance or task a role, \
         or set AWS_PROFILE / AWS_ACCESS_KEY_ID (see docs/security.md)"
    )]
    Credentials(String),
    #[error("cannot sign the MSK IAM token: {0}")]
    Sign(String),
    #[error("the AWS credential thread is gone: {0}")]
    Thread(String),
}

/// A signed token and when it expires.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// base64url (no padding) of the presigned URL.
    pub token: String,
    /// Expiry, in milliseconds since the Unix epoch.
    pub lifetime_ms: i64,
}

fn percent_encode(s: &str) -> String {
    // RFC 3986 unreserved characters stay; everything else is %XX, as in
    // SigV4's canonical query string.
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token for `credentials` in `region`, signed at `now`.
pub fn sign_token(credentials: &Credentials, region: &str, now: SystemTime) -> Result<Token, MskIamError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
    let host = format!("kafka.{region}.amazonaws.com");
    let action = format!("Action={}", percent_encode("kafka-cluster:Connect"));
    let unsigned = format!("https://{host}/?{action}");

    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| MskIamError::Sign(e.to_string()))?;
    let request = SignableRequest::new("GET", &unsigned, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| MskIamError::Sign(e.to_string()))?;
    let (instructions, _) = sign(request, &params.into()).map_err(|e| MskIamError::Sign(e.to_string()))?.into_parts();

    let mut url = unsigned;
    for (name, value) in instructions.params() {
        url.push('&');
        url.push_str(name);
        url.push('=');
        url.push_str(&percent_encode(value));
    }
    // Not signed (AWS's signers add it after signing, too).
    url.push_str("&User-Agent=");
    url.push_str(&percent_encode(USER_AGENT));

    // X-Amz-Date has whole seconds: the expiry follows from it, as MSK sees it.
    let signed_at = now.duration_since(UNIX_EPOCH).map_err(|e| MskIamError::Sign(e.to_string()))?.as_secs();
    let mut lifetime_ms = ((signed_at + TOKEN_LIFETIME.as_secs()) * 1000) as i64;
    if let Some(expiry) = credentials.expiry() {
        let expiry_ms = expiry.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        lifetime_ms = lifetime_ms.min(expiry_ms);
    }
    Ok(Token { token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url), lifetime_ms })
}

type Reply = mpsc::SyncSender<Result<Credentials, String>>;

/// Token source of one Kafka client: the credential chain on its own thread
/// (which ends when this is dropped), and counters for `/metrics`.
pub struct MskIam {
    region: String,
    requests: mpsc::Sender<Reply>,
    pub stats: Arc<TokenStats>,
}

impl MskIam {
    /// Starts the credential thread for `region`, with `profile` (unset:
    /// `AWS_PROFILE` or `default`) for the shared config files.
    pub fn new(region: &str, profile: Option<&str>, stats: Arc<TokenStats>) -> Result<MskIam, MskIamError> {
        let (requests, rx) = mpsc::channel::<Reply>();
        let (region_s, profile) = (region.to_owned(), profile.map(str::to_owned));
        std::thread::Builder::new()
            .name("landfall-aws-credentials".into())
            .spawn(move || credential_thread(region_s, profile, rx))
            .map_err(|e| MskIamError::Thread(e.to_string()))?;
        Ok(MskIam { region: region.to_owned(), requests, stats })
    }

    /// Credentials from the chain (blocking: call outside async code or
    /// through [`super::kafka::wait_outside_the_scheduler`]).
    pub fn credentials(&self) -> Result<Credentials, MskIamError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.requests.send(tx).map_err(|e| MskIamError::Thread(e.to_string()))?;
        rx.recv().map_err(|e| MskIamError::Thread(e.to_string()))?.map_err(MskIamError::Credentials)
    }

    /// A fresh token, signed now (blocking, as [`MskIam::credentials`]).
    pub fn token(&self) -> Result<Token, MskIamError> {
        let result = self.credentials().and_then(|c| sign_token(&c, &self.region, SystemTime::now()));
        match &result {
            Ok(_) => self.stats.refreshes.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.failures.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// For librdkafka's refresh callback.
    pub fn oauth_token(&self) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        match super::kafka::wait_outside_the_scheduler(|| self.token()) {
            Ok(t) => Ok(rdkafka::client::OAuthToken { token: t.token, principal_name: PRINCIPAL.into(), lifetime_ms: t.lifetime_ms }),
            Err(e) => {
                tracing::warn!(error = %e, "MSK IAM token refresh failed; librdkafka retries in 10 s");
                Err(Box::new(e))
            }
        }
    }
}

fn credential_thread(region: String, profile: Option<String>, rx: mpsc::Receiver<Reply>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let e = format!("cannot start the credential runtime: {e}");
            while let Ok(reply) = rx.recv() {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let chain = rt.block_on(async {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let conf = aws_config::provider_config::ProviderConfig::default()
            .with_http_client(http)
            .with_region(Some(aws_config::Region::new(region)));
        let mut builder = aws_config::default_provider::credentials::DefaultCredentialsChain::builder().configure(conf);
        if let Some(p) = profile {
            builder = builder.profile_name(&p);
        }
        builder.build().await
    });
    while let Ok(reply) = rx.recv() {
        let got = rt.block_on(async { tokio::time::timeout(CREDENTIALS_TIMEOUT, chain.provide_credentials()).await });
        let result = match got {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("the credential chain did not answer within {}s", CREDENTIALS_TIMEOUT.as_secs())),
        };
        let _ = reply.send(result);
    }
}

/// The error and its causes on one line (they name providers and reasons,
/// never key material).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    // The chain lists its attempts one per line: one log line instead.
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// tests/fixtures/msk_iam/known_good_token.py's output: AWS's Python
    /// signer, for the credentials, region and time below.
    const KNOWN_GOOD_TOKEN: &str = "aHR0cHM6Ly9rYWZrYS5ldS13ZXN0LTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0JlgtQW16LUFsZ29yaXRobT1BV1M0LUhNQUMtU0hBMjU2JlgtQW16LUNyZWRlbnRpYWw9QUtJQUlPU0ZPRE5ON0VYQU1QTEUlMkYyMDI2MTIwNiUyRmV1LXdlc3QtMSUyRmthZmthLWNsdXN0ZXIlMkZhd3M0X3JlcXVlc3QmWC1BbXotRGF0ZT0yMDI2MTIwNlQxMjM0NTZaJlgtQW16LUV4cGlyZXM9OTAwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCZYLUFtei1TZWN1cml0eS1Ub2tlbj1JUW9KYjNKcFoybHVYMlZqRVhBTVBMRSUyRnNlc3Npb24lMkJ0b2tlbiUzRCUzRCZYLUFtei1TaWduYXR1cmU9YWZlOTI1YzFkY2UwMGE3YWI1ZmJkOTAxYzYxZjAwZTM0YjNlMWM0NDIwNDQ5NmEwMTdhOTRmNmVmYjA5YTg3NSZVc2VyLUFnZW50PWF3cy1tc2staWFtLXNhc2wtc2lnbmVyLXB5dGhvbiUyRjEuMC4y";
    const KNOWN_GOOD_EXPIRY_MS: i64 = 1_796_561_396_000;
    /// 2026-12-06T12:34:56Z
    const SIGNED_AT: u64 = 1_796_560_496;

    fn fixture_credentials(expiry: Option<SystemTime>) -> Credentials {
        Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            Some("IQoJb3JpZ2luX2VjEXAMPLE/session+token==".into()),
            expiry,
            "fixture",
        )
    }

    /// The URL a token holds: its prefix and its decoded query parameters.
    fn decode(token: &str) -> (String, BTreeMap<String, String>) {
        let url = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).expect("base64url")).unwrap();
        let (prefix, query) = url.split_once('?').expect("a query");
        let unescape = |s: &str| {
            let mut out = Vec::new();
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        };
        let params = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (unescape(k), unescape(v))
            })
            .collect();
        (prefix.to_owned(), params)
    }

    #[test]
    fn signs_the_same_url_as_aws_python_signer() {
        let at = UNIX_EPOCH + Duration::from_secs(SIGNED_AT);
        let ours = sign_token(&fixture_credentials(None), "eu-west-1", at).unwrap();
        let (their_prefix, mut theirs) = decode(KNOWN_GOOD_TOKEN);
        let (our_prefix, mut mine) = decode(&ours.token);
        assert_eq!(our_prefix, their_prefix);
        // The user agent names the library that signed; everything else,
        // the signature above all, must be identical.
        assert_eq!(theirs.remove("User-Agent").as_deref(), Some("aws-msk-iam-sasl-signer-python/1.0.2"));
        assert_eq!(mine.remove("User-Agent").as_deref(), Some(USER_AGENT));
        assert_eq!(mine, theirs);
        assert_eq!(mine["X-Amz-Signature"], "afe925c1dce00a7ab5fbd901c61f00e34b3e1c44204496a017a94f6efb09a875");
        assert_eq!(ours.lifetime_ms, KNOWN_GOOD_EXPIRY_MS);
        // A second later is another signature: the clock is really used.
        let later = sign_token(&fixture_credentials(None), "eu-west-1", at + Duration::from_secs(1)).unwrap();
        assert_ne!(decode(&later.token).1["X-Amz-Signature"], mine["X-Amz-Signature"]);
    }

    #[test]
    fn a_token_never_outlives_its_credentials() {
        let at = UNIX_EPOCH + Duration::from_secs(SIGNED_AT);
        let soon = at + Duration::from_secs(120);
        let t = sign_token(&fixture_credentials(Some(soon)), "eu-west-1", at).unwrap();
        assert_eq!(t.lifetime_ms, (SIGNED_AT as i64 + 120) * 1000);
        let late = at + Duration::from_secs(3600);
        let t = sign_token(&fixture_credentials(Some(late)), "eu-west-1", at).unwrap();
        assert_eq!(t.lifetime_ms, KNOWN_GOOD_EXPIRY_MS);
    }

    #[test]
    fn a_token_without_a_session_token_has_no_security_token_parameter() {
        let c = Credentials::new("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None, None, "fixture");
        let t = sign_token(&c, "us-east-1", UNIX_EPOCH + Duration::from_secs(SIGNED_AT)).unwrap();
        let (prefix, params) = decode(&t.token);
        assert_eq!(prefix, "https://kafka.us-east-1.amazonaws.com/");
        assert!(!params.contains_key("X-Amz-Security-Token"), "{params:?}");
        assert_eq!(params["Action"], "kafka-cluster:Connect");
        assert!(params["X-Amz-Credential"].ends_with("/20261206/us-east-1/kafka-cluster/aws4_request"));
        // The secret key never appears in a token.
        assert!(!String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&t.token).unwrap())
            .unwrap()
            .contains("wJalrXUtnFEMI"));
    }
}
