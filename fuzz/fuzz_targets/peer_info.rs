//! What ranks exchange at init: PeerInfo::decode and the transport endpoints decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| oxccl::fuzzing::peer_info(data));
