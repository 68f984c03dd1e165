//! Arbitrary bytes as a WAL record: decoding returns a record or an error,
//! never panics, and never allocates without bound (the decoder's limit).
#![no_main]

use landfall::wal::record::decode;
use landfall::wal::{DeadLetter, PendingBatch, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode::<Record>(data) {
        // What decodes survives a round trip (and always encodes: it fit the limit).
        let bytes = landfall::wal::record::encode(&r).expect("a decoded record encodes");
        assert_eq!(decode::<Record>(&bytes).as_ref(), Ok(&r));
    }
    let _ = decode::<DeadLetter>(data);
    let _ = landfall::wal::record::decode_dead_letter(data);
    if let Ok(b) = decode::<PendingBatch>(data) {
        let bytes = landfall::wal::record::encode(&b).expect("a decoded record encodes");
        assert_eq!(decode::<PendingBatch>(&bytes).as_ref(), Ok(&b));
    }
});
