//! `berth agent enroll`: the host's side of enrollment. Reads the one-time code (from a file
//! or `BERTH_ENROLL_CODE`, so it stays out of argv; `--code` is accepted but visible in
//! `ps`), checks the host's SSH host public key, trades both at `POST /api/v1/enroll` for the
//! host's token, and writes the token 0600 into the state directory atomically (temporary
//! file, fsync, rename, directory fsync), so a crash leaves either no token or the whole one.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::{
    client::{Api, ClientError},
    enroll::{
        code,
        issue::{EnrollRequest, Granted},
        HostKey, HostKeyError, MalformedCode,
    },
};

/// Where the host's SSH host public key is read from unless told otherwise.
pub const DEFAULT_SSH_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key.pub";
/// The token's file name in the state directory.
pub const TOKEN_FILE: &str = "token";

/// Where the code comes from.
#[derive(Debug, Clone)]
pub enum CodeSource {
    /// `--code-file PATH`.
    File(PathBuf),
    /// `BERTH_ENROLL_CODE`.
    Env(String),
    /// `--code CODE` (visible to every user in argv).
    Argv(String),
}

/// What `berth agent enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The berth server.
    pub server: String,
    /// This host's name (`None`: the one the code was made for).
    pub host: Option<String>,
    /// The code.
    pub code: CodeSource,
    /// The SSH host public key file.
    pub ssh_host_key: PathBuf,
    /// Where the token is written (default `<state dir>/token`).
    pub token_file: PathBuf,
    /// Replace a token that is already there (re-enrolling a host).
    pub force: bool,
}

/// Why enrolling failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The code file cannot be read.
    #[error("cannot read the enrollment code from {0}: {1}")]
    ReadCode(PathBuf, std::io::Error),
    /// Not a code.
    #[error(transparent)]
    Code(#[from] MalformedCode),
    /// The key file cannot be read.
    #[error("cannot read the SSH host key {0}: {1}")]
    ReadKey(PathBuf, std::io::Error),
    /// The key is not one ed25519 public key.
    #[error("{0}: {1}")]
    Key(PathBuf, HostKeyError),
    /// A token is there already.
    #[error("{0} exists: this host is enrolled already (use --force to enroll it again with a new code)")]
    Enrolled(PathBuf),
    /// The server refused or is unreachable.
    #[error("enrollment refused: {0}")]
    Server(#[from] ClientError),
    /// The server answered for another host.
    #[error("the server answered for host {0:?}")]
    WrongAnswer(String),
    /// The token cannot be written.
    #[error("cannot write the token to {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// Enrolls this host; returns its name as the server knows it.
pub async fn enroll(options: &EnrollOptions) -> Result<String, EnrollError> {
    if options.token_file.exists() && !options.force {
        return Err(EnrollError::Enrolled(options.token_file.clone()));
    }
    let code_text = match &options.code {
        CodeSource::File(path) => std::fs::read_to_string(path).map_err(|e| EnrollError::ReadCode(path.clone(), e))?,
        CodeSource::Env(code) | CodeSource::Argv(code) => code.clone(),
    };
    code::parse(&code_text)?;
    let path = &options.ssh_host_key;
    let key_line = std::fs::read_to_string(path).map_err(|e| EnrollError::ReadKey(path.clone(), e))?;
    let key = HostKey::parse(&key_line).map_err(|e| EnrollError::Key(path.clone(), e))?;
    let request =
        EnrollRequest { host: options.host.clone(), code: code_text.trim().to_owned(), ssh_host_key: key.to_string() };
    let granted: Granted = Api::new(&options.server, None)?.post("/api/v1/enroll", &request).await?;
    if options.host.as_ref().is_some_and(|h| *h != granted.host) {
        return Err(EnrollError::WrongAnswer(granted.host));
    }
    write_token(&options.token_file, &granted.token).map_err(|e| EnrollError::Write(options.token_file.clone(), e))?;
    Ok(granted.host)
}

/// Writes `token` to `path`, mode 0600, atomically and durably.
fn write_token(path: &Path, token: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or(TOKEN_FILE)));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_token_is_written_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/token");
        write_token(&path, "berth_one").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "berth_one\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        // A stale temporary file from a crash does not stop the next write.
        std::fs::write(dir.path().join("state/.token.tmp"), "junk").unwrap();
        write_token(&path, "berth_two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "berth_two\n");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
    }

    #[tokio::test]
    async fn bad_inputs_fail_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pub");
        std::fs::write(&key, "ssh-rsa AAAAB3NzaC1yc2E root@x\n").unwrap();
        let code = crate::enroll::new_code().unwrap().secret;
        // Port 9 (discard) would refuse: these must fail before connecting.
        let options = |code: CodeSource| EnrollOptions {
            server: "http://127.0.0.1:9".into(),
            host: Some("web-1".into()),
            code,
            ssh_host_key: key.clone(),
            token_file: dir.path().join("token"),
            force: false,
        };
        let e = enroll(&options(CodeSource::Env("nonsense".into()))).await.unwrap_err();
        assert!(matches!(e, EnrollError::Code(_)), "{e}");
        let e = enroll(&options(CodeSource::File(dir.path().join("missing")))).await.unwrap_err();
        assert!(matches!(e, EnrollError::ReadCode(..)), "{e}");
        let e = enroll(&options(CodeSource::Argv(code.clone()))).await.unwrap_err();
        assert!(matches!(e, EnrollError::Key(_, HostKeyError::WrongType)), "{e}");
        std::fs::write(dir.path().join("token"), "berth_x\n").unwrap();
        let e = enroll(&options(CodeSource::Argv(code))).await.unwrap_err();
        assert!(matches!(e, EnrollError::Enrolled(_)), "{e}");
    }
}
