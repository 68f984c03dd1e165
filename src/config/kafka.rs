//! `[kafka]`: brokers, group, topics, authentication and librdkafka properties.
//!
//! [`KafkaConfig::validate`] catches, without connecting, what would
//! otherwise surface as a failing `run`: properties landfall owns, unknown
//! security protocols and SASL mechanisms, SASL without its credentials, TLS
//! files that are missing or unreadable, TLS settings on a plaintext
//! connection, and MSK IAM settings that properties contradict. Every error
//! names the key to fix. `landfall check` then tests the connection itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, Redacted};

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (`bootstrap.servers`).
    pub bootstrap_servers: String,
    /// Consumer group id. Offsets are committed under this group.
    pub group_id: String,
    pub topics: Vec<String>,
    /// Consumer group session timeout.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How the clients authenticate; unset: as `properties` say.
    #[serde(default)]
    pub auth: KafkaAuth,
    /// Passed verbatim to librdkafka (TLS, SASL, MSK settings, ...). Values may
    /// reference environment variables as `${NAME}` and files as
    /// `${file:/path}`. Keys landfall owns (`enable.auto.commit`,
    /// `enable.auto.offset.store`, `group.id`, `bootstrap.servers`) are
    /// rejected here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// How landfall's Kafka clients authenticate.
#[derive(Clone, Debug, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, tag = "method", rename_all = "kebab-case")]
pub enum KafkaAuth {
    /// As `kafka.properties` configure it: no authentication, TLS client
    /// certificates, SASL/SCRAM or SASL/PLAIN.
    #[default]
    Properties,
    /// Amazon MSK IAM: SASL/OAUTHBEARER over TLS with tokens signed (SigV4)
    /// from the standard AWS credential chain (environment, profile, web
    /// identity, ECS task role, EC2 instance role); see src/source/msk_iam.rs.
    AwsMskIam {
        /// The cluster's region, e.g. `eu-west-1`.
        region: String,
        /// Profile of the shared AWS config files; unset: `AWS_PROFILE`, or
        /// `default`.
        #[serde(default)]
        profile: Option<String>,
    },
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

/// librdkafka properties landfall sets itself; configuring them would break
/// the commit discipline.
const OWNED_PROPERTIES: &[&str] = &["enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"];
const PROTOCOLS: &[&str] = &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
/// What this build's librdkafka supports (no Kerberos: the `gssapi` feature
/// is not built).
const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];
/// Properties that name files librdkafka reads at start.
const FILE_PROPERTIES: &[(&str, &str)] = &[
    ("ssl.ca.location", "the CA certificate(s) that signed the brokers' certificates"),
    ("ssl.certificate.location", "this client's certificate"),
    ("ssl.key.location", "this client's private key"),
    ("ssl.keystore.location", "this client's PKCS#12 keystore"),
    ("ssl.crl.location", "the certificate revocation list"),
];
/// Properties MSK IAM authentication sets or makes meaningless.
const IAM_OWNED_PREFIXES: &[&str] = &["sasl.mechanism", "sasl.username", "sasl.password", "sasl.oauthbearer.", "sasl.kerberos."];

fn prop_key(name: &str) -> String {
    format!("kafka.properties.\"{name}\"")
}

impl KafkaConfig {
    /// The property `name` (librdkafka's alias `sasl.mechanisms` included).
    fn property(&self, name: &str) -> Option<(&str, &str)> {
        self.properties.get_key_value(name).map(|(k, v)| (k.as_str(), v.as_str())).or_else(|| {
            (name == "sasl.mechanism")
                .then(|| self.properties.get_key_value("sasl.mechanisms").map(|(k, v)| (k.as_str(), v.as_str())))
                .flatten()
        })
    }

    /// The security protocol the clients will use (lowercase).
    pub fn security_protocol(&self) -> String {
        match &self.auth {
            KafkaAuth::AwsMskIam { .. } => "sasl_ssl".into(),
            KafkaAuth::Properties => self.property("security.protocol").map_or("plaintext", |(_, v)| v).trim().to_ascii_lowercase(),
        }
    }

    /// The SASL mechanism, if the protocol uses SASL.
    pub fn sasl_mechanism(&self) -> Option<String> {
        match &self.auth {
            KafkaAuth::AwsMskIam { .. } => Some("OAUTHBEARER".into()),
            KafkaAuth::Properties if self.security_protocol().starts_with("sasl_") => {
                Some(self.property("sasl.mechanism").map_or("GSSAPI", |(_, v)| v).trim().to_owned())
            }
            KafkaAuth::Properties => None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid("kafka.bootstrap_servers", "must not be empty"));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid("kafka.topics", "list at least one non-empty topic"));
        }
        for key in self.properties.keys() {
            if OWNED_PROPERTIES.contains(&key.as_str()) {
                return Err(invalid(prop_key(key), "is set by landfall itself (offsets are committed only after changes land); remove it"));
            }
        }
        if let Some((key, value)) = self.property("security.protocol") {
            if !PROTOCOLS.contains(&value.trim().to_ascii_lowercase().as_str()) {
                return Err(invalid(prop_key(key), format!("unknown security protocol {value:?}; use one of {PROTOCOLS:?}")));
            }
        }
        self.validate_auth()?;
        self.validate_tls()
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        if let KafkaAuth::AwsMskIam { region, profile } = &self.auth {
            let valid_region = !region.is_empty() && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid_region {
                return Err(invalid("kafka.auth.region", format!("{region:?} is not an AWS region (e.g. \"eu-west-1\")")));
            }
            if profile.as_deref().is_some_and(|p| p.trim().is_empty()) {
                return Err(invalid("kafka.auth.profile", "must not be empty (leave it out for AWS_PROFILE or default)"));
            }
            if let Some((key, value)) = self.property("security.protocol") {
                if !value.trim().eq_ignore_ascii_case("sasl_ssl") {
                    return Err(invalid(prop_key(key), "MSK IAM authentication runs over TLS (SASL_SSL, port 9098); remove it"));
                }
            }
            if let Some(key) = self.properties.keys().find(|k| IAM_OWNED_PREFIXES.iter().any(|p| k.starts_with(p))) {
                return Err(invalid(prop_key(key), "is set by kafka.auth = { method = \"aws-msk-iam\" }; remove it"));
            }
            return Ok(());
        }
        let Some(mechanism) = self.sasl_mechanism() else { return Ok(()) };
        let key = self.property("sasl.mechanism").map_or_else(|| prop_key("sasl.mechanism"), |(k, _)| prop_key(k));
        if mechanism == "GSSAPI" {
            let why = if self.property("sasl.mechanism").is_none() { "unset (librdkafka's default is GSSAPI): " } else { "" };
            return Err(invalid(
                key,
                format!("{why}Kerberos (GSSAPI) is not built into landfall; use SCRAM-SHA-512, PLAIN, or kafka.auth = {{ method = \"aws-msk-iam\" }}"),
            ));
        }
        if !MECHANISMS.contains(&mechanism.as_str()) {
            return Err(invalid(key, format!("unknown SASL mechanism {mechanism:?}; use one of {MECHANISMS:?}")));
        }
        if mechanism == "OAUTHBEARER" {
            let oidc = self.property("sasl.oauthbearer.method").is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("oidc"));
            if !oidc {
                return Err(invalid(
                    key,
                    "OAUTHBEARER needs a token source: kafka.auth = { method = \"aws-msk-iam\", region = \"...\" } for MSK, \
                     or sasl.oauthbearer.method = \"oidc\" with its sasl.oauthbearer.* settings",
                ));
            }
        } else {
            for needed in ["sasl.username", "sasl.password"] {
                if self.property(needed).is_none_or(|(_, v)| v.is_empty()) {
                    return Err(invalid(prop_key(needed), format!("SASL {mechanism} needs it")));
                }
            }
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls = self.security_protocol().ends_with("ssl");
        for (name, what) in FILE_PROPERTIES {
            let Some((key, value)) = self.property(name) else { continue };
            if !tls {
                return Err(invalid(
                    prop_key(key),
                    "has no effect without TLS: set security.protocol to \"ssl\" or \"sasl_ssl\", or remove it",
                ));
            }
            // librdkafka's special value: the system's CA store.
            if *name == "ssl.ca.location" && value.trim() == "probe" {
                continue;
            }
            check_readable(Path::new(value.trim()))
                .map_err(|why| invalid(prop_key(key), format!("{} names {what}, but {why}", value.trim())))?;
        }
        Ok(())
    }
}

/// Whether librdkafka will be able to read `path` (a file, or a directory of
/// CA certificates).
fn check_readable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("it does not exist".into()),
        Err(e) => Err(format!("it cannot be read: {e}")),
        Ok(m) if m.is_dir() => std::fs::read_dir(path).map(drop).map_err(|e| format!("the directory cannot be read: {e}")),
        Ok(_) => std::fs::File::open(path).map(drop).map_err(|e| format!("it cannot be read: {e}")),
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("session_timeout", &self.session_timeout)
            .field("auth", &self.auth)
            .field("properties", &Redacted(&self.properties))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(extra: &str) -> Result<KafkaConfig, ConfigError> {
        let text = format!("bootstrap_servers = \"b:9092\"\ngroup_id = \"g\"\ntopics = [\"t\"]\n{extra}");
        let c: KafkaConfig = toml::from_str(&text).map_err(|e| invalid("<toml>", e.to_string()))?;
        c.validate().map(|()| c)
    }

    fn err(extra: &str) -> String {
        match kafka(extra) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn msk_iam_auth_parses_and_owns_its_sasl_settings() {
        let c = kafka("auth = { method = \"aws-msk-iam\", region = \"eu-west-1\" }").unwrap();
        assert_eq!(c.auth, KafkaAuth::AwsMskIam { region: "eu-west-1".into(), profile: None });
        assert_eq!(c.security_protocol(), "sasl_ssl");
        assert_eq!(c.sasl_mechanism().as_deref(), Some("OAUTHBEARER"));
        let c = kafka("auth = { method = \"aws-msk-iam\", region = \"us-east-1\", profile = \"msk\" }\n[properties]\n\"security.protocol\" = \"SASL_SSL\"").unwrap();
        assert_eq!(c.auth, KafkaAuth::AwsMskIam { region: "us-east-1".into(), profile: Some("msk".into()) });

        let e = err("auth = { method = \"aws-msk-iam\", region = \"eu-west-1\" }\n[properties]\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"");
        assert!(e.contains("sasl.mechanism") && e.contains("aws-msk-iam"), "{e}");
        let e =
            err("auth = { method = \"aws-msk-iam\", region = \"eu-west-1\" }\n[properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"");
        assert!(e.contains("security.protocol") && e.contains("TLS"), "{e}");
        let e = err("auth = { method = \"aws-msk-iam\", region = \"Frankfurt 1\" }");
        assert!(e.contains("kafka.auth.region"), "{e}");
        let e = err("auth = { method = \"aws-msk-iam\" }");
        assert!(e.contains("region"), "{e}");
        let e = err("auth = { method = \"kerberos\" }");
        assert!(e.contains("kerberos"), "{e}");
    }

    #[test]
    fn unknown_protocols_and_mechanisms_are_named() {
        let e = err("[properties]\n\"security.protocol\" = \"SASL_TLS\"");
        assert!(e.contains("security.protocol") && e.contains("SASL_TLS") && e.contains("sasl_ssl"), "{e}");
        let e = err("[properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-1\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"p\"");
        assert!(e.contains("sasl.mechanism") && e.contains("SCRAM-SHA-1") && e.contains("SCRAM-SHA-512"), "{e}");
        // The alias librdkafka also takes.
        let e = err("[properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"MD5\"\n");
        assert!(e.contains("sasl.mechanisms") && e.contains("MD5"), "{e}");
        let e = err("[properties]\n\"security.protocol\" = \"SASL_SSL\"");
        assert!(e.contains("GSSAPI") && e.contains("unset"), "{e}");
        let e =
            err("[properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"u\"");
        assert!(e.contains("sasl.password") && e.contains("SCRAM-SHA-512"), "{e}");
        let e = err("[properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"OAUTHBEARER\"");
        assert!(e.contains("aws-msk-iam") && e.contains("oidc"), "{e}");
        kafka("[properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"p\"").unwrap();
        kafka("[properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"OAUTHBEARER\"\n\"sasl.oauthbearer.method\" = \"oidc\"").unwrap();
    }

    #[test]
    fn tls_files_must_exist_and_tls_must_be_on() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let missing = dir.path().join("nope.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let tls = |extra: String| format!("[properties]\n\"security.protocol\" = \"SSL\"\n{extra}");

        kafka(&tls(format!("\"ssl.ca.location\" = \"{}\"", ca.display()))).unwrap();
        kafka(&tls(format!("\"ssl.ca.location\" = \"{}\"", dir.path().display()))).unwrap();
        kafka(&tls("\"ssl.ca.location\" = \"probe\"".into())).unwrap();
        let e = err(&tls(format!("\"ssl.ca.location\" = \"{}\"", missing.display())));
        assert!(e.contains("ssl.ca.location") && e.contains("nope.pem") && e.contains("does not exist") && e.contains("CA"), "{e}");
        let e = err(&tls(format!("\"ssl.key.location\" = \"{}\"", missing.display())));
        assert!(e.contains("ssl.key.location") && e.contains("private key"), "{e}");
        // TLS files on a plaintext connection: the operator forgot the protocol.
        let e = err(&format!("[properties]\n\"ssl.ca.location\" = \"{}\"", ca.display()));
        assert!(e.contains("ssl.ca.location") && e.contains("security.protocol"), "{e}");
    }
}
