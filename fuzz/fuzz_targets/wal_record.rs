//! Arbitrary bytes as a WAL record: decoding returns a record or an error,
//! never panics, and never allocates without bound (the decoder's limit).
#![no_main]

use landfall::log::record::decode;
use landfall::log::{DeadLetter, PendingBatch, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode::<Record>(data) {
        // What decodes survives a round trip.
        assert_eq!(decode::<Record>(&landfall::log::record::encode(&r)).as_ref(), Ok(&r));
    }
    let _ = decode::<DeadLetter>(data);
    let _ = landfall::log::record::decode_dead_letter(data);
    if let Ok(b) = decode::<PendingBatch>(data) {
        assert_eq!(decode::<PendingBatch>(&landfall::log::record::encode(&b)).as_ref(), Ok(&b));
    }
});
