//! One conformance suite, written once and run for every server runtime ×
//! every client runtime (tokio, async-std, smol, mio), over TCP, a unix
//! socket and a unixpacket (seqpacket) one. Each pair is its own test,
//! named `<server>_serves_<client>`, so a failure names both runtimes.
//!
//! The scenarios are written against `teleport_peer::Session`, the handle
//! every adapter hands out; the client side of each scenario runs on the
//! client runtime's own executor (for mio, a plain `block_on` on the test
//! thread while the mio loop does the I/O).
//!
//! Alongside its core scenarios, each pair runs TLS on every transport
//! ([`tls`]), a proto of the test's own ([`protos`]), connections the
//! test hands the peers ([`served`]) and tcp6 ([`sockets`]), and hands
//! a `traceparent` on through a handler's call ([`traces`]).
//!
//! Besides the suite, each pair has two tests of its own: in
//! `reply_at_close`, a server that answers a pull and closes at once still
//! delivers the answer ([`closing`]); in `socket_options`, the configured
//! socket options are on the client runtime's dialed sockets and the
//! server runtime's accepted ones, and were there in time for the
//! handshake ([`sockets`]). And each runtime has one in `served_close`:
//! closing a served connection ends its writing side by the time `close`
//! returns ([`served`]).

mod api;
mod closing;
mod decoding;
mod extensions;
mod moving;
mod plugins;
mod protos;
mod runtimes;
mod scenarios;
mod served;
mod sockets;
mod tls;
mod traces;

use runtimes::Rt;

macro_rules! pairs {
    ($($name:ident: $server:ident, $client:ident;)*) => {
        $(
            #[test]
            fn $name() {
                scenarios::run_pair(Rt::$server, Rt::$client);
            }
        )*

        mod api_over_sockets {
            use super::*;
            $(
                #[test]
                fn $name() {
                    api::run(Rt::$server, Rt::$client, stringify!($name));
                }
            )*
        }

        mod reply_at_close {
            use super::*;
            $(
                #[test]
                fn $name() {
                    closing::run_pair(Rt::$server, Rt::$client);
                }
            )*
        }

        mod socket_options {
            use super::*;
            $(
                #[test]
                fn $name() {
                    sockets::options(Rt::$server, Rt::$client);
                }
            )*
        }
    };
}

pairs! {
    tokio_serves_tokio: Tokio, Tokio;
    tokio_serves_async_std: Tokio, AsyncStd;
    tokio_serves_smol: Tokio, Smol;
    tokio_serves_mio: Tokio, Mio;
    async_std_serves_tokio: AsyncStd, Tokio;
    async_std_serves_async_std: AsyncStd, AsyncStd;
    async_std_serves_smol: AsyncStd, Smol;
    async_std_serves_mio: AsyncStd, Mio;
    smol_serves_tokio: Smol, Tokio;
    smol_serves_async_std: Smol, AsyncStd;
    smol_serves_smol: Smol, Smol;
    smol_serves_mio: Smol, Mio;
    mio_serves_tokio: Mio, Tokio;
    mio_serves_async_std: Mio, AsyncStd;
    mio_serves_smol: Mio, Smol;
    mio_serves_mio: Mio, Mio;
}

mod served_close {
    use super::*;

    #[test]
    fn tokio() {
        served::close_ends_the_writing_side(Rt::Tokio);
    }

    #[test]
    fn async_std() {
        served::close_ends_the_writing_side(Rt::AsyncStd);
    }

    #[test]
    fn smol() {
        served::close_ends_the_writing_side(Rt::Smol);
    }

    #[test]
    fn mio() {
        served::close_ends_the_writing_side(Rt::Mio);
    }
}

mod decoding_threads {
    use super::*;

    #[test]
    fn tokio() {
        decoding::large_frames_off_the_socket_threads(Rt::Tokio);
    }

    #[test]
    fn async_std() {
        decoding::large_frames_off_the_socket_threads(Rt::AsyncStd);
    }

    #[test]
    fn smol() {
        decoding::large_frames_off_the_socket_threads(Rt::Smol);
    }

    #[test]
    fn mio() {
        decoding::large_frames_off_the_socket_threads(Rt::Mio);
    }

    #[test]
    fn mio_handlers_on_the_loop() {
        decoding::large_frames_off_the_mio_loop();
    }
}
