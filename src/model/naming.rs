//! The grammar of served models' names and versions, shared by the config (which validates
//! names), the repository (which reads version directories) and the HTTP layer (which looks
//! requests up). Names and versions are looked up in memory, never joined into paths; the
//! grammar still keeps them boring, so that even as a path component a name cannot leave the
//! repository.

/// Why a model name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("{shown:?}... is longer than 64 characters")]
    TooLong { shown: String },
    #[error("{0:?} is not a model name")]
    Dots(&'static str),
    #[error(
        "{shown:?} contains {bad:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
    )]
    Character { shown: String, bad: char },
}

/// 1 to 64 ASCII letters, digits, `.`, `_` or `-`, and never `.` or `..`. Names like `...` or
/// `model..1` stay valid.
pub fn validate_model_name(name: &str) -> Result<(), NameError> {
    let shown = || name.chars().take(64).collect::<String>();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 64 {
        return Err(NameError::TooLong { shown: shown() });
    }
    match name {
        "." => return Err(NameError::Dots(".")),
        ".." => return Err(NameError::Dots("..")),
        _ => {}
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::Character {
            shown: shown(),
            bad,
        });
    }
    Ok(())
}

/// Versions are positive integers without leading zeros: `1`, `2`, `10`, never `01` or `0`.
pub fn parse_version(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > 19 || bytes[0] == b'0' {
        return None;
    }
    if !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        for bad in [
            "", ".", "..", "a/b", "../etc", "a b", "é", "a\0", "%2e%2e", "ｍodel", "a\\b",
        ] {
            assert!(validate_model_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_model_name(&"a".repeat(65)).is_err());
        for good in [
            "...",
            "..my_model",
            "model..1",
            "Digits-2.v1",
            &"a".repeat(64),
        ] {
            assert!(validate_model_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("120"), Some(120));
        assert_eq!(parse_version("18446744073709551615"), None);
        for bad in [
            "", "0", "01", "-1", "1.0", "1e3", "+1", " 1", "latest", "../1",
        ] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }
}
