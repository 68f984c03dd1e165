//! The Kafka lines of `landfall check`. Blocking (librdkafka and DNS):
//! [`super::run`] runs it on a blocking thread.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;

use super::{Line, Verdict};
use crate::config::{KafkaAuth, KafkaConfig};
use crate::source::auth::{base_consumer, ClientAuth};

const PART: &str = "kafka";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn line(check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Line {
    Line::new(PART, check, verdict, detail)
}

/// `host:port` pairs of `bootstrap.servers` (a `SASL_SSL://` style prefix
/// dropped).
fn bootstrap_addresses(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.rsplit("://").next().unwrap_or(s).to_owned()).collect()
}

/// Whether each bootstrap address resolves and accepts a connection; true
/// if any does.
fn reach(lines: &mut Vec<Line>, cfg: &KafkaConfig) -> bool {
    let mut any = false;
    for server in bootstrap_addresses(&cfg.bootstrap_servers) {
        let addrs: Vec<SocketAddr> = match server.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                lines.push(line(format!("resolve {server}"), Verdict::Fail, format!("does not resolve: {e}")));
                continue;
            }
        };
        lines.push(line(format!("resolve {server}"), Verdict::Pass, format!("{} address(es), first {}", addrs.len(), addrs[0])));
        let mut last = String::new();
        let connected = addrs.iter().find(|a| match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(_) => true,
            Err(e) => {
                last = format!("{a}: {e}");
                false
            }
        });
        match connected {
            Some(a) => {
                any = true;
                lines.push(line(format!("connect {server}"), Verdict::Pass, format!("TCP connection to {a}")));
            }
            None => lines.push(line(
                format!("connect {server}"),
                Verdict::Fail,
                format!("no TCP connection ({last}); check security groups, routes and the port of the listener"),
            )),
        }
    }
    any
}

/// The client's errors after a failed request (they arrive as events).
fn drain_errors(consumer: &BaseConsumer<ClientAuth>) -> Vec<String> {
    for _ in 0..5 {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    consumer.context().errors()
}

pub fn check(cfg: &KafkaConfig) -> Vec<Line> {
    let mut lines = Vec::new();
    let protocol = cfg.security_protocol();
    let mechanism = cfg.sasl_mechanism();
    let tls = protocol.ends_with("ssl");
    let reached = reach(&mut lines, cfg);

    if let KafkaAuth::AwsMskIam { region, .. } = &cfg.auth {
        let token = ClientAuth::new(cfg, Default::default())
            .map_err(|e| e.to_string())
            .and_then(|a| a.msk_iam().expect("MSK IAM configured").token().map_err(|e| e.to_string()));
        match token {
            Ok(t) => {
                let expires = time::OffsetDateTime::from_unix_timestamp(t.lifetime_ms / 1000)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| t.lifetime_ms.to_string());
                lines.push(line("AWS credentials (MSK IAM)", Verdict::Pass, format!("token signed for {region}, valid until {expires}")))
            }
            Err(e) => lines.push(line("AWS credentials (MSK IAM)", Verdict::Fail, e)),
        }
    }
    let skip_topics_and_group = |lines: &mut Vec<Line>, why: &str| {
        for t in &cfg.topics {
            lines.push(line(format!("topic {t}"), Verdict::Skip, why));
        }
        lines.push(line(format!("group {}", cfg.group_id), Verdict::Skip, why));
    };
    let not_reached = |lines: &mut Vec<Line>, why: &str| {
        for check in ["TLS handshake", "authentication", "brokers answer"] {
            lines.push(line(check, Verdict::Skip, why));
        }
        skip_topics_and_group(lines, why);
    };
    if !reached {
        not_reached(&mut lines, "not reached (no bootstrap address answered)");
        return lines;
    }
    let consumer = match base_consumer(cfg, Default::default()) {
        Ok(c) => c,
        Err(e) => {
            not_reached(&mut lines, &format!("no client: {e}"));
            return lines;
        }
    };

    let metadata = consumer.fetch_metadata(None, REQUEST_TIMEOUT);
    let errors = if metadata.is_err() { drain_errors(&consumer) } else { Vec::new() };
    let tls_error = errors.iter().find(|e| e.contains("SSL")).cloned();
    let auth_error = errors.iter().find(|e| e.contains("SASL") || e.contains("uthentication")).cloned();
    let other_error = || {
        let mut e = metadata.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        if let Some(last) = errors.last() {
            e = format!("{e} ({last})");
        }
        e
    };
    lines.push(match (&metadata, tls, &tls_error, &auth_error) {
        (_, false, _, _) => line("TLS handshake", Verdict::Skip, format!("not used (security.protocol = {protocol})")),
        (Ok(_), true, _, _) => line("TLS handshake", Verdict::Pass, "broker certificates verified"),
        (Err(_), true, Some(e), _) => {
            line("TLS handshake", Verdict::Fail, format!("{e}; check ssl.ca.location and that the port is the TLS listener's"))
        }
        (Err(_), true, None, Some(_)) => line("TLS handshake", Verdict::Pass, "handshake done (authentication failed below)"),
        (Err(_), true, None, None) => line("TLS handshake", Verdict::Fail, format!("no answer: {}", other_error())),
    });
    lines.push(match (&metadata, &mechanism, &auth_error, &tls_error) {
        (_, None, _, _) => line("authentication", Verdict::Skip, format!("not used (security.protocol = {protocol})")),
        (Ok(_), Some(m), _, _) => line("authentication", Verdict::Pass, format!("SASL {m} accepted")),
        (Err(_), Some(m), Some(e), _) => line("authentication", Verdict::Fail, format!("SASL {m}: {e}")),
        (Err(_), Some(_), None, Some(_)) => line("authentication", Verdict::Skip, "not reached (TLS failed)"),
        (Err(_), Some(_), None, None) => line("authentication", Verdict::Fail, format!("no answer: {}", other_error())),
    });
    let metadata = match metadata {
        Ok(m) => m,
        Err(_) => {
            lines.push(line("brokers answer", Verdict::Fail, other_error()));
            skip_topics_and_group(&mut lines, "not reached");
            return lines;
        }
    };
    let brokers: Vec<String> = metadata.brokers().iter().map(|b| format!("{}:{}", b.host(), b.port())).collect();
    lines.push(line("brokers answer", Verdict::Pass, format!("{} broker(s): {}", brokers.len(), brokers.join(", "))));

    let mut partitions = TopicPartitionList::new();
    for topic in &cfg.topics {
        let check = format!("topic {topic}");
        let found = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT);
        let t = found.as_ref().ok().and_then(|m| m.topics().iter().find(|t| t.name() == topic).map(|t| (t.error(), t.partitions().len())));
        lines.push(match (found.as_ref().err(), t) {
            (Some(e), _) => line(check, Verdict::Fail, e.to_string()),
            (None, None) => line(check, Verdict::Fail, "not in the metadata"),
            (None, Some((Some(err), _))) => match RDKafkaErrorCode::from(err) {
                RDKafkaErrorCode::UnknownTopicOrPartition => line(check, Verdict::Fail, "does not exist (check kafka.topics and the DMS endpoint's topic)"),
                RDKafkaErrorCode::TopicAuthorizationFailed => line(
                    check,
                    Verdict::Fail,
                    "not authorized: the principal needs Describe and Read on it (MSK IAM: kafka-cluster:DescribeTopic, kafka-cluster:ReadData)",
                ),
                code => line(check, Verdict::Fail, code.to_string()),
            },
            (None, Some((None, n))) => {
                for p in 0..n as i32 {
                    partitions.add_partition(topic, p);
                }
                line(check, Verdict::Pass, format!("{n} partition(s)"))
            }
        });
    }

    let check = format!("group {}", cfg.group_id);
    if partitions.count() == 0 {
        lines.push(line(check, Verdict::Skip, "no readable topic to ask the group's offsets of"));
        return lines;
    }
    lines.push(match consumer.committed_offsets(partitions, REQUEST_TIMEOUT) {
        Ok(c) => {
            let committed = c.elements().iter().filter(|e| matches!(e.offset(), rdkafka::Offset::Offset(_))).count();
            line(check, Verdict::Pass, format!("coordinator answered: {committed} of {} partition(s) have committed offsets", c.count()))
        }
        Err(KafkaError::OffsetFetch(RDKafkaErrorCode::GroupAuthorizationFailed)) => line(
            check,
            Verdict::Fail,
            "not authorized for the group: the principal needs Read on it (MSK IAM: kafka-cluster:DescribeGroup, kafka-cluster:AlterGroup)",
        ),
        Err(e) => line(check, Verdict::Fail, format!("{e}; the group coordinator did not answer")),
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists_are_split_and_prefixes_dropped() {
        assert_eq!(bootstrap_addresses(" a:9092, SASL_SSL://b:9096 ,,[::1]:9092"), vec!["a:9092", "b:9096", "[::1]:9092"]);
    }
}
