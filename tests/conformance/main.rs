//! One conformance suite, written once and run for every server runtime ×
//! every client runtime (tokio, async-std, smol, mio), over TCP and over a
//! unix socket. Each pair is its own test, named `<server>_serves_<client>`,
//! so a failure names both runtimes.
//!
//! The scenarios are written against `teleport_peer::Session`, the handle
//! every adapter hands out; the client side of each scenario runs on the
//! client runtime's own executor (for mio, a plain `block_on` on the test
//! thread while the mio loop does the I/O).
//!
//! Besides the suite, each pair has a test of its own in
//! `reply_at_close`: a server that answers a pull and closes at once
//! still delivers the answer ([`closing`]).

mod api;
mod closing;
mod extensions;
mod plugins;
mod runtimes;
mod scenarios;

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
