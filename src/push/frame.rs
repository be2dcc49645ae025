//! PURE: the framing of a `POST /api/v1/paths` body (`application/x-berth-path`).
//!
//! ```text
//! u32 big-endian L | L bytes of PathClaim JSON | zstd-compressed NAR, to the end of the body
//! ```
//!
//! The claim comes first so the server can refuse a path (bad claim, missing references)
//! before reading any of the NAR, and the NAR needs no length because it runs to the end.

use bytes::{BufMut, Bytes, BytesMut};

use crate::nixfmt::PathClaim;

/// The `Content-Type` of an upload body.
pub const CONTENT_TYPE: &str = "application/x-berth-path";

/// Why a claim could not be framed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The claim could not be serialised.
    #[error("cannot encode the claim for {path}: {reason}")]
    Encode {
        /// The store path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The bytes that precede the compressed NAR: the length prefix and the claim's JSON.
pub fn header(claim: &PathClaim) -> Result<Bytes, FrameError> {
    let encode = |reason: String| FrameError::Encode { path: claim.path.clone(), reason };
    let json = serde_json::to_vec(claim).map_err(|e| encode(e.to_string()))?;
    let len = u32::try_from(json.len()).map_err(|_| encode("claim over the 4 GiB frame limit".to_owned()))?;
    let mut out = BytesMut::with_capacity(4 + json.len());
    out.put_u32(len);
    out.put_slice(&json);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_length_prefixed_camel_case_json() {
        let claim = PathClaim {
            path: "/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt".to_owned(),
            nar_hash: "sha256-ubVRronxn3CqaVFfpcSRAFQ0gJNK04cipGvSI/KalEU=".to_owned(),
            nar_size: 120,
            references: vec![],
            deriver: None,
            ca: Some("text:sha256:02s4b20l4ii8l4hjc5y998p9y5b0kzbq1dkdvsk4jgj38cgid4cz".to_owned()),
            signatures: vec![],
        };
        let bytes = header(&claim).unwrap();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        let json = std::str::from_utf8(&bytes[4..]).unwrap();
        assert_eq!(
            json,
            r#"{"path":"/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt","narHash":"sha256-ubVRronxn3CqaVFfpcSRAFQ0gJNK04cipGvSI/KalEU=","narSize":120,"references":[],"deriver":null,"ca":"text:sha256:02s4b20l4ii8l4hjc5y998p9y5b0kzbq1dkdvsk4jgj38cgid4cz","signatures":[]}"#
        );
        let back: PathClaim = serde_json::from_str(json).unwrap();
        assert_eq!(back, claim);
    }
}
