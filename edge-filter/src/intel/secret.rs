//! Credentials read from files named in the configuration (`api_key_file`,
//! `password_file`, `token_file`): never inline in the config, never in
//! logs or errors.
//!
//! A credential file must be a regular file owned by root or the agent's
//! user that neither group nor others may read or write: a secret others
//! can read is no longer one, and one others can write lets them choose
//! what the agent authenticates as. Errors name the file, the config key
//! and the fix, never the content.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// Largest credential file read.
pub const MAX_SECRET_LEN: u64 = 4096;

/// What a credential file must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// A key or token: one line of printable ASCII without spaces.
    Token,
    /// A password: one line without control characters (spaces allowed
    /// inside; leading and trailing whitespace is not part of it).
    Password,
}

/// Read the credential in `path`, named `key` in the configuration
/// (`api_key_file`, ...). `fill` says what to put in an empty file.
pub fn read_secret(path: &Path, key: &str, kind: SecretKind, fill: &str) -> Result<String, String> {
    let shown = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| format!("{key} {shown}: {e}"))?;
    let m = file.metadata().map_err(|e| format!("{key} {shown}: {e}"))?;
    if !m.is_file() {
        return Err(format!("{key} {shown} is not a regular file"));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{key} {shown} has mode {mode:04o}: group or others may access it; make it private (chmod 600 {shown})"
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != 0 && m.uid() != me {
        return Err(format!(
            "{key} {shown} is owned by uid {}: it must be owned by root or the agent's user (uid {me})",
            m.uid()
        ));
    }
    let mut text = String::new();
    file.by_ref()
        .take(MAX_SECRET_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{key} {shown}: {e}"))?;
    if text.len() as u64 > MAX_SECRET_LEN {
        return Err(format!(
            "{key} {shown} is larger than {MAX_SECRET_LEN} bytes: not a credential"
        ));
    }
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{key} {shown} is empty (put {fill} in it)"));
    }
    let one_line = secret.lines().count() == 1;
    let ok = match kind {
        SecretKind::Token => one_line && secret.bytes().all(|b| b.is_ascii_graphic()),
        SecretKind::Password => one_line && !secret.chars().any(char::is_control),
    };
    if !ok {
        let what = match kind {
            SecretKind::Token => "a key (one line of printable ASCII without spaces)",
            SecretKind::Password => "a password (one line without control characters)",
        };
        return Err(format!("{key} {shown} does not hold {what}"));
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn passwords_may_hold_spaces_tokens_may_not() {
        let dir = std::env::temp_dir().join(format!("ef-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pw");
        std::fs::write(&p, "correct horse battery\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_secret(&p, "password_file", SecretKind::Password, "the password").unwrap(),
            "correct horse battery"
        );
        let e = read_secret(&p, "token_file", SecretKind::Token, "the token").unwrap_err();
        assert!(
            e.starts_with("token_file ") && e.contains("does not hold a key"),
            "{e}"
        );
        assert!(!e.contains("horse"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_secret(&p, "password_file", SecretKind::Password, "x").unwrap_err();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
