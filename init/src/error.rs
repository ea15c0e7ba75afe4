use thiserror::Error;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("kernel command line: {0}")]
    Cmdline(#[from] contract::cmdline::CmdlineError),
    #[error("machine config: {0}")]
    Config(#[from] contract::machine::ConfigError),
    #[error("partition table: {0}")]
    Gpt(#[from] crate::disks::TableError),
    #[error("dm-verity: {0}")]
    Dm(#[from] crate::dm::DmError),
    #[error("install: {0}")]
    Install(#[from] crate::install::InstallError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Stop(String),
}

pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, BootError>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, BootError> {
        self.map_err(|source| BootError::Io {
            what: what(),
            source,
        })
    }
}
