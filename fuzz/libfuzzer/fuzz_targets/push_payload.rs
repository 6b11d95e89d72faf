#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::push_payload(data));
