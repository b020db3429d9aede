//! Coverage-guided fuzzing of `confab::fuzzing::links` (see README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    confab::fuzzing::links(data);
});
