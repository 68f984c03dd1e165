//! A message as read from Kafka, owned: what the pipeline decodes and what a
//! dead letter keeps.

use rdkafka::Message;

/// A message read from Kafka, owned.
#[derive(Debug, Clone, Default)]
pub struct Msg {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka message key.
    pub key: Option<Vec<u8>>,
    /// The Kafka headers, in order (a name may repeat).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub payload: Option<Vec<u8>>,
    /// The Kafka timestamp (Unix ms): the produce-to-landed latency, and part
    /// of a dead letter's identity.
    pub produced_ms: Option<i64>,
}

impl Msg {
    /// Copies a message read from Kafka.
    pub fn from_kafka<M: Message>(m: &M) -> Msg {
        use rdkafka::message::Headers;
        let headers = m.headers().map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect()).unwrap_or_default();
        Msg {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().map(<[u8]>::to_vec),
            produced_ms: m.timestamp().to_millis(),
        }
    }

    pub fn coords(&self) -> Coords {
        Coords { topic: self.topic.clone(), partition: self.partition, offset: self.offset }
    }
}

/// Where a message was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Coords {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}
