//! Peer settings, loadable from TOML or YAML through serde.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use teleport_core::{CodecId, CodecRegistry, SessionConfig};

/// The transport a peer listens on and dials with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// TCP over IPv4 or IPv6, whichever the address is.
    #[default]
    Tcp,
    /// TCP over IPv4 only.
    Tcp4,
    /// TCP over IPv6 only.
    Tcp6,
    /// Unix stream socket; the address is a filesystem path.
    Unix,
    /// Unix seqpacket socket (`SOCK_SEQPACKET`); the address is a
    /// filesystem path. The byte stream travels in messages of at most
    /// 64 KiB (see `net::SEQPACKET_MESSAGE_MAX`).
    Unixpacket,
}

/// TLS for a listener, from PEM files (feature `tls`; see `tls::TlsAcceptor`).
///
/// ```toml
/// [listen_tls]
/// cert = "server.pem"        # the certificate chain
/// key = "server.key"
/// client_ca = "clients.pem"  # ask clients for certificates signed by it
/// handshake_timeout = "5s"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenSettings {
    /// This server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Clients must present a certificate signed by a CA of this bundle
    /// (mutual TLS); unset: clients are not asked.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a client without a certificate is let in too.
    #[serde(default)]
    pub client_cert_optional: bool,
    /// How long a handshake may take.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

/// TLS for dialing, from PEM files (feature `tls`; see `tls::TlsConnector`).
///
/// ```toml
/// [dial_tls]
/// ca = "ca.pem"                # the CAs that sign servers' certificates
/// cert = "client.pem"          # mutual TLS: this side's chain and key
/// key = "client.key"
/// server_name = "api.internal" # else the host of the dialed address
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsDialSettings {
    /// The CA bundle (PEM) a server's certificate must be signed by.
    pub ca: PathBuf,
    /// This side's certificate chain (PEM), for servers that ask for one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry; unset: the host of
    /// the dialed address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// How long a handshake may take.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A peer's settings; every field has a default, so `{}` is a valid
/// config. Durations are written like `"5s"` or `"150ms"`.
///
/// ```
/// let cfg: teleport_peer::PeerConfig = toml::from_str(r#"
///     listen_address = "127.0.0.1:9090"
///     default_pull_timeout = "5s"
///     slow_call_threshold = "200ms"
///     default_body_codec = "protobuf"
///     redial_times = 3
/// "#).unwrap();
/// assert_eq!(cfg.redial_times, 3);
/// assert_eq!(cfg.default_pull_timeout, Some(std::time::Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// Where `listen` binds (`host:port`, or a path for unix sockets).
    pub listen_address: String,
    /// The transport.
    pub network: Network,
    /// SO_RCVBUF, when set.
    pub read_buffer_size: Option<usize>,
    /// SO_SNDBUF, when set.
    pub write_buffer_size: Option<usize>,
    /// Largest frame accepted or sent, in bytes (also every transfer
    /// filter's output). Go's default is 4 GiB − 1; ours is 16 MiB (raise it
    /// on both sides to exchange larger frames).
    pub read_limit: usize,
    /// Timeout of a pull that names none; unset: wait for the reply or the
    /// connection's end, as Go v3 does.
    #[serde(with = "humantime_serde")]
    pub default_pull_timeout: Option<Duration>,
    /// How long a dial may take to connect (each re-dial too); unset: as
    /// long as the system's connect takes. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Option<Duration>,
    /// How many times a dialed session re-dials after its connection broke
    /// (0: never). It re-dials in the background as soon as the break is
    /// seen, with a wait that grows from `redial_interval` between tries,
    /// so a client that only receives pushes reconnects too; calls made
    /// meanwhile wait for the new connection. The count starts afresh once
    /// a re-dial succeeds.
    pub redial_times: u32,
    /// Wait before the first re-dial; doubled after each failure.
    #[serde(with = "humantime_serde")]
    pub redial_interval: Duration,
    /// Calls slower than this are logged as warnings.
    #[serde(with = "humantime_serde")]
    pub slow_call_threshold: Option<Duration>,
    /// Log packet bodies.
    pub print_body: bool,
    /// Log each call's duration.
    pub count_time: bool,
    /// The codec of bodies that name none: `json`, `protobuf` or `string`.
    pub default_body_codec: String,
    /// Close a session when nothing was read for this long while no call
    /// was in flight (and it was not itself declining input). Unset by
    /// default, as in Go: an idle client that only waits for pushes is a
    /// normal thing; set it (or use the heartbeat plugin) to reap idle
    /// connections.
    #[serde(with = "humantime_serde")]
    pub default_session_idle_timeout: Option<Duration>,
    /// Close a session whose peer takes longer than this to send the rest
    /// of a frame it started (a slow-drip guard; default 30 s, unset: no
    /// guard). Time during which the session itself declines input does not
    /// count.
    #[serde(with = "humantime_serde")]
    pub frame_timeout: Option<Duration>,
    /// How long a graceful session close waits for pending calls.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// Most of our pulls awaiting replies on one session.
    pub max_pending_pulls: usize,
    /// Most of the peer's pulls being handled at once on one session; over
    /// it the session stops reading until a handler finishes (backpressure
    /// that reaches the peer through TCP).
    pub max_incoming_pulls: usize,
    /// Most bytes of the peer's pulls being handled at once on one session
    /// (default 32 MiB); over it, as over `max_incoming_pulls`, the session
    /// stops reading. A single pull larger than this is still taken.
    pub max_incoming_bytes: usize,
    /// Most bytes queued for writing on one session.
    pub max_queued_bytes: usize,
    /// Serve TLS on the listen address (feature `tls`).
    pub listen_tls: Option<TlsListenSettings>,
    /// Dial with TLS (feature `tls`).
    pub dial_tls: Option<TlsDialSettings>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        let s = SessionConfig::default();
        PeerConfig {
            listen_address: "127.0.0.1:0".into(),
            network: Network::Tcp,
            read_buffer_size: None,
            write_buffer_size: None,
            read_limit: s.read_limit,
            default_pull_timeout: None,
            dial_timeout: Some(Duration::from_secs(10)),
            redial_times: 0,
            redial_interval: Duration::from_millis(100),
            slow_call_threshold: None,
            print_body: false,
            count_time: false,
            default_body_codec: "json".into(),
            default_session_idle_timeout: s.idle_timeout,
            frame_timeout: s.frame_timeout,
            close_timeout: s.close_timeout,
            max_pending_pulls: s.max_pending_pulls,
            max_incoming_pulls: s.max_incoming_pulls,
            max_incoming_bytes: s.max_incoming_bytes,
            max_queued_bytes: s.max_queued_bytes,
            listen_tls: None,
            dial_tls: None,
        }
    }
}

/// Why a config file could not be loaded.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or names an unknown setting.
    #[error("{path}: {source}")]
    Toml {
        /// The file (empty for a string).
        path: PathBuf,
        /// What was wrong, with its line.
        source: Box<toml::de::Error>,
    },
    /// The YAML is malformed or names an unknown setting.
    #[error("{path}: {source}")]
    Yaml {
        /// The file (empty for a string).
        path: PathBuf,
        /// What was wrong, with its line.
        source: serde_yaml_ng::Error,
    },
    /// The file's extension names no format this reads.
    #[error("{path}: not .toml, .yaml or .yml")]
    Format {
        /// The file.
        path: PathBuf,
    },
}

impl PeerConfig {
    /// Reads a config file: TOML for `.toml`, YAML for `.yaml` or `.yml`.
    /// Every setting has a default, and an unknown one is an error that
    /// names it.
    ///
    /// ```no_run
    /// let cfg = teleport_peer::PeerConfig::from_file("peer.toml")?;
    /// # Ok::<(), teleport_peer::ConfigError>(())
    /// ```
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<PeerConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let named = |e: ConfigError| match e {
            ConfigError::Toml { source, .. } => ConfigError::Toml {
                path: path.to_path_buf(),
                source,
            },
            ConfigError::Yaml { source, .. } => ConfigError::Yaml {
                path: path.to_path_buf(),
                source,
            },
            e => e,
        };
        match ext {
            "toml" => PeerConfig::from_toml(&text).map_err(named),
            "yaml" | "yml" => PeerConfig::from_yaml(&text).map_err(named),
            _ => Err(ConfigError::Format {
                path: path.to_path_buf(),
            }),
        }
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<PeerConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: PathBuf::new(),
            source: Box::new(e),
        })
    }

    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<PeerConfig, ConfigError> {
        serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Yaml {
            path: PathBuf::new(),
            source,
        })
    }

    /// The core session settings these stand for.
    pub fn session_config(&self, codecs: &CodecRegistry) -> std::io::Result<SessionConfig> {
        let default_codec = match self.default_body_codec.as_str() {
            "" => CodecId::JSON,
            name => codecs.by_name(name).map(|c| c.id()).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("default_body_codec: {e}"),
                )
            })?,
        };
        Ok(SessionConfig {
            default_timeout: self.default_pull_timeout,
            max_pending_pulls: self.max_pending_pulls,
            max_incoming_pulls: self.max_incoming_pulls,
            max_incoming_bytes: self.max_incoming_bytes,
            max_queued_bytes: self.max_queued_bytes,
            idle_timeout: self.default_session_idle_timeout,
            frame_timeout: self.frame_timeout,
            close_timeout: self.close_timeout,
            slow_threshold: self.slow_call_threshold,
            count_time: self.count_time,
            print_body: self.print_body,
            default_codec,
            read_limit: self.read_limit,
            inline_decode_limit: crate::driver::INLINE_DECODE_LIMIT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_reaches_the_session_settings() {
        let cfg: PeerConfig = toml::from_str(
            r#"
            max_incoming_pulls = 7
            max_pending_pulls = 8
            frame_timeout = "3s"
            default_body_codec = "string"
            "#,
        )
        .unwrap();
        let s = cfg.session_config(&CodecRegistry::default()).unwrap();
        assert_eq!((s.max_incoming_pulls, s.max_pending_pulls), (7, 8));
        assert_eq!(s.frame_timeout, Some(Duration::from_secs(3)));
        assert_eq!(s.default_codec, CodecId::STRING);
        let bad = PeerConfig {
            default_body_codec: "nope".into(),
            ..PeerConfig::default()
        };
        assert!(bad.session_config(&CodecRegistry::default()).is_err());
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn files_are_read_by_their_extension_and_errors_name_the_setting() {
        let dir = std::env::temp_dir().join(format!("tp-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("peer.toml");
        std::fs::write(&toml_path, "redial_times = 4\nframe_timeout = \"2s\"\n").unwrap();
        let c = PeerConfig::from_file(&toml_path).unwrap();
        assert_eq!(
            (c.redial_times, c.frame_timeout),
            (4, Some(Duration::from_secs(2)))
        );
        let yaml_path = dir.join("peer.yaml");
        std::fs::write(&yaml_path, "redial_times: 5\nprint_body: true\n").unwrap();
        let c = PeerConfig::from_file(&yaml_path).unwrap();
        assert_eq!((c.redial_times, c.print_body), (5, true));
        std::fs::write(&toml_path, "redial_tims = 4\n").unwrap();
        let e = PeerConfig::from_file(&toml_path).unwrap_err().to_string();
        assert!(e.contains("redial_tims") && e.contains("peer.toml"), "{e}");
        let e = PeerConfig::from_file(dir.join("peer.ini")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        std::fs::write(dir.join("peer.ini"), "").unwrap();
        let e = PeerConfig::from_file(dir.join("peer.ini")).unwrap_err();
        assert!(matches!(e, ConfigError::Format { .. }), "{e}");
        let bad_codec = PeerConfig::from_toml("default_body_codec = \"xml\"").unwrap();
        let e = bad_codec
            .session_config(&CodecRegistry::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("default_body_codec"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
