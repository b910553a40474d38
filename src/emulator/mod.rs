//! A faithful emulator of the Stream Chat export API (placeholder: being written).

use std::net::SocketAddr;

/// Settings of an emulator instance.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The API key clients must send as `api_key`.
    pub api_key: String,
    /// The secret that signs server JWTs and result URLs.
    pub api_secret: String,
}

impl EmulatorConfig {
    /// An emulator with these credentials and default timings, limits and data.
    pub fn new(api_key: impl Into<String>, api_secret: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            api_secret: api_secret.into(),
        }
    }
}

/// A running emulator.
pub struct EmulatorHandle {
    addr: SocketAddr,
}

impl EmulatorHandle {
    /// The address the emulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Stops the emulator.
    pub async fn shutdown(self) {}
    /// The base URL to give a Stream client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts the emulator on `listener` in a background task.
pub async fn spawn(listener: tokio::net::TcpListener, _config: EmulatorConfig) -> std::io::Result<EmulatorHandle> {
    Ok(EmulatorHandle {
        addr: listener.local_addr()?,
    })
}

/// Command-line settings of `stream-export emulator`.
#[derive(clap::Args, Clone, Debug)]
pub struct EmulatorArgs {
    /// The address to listen on.
    #[arg(long, env = "STREAM_EMULATOR_LISTEN", default_value = "127.0.0.1:8900")]
    pub listen: SocketAddr,
    /// The API key clients must send.
    #[arg(long, env = "STREAM_API_KEY")]
    pub api_key: String,
    /// The API secret that signs JWTs and result URLs.
    #[arg(long, env = "STREAM_API_SECRET")]
    pub api_secret: String,
}

/// Runs `stream-export emulator` until Ctrl-C.
pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let _handle = spawn(listener, EmulatorConfig::new(args.api_key, args.api_secret)).await?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
