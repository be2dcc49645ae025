//! berth's own NAR grammar: an iterative streaming reader (for verification) and a writer
//! (for dumping), with no recursion, so a hostile archive cannot overflow the stack of the
//! blocking thread that verifies it.
//!
//! Why not `nix-archive`: its decoder and encoder refuse any node inside 64 directories
//! (`MAX_DEPTH`, a private constant that also bounds their recursion). Nix itself has no
//! such limit, so valid store paths deeper than that could not be uploaded. This reader
//! makes the same checks as `nix-archive` (magic, keywords, zero padding, names non-empty,
//! without `/` or NUL, not `.` or `..`, strictly sorted and so unique, the `executable`
//! marker, bounded symlink targets, contents of their declared size, no truncation, no
//! trailing bytes), and bounds nesting and memory instead:
//!
//! - at most [`MAX_NAR_DEPTH`] directories around any node;
//! - names at most [`MAX_NAME_BYTES`], the names held for the open directories (one per
//!   level, to check the order of the next sibling) together at most [`MAX_OPEN_NAME_BYTES`];
//! - symlink targets at most [`MAX_TARGET_BYTES`] (one buffer).
//!
//! A verifier's memory is therefore a few MiB at most, whatever the archive.

use std::io::{self, Read, Write};

/// The most directories a node may sit in (the root directory counts). Nix dumps with full
/// paths, so what it can store is bounded by `PATH_MAX` (4,096 bytes: some 2,000 levels of
/// one-letter names); this leaves room beyond that, and refuses a nesting bomb cleanly.
pub const MAX_NAR_DEPTH: usize = 4096;
/// The longest entry name (file systems allow 255 bytes; this is generous).
pub const MAX_NAME_BYTES: usize = 64 * 1024;
/// The names held at once for the open directories, together.
pub const MAX_OPEN_NAME_BYTES: usize = 1024 * 1024;
/// The longest symlink target (as `nix-archive` allowed).
pub const MAX_TARGET_BYTES: usize = 1024 * 1024;

const MAGIC: &[u8] = b"nix-archive-1";
/// No keyword of the grammar is longer.
const MAX_KEYWORD: usize = 16;

/// Why bytes are not a NAR, or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// The stream does not start with `nix-archive-1`.
    #[error("not a NAR (no nix-archive-1 magic)")]
    BadMagic,
    /// A keyword of the grammar was expected.
    #[error("expected {expected}, found {found}")]
    UnexpectedToken {
        /// What the grammar wants here.
        expected: &'static str,
        /// What came (clipped, lossy).
        found: String,
    },
    /// A string's padding is not zeros.
    #[error("non-zero padding")]
    BadPadding,
    /// The stream ended inside the archive.
    #[error("truncated archive")]
    Truncated,
    /// A name that no file system entry can have.
    #[error("invalid entry name {0:?}")]
    InvalidName(String),
    /// Entries out of order, or the same name twice.
    #[error("entry {name:?} does not sort after {previous:?} (entries must be sorted and unique)")]
    Unsorted {
        /// This entry.
        name: String,
        /// The one before it.
        previous: String,
    },
    /// Nesting past [`MAX_NAR_DEPTH`].
    #[error("directories nested more than {MAX_NAR_DEPTH} deep (berth's bound)")]
    TooDeep,
    /// A name, the open names together, or a symlink target over its bound.
    #[error("{what} of {size} bytes is over the bound of {limit} bytes")]
    TooLong {
        /// Which string.
        what: &'static str,
        /// Its size (or the total).
        size: u64,
        /// The bound.
        limit: usize,
    },
    /// Bytes after the archive's end.
    #[error("trailing bytes after the archive")]
    TrailingBytes,
    /// Reading (or, when writing, the sink) failed.
    #[error("{0}")]
    Io(io::Error),
}

fn io_error(e: io::Error) -> NarError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        NarError::Truncated
    } else {
        NarError::Io(e)
    }
}

/// A short, lossy, character-safe rendering of bytes for messages.
fn describe(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(64).collect()
}

/// What [`read_nar`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NarShape {
    /// Regular files, symlinks and directories.
    pub nodes: u64,
    /// The deepest nesting seen (directories around a node).
    pub depth: usize,
}

/// One open directory: where its last child's name starts in the name buffer.
struct Open {
    start: usize,
    has_previous: bool,
}

/// Token reader over `R`.
struct Tokens<R> {
    r: R,
}

impl<R: Read> Tokens<R> {
    fn len(&mut self) -> Result<u64, NarError> {
        let mut b = [0; 8];
        self.r.read_exact(&mut b).map_err(io_error)?;
        Ok(u64::from_le_bytes(b))
    }

    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let pad = ((8 - len % 8) % 8) as usize;
        let mut b = [0; 8];
        let b = b.get_mut(..pad).unwrap_or_default();
        self.r.read_exact(b).map_err(io_error)?;
        if b.iter().any(|&x| x != 0) {
            return Err(NarError::BadPadding);
        }
        Ok(())
    }

    /// A short token (a keyword), or an error naming `expected` if it is longer.
    fn keyword(&mut self, expected: &'static str) -> Result<([u8; MAX_KEYWORD], usize), NarError> {
        let len = self.len()?;
        if len > MAX_KEYWORD as u64 {
            return Err(NarError::UnexpectedToken { expected, found: format!("a {len}-byte string") });
        }
        let mut b = [0; MAX_KEYWORD];
        let n = len as usize;
        self.r.read_exact(b.get_mut(..n).unwrap_or_default()).map_err(io_error)?;
        self.padding(len)?;
        Ok((b, n))
    }

    fn expect(&mut self, expected: &'static str) -> Result<(), NarError> {
        let (b, n) = self.keyword(expected)?;
        let got = b.get(..n).unwrap_or_default();
        if got != expected.as_bytes() {
            return Err(NarError::UnexpectedToken { expected, found: describe(got) });
        }
        Ok(())
    }

    /// A string of at most `limit` bytes, appended to `buf`.
    fn string_into(&mut self, buf: &mut Vec<u8>, what: &'static str, limit: usize) -> Result<(), NarError> {
        let len = self.len()?;
        if len > limit as u64 {
            return Err(NarError::TooLong { what, size: len, limit });
        }
        let got = (&mut self.r).take(len).read_to_end(buf).map_err(io_error)?;
        if got as u64 != len {
            return Err(NarError::Truncated);
        }
        self.padding(len)
    }

    /// A regular file's contents, streamed into `sink`.
    fn contents(&mut self, sink: &mut impl Write) -> Result<u64, NarError> {
        let len = self.len()?;
        let copied = io::copy(&mut (&mut self.r).take(len), sink).map_err(io_error)?;
        if copied != len {
            return Err(NarError::Truncated);
        }
        self.padding(len)?;
        Ok(len)
    }
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Reads one NAR from `r` to its end, checking the whole grammar without recursion; the
/// contents of regular files go to `contents` (e.g. `io::sink()`). Anything after the
/// archive is an error.
pub fn read_nar(r: impl Read, contents: &mut impl Write) -> Result<NarShape, NarError> {
    let mut p = Parser { t: Tokens { r }, open: Vec::new(), names: Vec::new(), target: Vec::new() };
    p.magic()?;
    let mut shape = NarShape::default();
    'node: loop {
        shape.nodes += 1;
        shape.depth = shape.depth.max(p.open.len());
        let mut leaf = !p.node(contents)?;
        // After a node: close the entry around it, then read the next entry or the end of
        // the directory at the top of the stack (closing the entry around that, in turn).
        while !p.open.is_empty() {
            if leaf {
                p.t.expect(")")?;
            }
            if p.next_entry()? {
                continue 'node;
            }
            leaf = true;
        }
        break;
    }
    p.trailing()?;
    Ok(shape)
}

/// The reader's state: the tokens, and one [`Open`] per directory being read, whose last
/// entry names are held in `names`.
struct Parser<R> {
    t: Tokens<R>,
    open: Vec<Open>,
    names: Vec<u8>,
    target: Vec<u8>,
}

impl<R: Read> Parser<R> {
    fn magic(&mut self) -> Result<(), NarError> {
        // Read errors stay read errors (a decompressor's refusal among them); anything else
        // wrong in the first token is a missing magic.
        let not_magic = |e| match e {
            NarError::Io(e) => NarError::Io(e),
            _ => NarError::BadMagic,
        };
        let len = self.t.len().map_err(not_magic)?;
        if len != MAGIC.len() as u64 {
            return Err(NarError::BadMagic);
        }
        let mut magic = [0; 13];
        self.t.r.read_exact(&mut magic).map_err(|e| not_magic(io_error(e)))?;
        self.t.padding(len).map_err(not_magic)?;
        if magic != MAGIC {
            return Err(NarError::BadMagic);
        }
        Ok(())
    }

    /// One node: a leaf is read whole; a directory is opened. True for a directory.
    fn node(&mut self, contents: &mut impl Write) -> Result<bool, NarError> {
        let t = &mut self.t;
        t.expect("(")?;
        t.expect("type")?;
        let (kind, n) = t.keyword("regular, symlink or directory")?;
        match kind.get(..n).unwrap_or_default() {
            b"regular" => {
                let (tok, n) = t.keyword("executable or contents")?;
                match tok.get(..n).unwrap_or_default() {
                    b"executable" => {
                        t.expect("")?;
                        t.expect("contents")?;
                    }
                    b"contents" => {}
                    other => return Err(NarError::UnexpectedToken { expected: "contents", found: describe(other) }),
                }
                t.contents(contents)?;
                t.expect(")")?;
                Ok(false)
            }
            b"symlink" => {
                t.expect("target")?;
                self.target.clear();
                t.string_into(&mut self.target, "a symlink target", MAX_TARGET_BYTES)?;
                t.expect(")")?;
                Ok(false)
            }
            b"directory" => {
                self.open.push(Open { start: self.names.len(), has_previous: false });
                Ok(true)
            }
            other => {
                Err(NarError::UnexpectedToken { expected: "regular, symlink or directory", found: describe(other) })
            }
        }
    }

    /// In the directory at the top: true when an entry follows (its name checked, its node
    /// next), false when the directory ends (it is closed).
    fn next_entry(&mut self) -> Result<bool, NarError> {
        let Some(top) = self.open.last_mut() else { return Ok(false) };
        let (tok, n) = self.t.keyword("entry or )")?;
        match tok.get(..n).unwrap_or_default() {
            b")" => {
                self.names.truncate(top.start);
                self.open.pop();
                Ok(false)
            }
            b"entry" => {
                self.t.expect("(")?;
                self.t.expect("name")?;
                let mut name = Vec::new();
                self.t.string_into(&mut name, "an entry name", MAX_NAME_BYTES)?;
                if !valid_name(&name) {
                    return Err(NarError::InvalidName(describe(&name)));
                }
                let previous = self.names.get(top.start..).unwrap_or_default();
                if top.has_previous && name.as_slice() <= previous {
                    return Err(NarError::Unsorted { name: describe(&name), previous: describe(previous) });
                }
                top.has_previous = true;
                self.names.truncate(top.start);
                self.names.extend_from_slice(&name);
                if self.names.len() > MAX_OPEN_NAME_BYTES {
                    let size = self.names.len() as u64;
                    return Err(NarError::TooLong {
                        what: "the names of the open directories",
                        size,
                        limit: MAX_OPEN_NAME_BYTES,
                    });
                }
                if self.open.len() > MAX_NAR_DEPTH {
                    return Err(NarError::TooDeep);
                }
                self.t.expect("node")?;
                Ok(true)
            }
            other => Err(NarError::UnexpectedToken { expected: "entry or )", found: describe(other) }),
        }
    }

    /// Nothing may follow the archive.
    fn trailing(&mut self) -> Result<(), NarError> {
        let mut byte = [0];
        loop {
            match self.t.r.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(NarError::TrailingBytes),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NarError::Io(e)),
            }
        }
    }
}

/// Writes a NAR token by token; the caller walks the tree (in sorted order) and calls these
/// in the grammar's order. Nothing recurses, so depth costs nothing but the caller's state.
pub struct NarWriter<W> {
    w: W,
}

impl<W: Write> NarWriter<W> {
    /// Starts an archive (writes the magic).
    pub fn new(mut w: W) -> io::Result<Self> {
        token(&mut w, MAGIC)?;
        Ok(Self { w })
    }

    fn tokens(&mut self, tokens: &[&[u8]]) -> io::Result<()> {
        tokens.iter().try_for_each(|t| token(&mut self.w, t))
    }

    /// Opens a directory node.
    pub fn directory(&mut self) -> io::Result<()> {
        self.tokens(&[b"(", b"type", b"directory"])
    }

    /// Opens an entry of the current directory; its node follows.
    pub fn entry(&mut self, name: &[u8]) -> io::Result<()> {
        if !valid_name(name) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("invalid entry name {:?}", describe(name))));
        }
        self.tokens(&[b"entry", b"(", b"name", name, b"node"])
    }

    /// Closes an entry, or a directory node: both end with `)`.
    pub fn close(&mut self) -> io::Result<()> {
        self.tokens(&[b")"])
    }

    /// A symlink node.
    pub fn symlink(&mut self, target: &[u8]) -> io::Result<()> {
        self.tokens(&[b"(", b"type", b"symlink", b"target", target, b")"])
    }

    /// A regular file node of exactly `size` bytes read from `contents`; fewer or more is an
    /// error (the file changed while it was dumped).
    pub fn regular(&mut self, executable: bool, size: u64, contents: impl Read) -> io::Result<()> {
        self.tokens(&[b"(", b"type", b"regular"])?;
        if executable {
            self.tokens(&[b"executable", b""])?;
        }
        self.tokens(&[b"contents"])?;
        self.w.write_all(&size.to_le_bytes())?;
        let mut contents = contents;
        let copied = io::copy(&mut (&mut contents).take(size), &mut self.w)?;
        let mut more = [0];
        if copied != size || contents.read(&mut more)? != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a file changed size while it was read"));
        }
        self.w.write_all(&[0; 8][..((8 - size % 8) % 8) as usize])?;
        self.close()
    }

    /// The sink, once the archive is complete.
    pub fn into_inner(self) -> W {
        self.w
    }
}

fn token(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(bytes)?;
    w.write_all(&[0; 8][..(8 - bytes.len() % 8) % 8])
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
