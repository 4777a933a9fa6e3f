//! Results of a manual run, written to an anonymous temporary file as they come and read
//! back in token order at the end: the output stays sorted by token id, as it always was,
//! while memory holds 16 bytes per token instead of every result.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// Lines keyed by token id, kept on disk.
pub(super) struct Spool {
    file: File,
    end: u64,
    /// (token id, offset, length) of each line, in arrival order.
    index: Vec<(i32, u64, u32)>,
}

impl Spool {
    /// An empty spool in the system's temporary directory; the file has no name and goes
    /// away with the process.
    pub(super) fn new() -> std::io::Result<Spool> {
        Ok(Spool {
            file: tempfile::tempfile()?,
            end: 0,
            index: Vec::new(),
        })
    }

    /// Keeps `line` for token `token_id`.
    pub(super) fn push(&mut self, token_id: i32, line: &str) -> std::io::Result<()> {
        let length = u32::try_from(line.len()).map_err(std::io::Error::other)?;
        self.file.write_all(line.as_bytes())?;
        self.index.push((token_id, self.end, length));
        self.end += u64::from(length);
        Ok(())
    }

    /// Hands every line to `emit`, by token id (lines of one token in their order), each
    /// with whether it is the first.
    pub(super) fn drain(mut self, mut emit: impl FnMut(&str, bool)) -> std::io::Result<()> {
        self.index.sort_by_key(|(token_id, _, _)| *token_id);
        let mut line = Vec::new();
        for (position, (_, offset, length)) in self.index.iter().enumerate() {
            line.resize(*length as usize, 0);
            self.file.read_exact_at(&mut line, *offset)?;
            emit(&String::from_utf8_lossy(&line), position == 0);
        }
        Ok(())
    }
}
