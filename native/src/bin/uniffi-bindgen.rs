//! `uniffi-bindgen generate --library <libnative.so> --language swift|kotlin|python --out-dir <dir>`
fn main() {
    uniffi::uniffi_bindgen_main()
}
