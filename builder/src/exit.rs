//! What `cairn` exits with (contract::exit): the first error in the chain
//! that has a class decides.

/// Input the user can fix that no typed error describes (a package the
/// profile names that has no recipe, no repository found): INVALID.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The class of the innermost classified error of the chain: a
/// verification that failed because a file is missing is an I/O error.
pub fn code(e: &anyhow::Error) -> u8 {
    use contract::exit::{FAILED, INVALID, VERIFY};
    let mut code = FAILED;
    for c in e.chain() {
        if c.is::<Invalid>()
            || c.is::<crate::profile::ProfileError>()
            || c.is::<contract::machine::ConfigError>()
            || c.is::<contract::install::SettingsError>()
            || c.downcast_ref::<crate::iso_customize::CustomizeError>()
                .is_some_and(|e| !matches!(e, crate::iso_customize::CustomizeError::Io { .. }))
        {
            code = INVALID;
        } else if c.is::<signing::VerifyError>() {
            code = VERIFY;
        } else if c.is::<installer::Error>() || c.is::<std::io::Error>() {
            code = installer::error::exit_code(c);
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn classes_reach_through_context() {
        let io: anyhow::Error = std::io::Error::other("disk gone").into();
        assert_eq!(
            code(&io.context("writing out/disk.raw")),
            contract::exit::IO
        );
        let bad = anyhow::Error::new(Invalid("unknown package `x`".into()));
        assert_eq!(code(&bad), contract::exit::INVALID);
        let r: Result<(), _> = Err(crate::profile::ProfileError::Flag {
            flag: "--version",
            message: "m".into(),
        });
        assert_eq!(
            code(&r.context("loading").unwrap_err()),
            contract::exit::INVALID
        );
        assert_eq!(code(&anyhow::anyhow!("other")), contract::exit::FAILED);
        // A verification that could not read its file: I/O.
        let missing = signing::VerifyError::Io {
            path: "/x/manifest.json".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(code(&anyhow::Error::new(missing)), contract::exit::IO);
    }
}
