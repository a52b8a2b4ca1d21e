//! Feeds arbitrary bytes to vknf-flow's TLS hello readers as a handshake message: nothing may panic,
//! and the selected version of a ServerHello is what `tls-parser` reads, whether vknf's short reader
//! answers (it may only for hellos that `tls-parser` reads without fail) or hands the bytes on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vknf_flow::tls::{parse_client_hello, parse_server_hello_version, parse_server_hello_version_with_tls_parser};

fuzz_target!(|data: &[u8]| {
    let _ = parse_client_hello(data);
    assert_eq!(
        parse_server_hello_version(data),
        parse_server_hello_version_with_tls_parser(data)
    );
});
