//! The one compressor: zstd at a fixed level, one context per thread.

use super::SquashfsError;

pub struct Codec {
    level: i32,
    ctx: zstd::bulk::Compressor<'static>,
}

impl Codec {
    pub fn new(level: i32) -> Result<Codec, SquashfsError> {
        let ctx = zstd::bulk::Compressor::new(level).map_err(|source| SquashfsError::Compress {
            what: format!("zstd context at level {level}"),
            source,
        })?;
        Ok(Codec { level, ctx })
    }

    /// The compressed form, or `None` when it would not be smaller than the
    /// input (the format then stores the input as is).
    pub fn compress(&mut self, data: &[u8], what: &str) -> Result<Option<Vec<u8>>, SquashfsError> {
        let c = self
            .ctx
            .compress(data)
            .map_err(|source| SquashfsError::Compress {
                what: format!("{what} ({} bytes, level {})", data.len(), self.level),
                source,
            })?;
        Ok((c.len() < data.len()).then_some(c))
    }
}

impl Codec {
    /// A fresh context at the same level.
    pub fn clone_level(&self) -> Result<Codec, SquashfsError> {
        Codec::new(self.level)
    }
}
