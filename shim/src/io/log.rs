//! Log files in the CRI format, one line per line of output:
//! `<RFC 3339 UTC timestamp, nanoseconds> <stdout|stderr> <F|P> <content>`, where `F` closes a
//! line (its newline is not written) and `P` is a part of a line that continues in the next
//! record. The shim's own files rotate by size; a CRI file (the kubelet's) is rotated by the
//! kubelet and reopened here when it is renamed away.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

/// Which output stream a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// One read's worth of a process's output.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub stream: StreamKind,
    pub data: Bytes,
    pub at: DateTime<Utc>,
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at: DateTime<Utc>,
    pub stream: StreamKind,
    /// `F`: the content ended with a newline.
    pub full: bool,
    pub content: Vec<u8>,
}

impl Record {
    /// The output bytes this record stands for.
    pub fn into_bytes(self) -> Vec<u8> {
        let mut data = self.content;
        if self.full {
            data.push(b'\n');
        }
        data
    }
}

pub fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Appends the log lines of `chunk` to `out`.
pub fn format_chunk(chunk: &Chunk, out: &mut Vec<u8>) {
    let ts = timestamp(&chunk.at);
    let mut rest: &[u8] = &chunk.data;
    while !rest.is_empty() {
        let (content, full, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &[][..]),
        };
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
        out.extend_from_slice(chunk.stream.as_str().as_bytes());
        out.extend_from_slice(if full { b" F " } else { b" P " });
        out.extend_from_slice(content);
        out.push(b'\n');
        rest = next;
    }
}

/// Parses one log line (without its trailing newline).
pub fn parse_line(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let at = DateTime::parse_from_rfc3339(ts).ok()?.with_timezone(&Utc);
    let stream = match parts.next()? {
        b"stdout" => StreamKind::Stdout,
        b"stderr" => StreamKind::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let content = parts.next().unwrap_or_default().to_vec();
    Some(Record {
        at,
        stream,
        full,
        content,
    })
}

/// `name.log.N`, the N-th newest rotated file of `path`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// A process's own log file, rotated by size.
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl LogFile {
    /// Starts a fresh log at `path`, removing any earlier one and its rotations (a reused
    /// exec id must not inherit an old process's output).
    pub fn create(path: &Path, max_size: u64, max_files: u32) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        remove_all(path, max_files);
        let file = open_append(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size: 0,
            max_size,
            max_files,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes formatted lines, then rotates if the file outgrew its limit.
    pub fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.file.write_all(lines)?;
        self.size += lines.len() as u64;
        if self.size >= self.max_size {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            // The oldest falls off; readers holding it open keep reading it.
            let _ = std::fs::remove_file(rotated(&self.path, self.max_files));
            for n in (1..self.max_files).rev() {
                match std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Opens every file of the log, oldest first, each with the length to read: a view that
    /// later writes and rotations do not change. Call it under the writer's lock.
    pub fn open_view(&self) -> std::io::Result<Vec<(File, u64)>> {
        let mut files = Vec::new();
        for n in (1..=self.max_files).rev() {
            match File::open(rotated(&self.path, n)) {
                Ok(f) => {
                    let len = f.metadata()?.len();
                    files.push((f, len));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        files.push((File::open(&self.path)?, self.size));
        Ok(files)
    }

    /// Removes the log and its rotations.
    pub fn remove(self) {
        remove_all(&self.path, self.max_files);
    }
}

fn remove_all(path: &Path, max_files: u32) {
    let _ = std::fs::remove_file(path);
    for n in 1..=max_files.max(1) {
        let _ = std::fs::remove_file(rotated(path, n));
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The log file a CRI client asked for. The kubelet rotates it by renaming it and then asking
/// for a reopen; a write finding the path no longer names the open file reopens it, so
/// rotation works whether or not the reopen request reaches the shim.
pub struct CriLog {
    path: PathBuf,
    file: Option<(File, u64)>,
}

impl CriLog {
    pub fn open(path: &Path) -> std::io::Result<CriLog> {
        let mut log = CriLog {
            path: path.to_path_buf(),
            file: None,
        };
        log.reopen()?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&self.path)?;
        let ino = file.metadata()?.ino();
        self.file = Some((file, ino));
        Ok(())
    }

    pub fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let current = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
        match (&self.file, current) {
            (Some((_, ino)), Some(now)) if *ino == now => {}
            _ => self.reopen()?,
        }
        match &mut self.file {
            Some((file, _)) => file.write_all(lines),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &'static [u8]) -> Chunk {
        Chunk {
            stream: StreamKind::Stdout,
            data: Bytes::from_static(data),
            at: DateTime::parse_from_rfc3339("2024-05-01T10:00:00.000000001Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn formats_full_and_partial_lines() {
        let mut out = Vec::new();
        format_chunk(&chunk(b"hello\n\nwor"), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2024-05-01T10:00:00.000000001Z stdout F hello\n\
             2024-05-01T10:00:00.000000001Z stdout F \n\
             2024-05-01T10:00:00.000000001Z stdout P wor\n"
        );
    }

    #[test]
    fn parse_inverts_format() {
        let mut out = Vec::new();
        format_chunk(&chunk(b"a b c\nrest"), &mut out);
        let mut bytes = Vec::new();
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            bytes.extend(parse_line(line).unwrap().into_bytes());
        }
        assert_eq!(bytes, b"a b c\nrest");
        let r = parse_line(b"2024-05-01T10:00:00Z stderr F ").unwrap();
        assert_eq!(r.stream, StreamKind::Stderr);
        assert!(r.full && r.content.is_empty());
        assert!(parse_line(b"garbage").is_none());
        assert!(parse_line(b"2024-05-01T10:00:00Z stdin F x").is_none());
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.log");
        let mut log = LogFile::create(&path, 10, 2).unwrap();
        for i in 0..5 {
            log.write(format!("line-{i}-xxxx\n").as_bytes()).unwrap();
        }
        assert!(rotated(&path, 1).exists());
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        let view = log.open_view().unwrap();
        assert_eq!(view.len(), 3);
        assert_eq!(view[2].1, 0);
        assert_eq!(
            std::fs::read_to_string(rotated(&path, 1)).unwrap(),
            "line-4-xxxx\n"
        );
        log.remove();
        assert!(!path.exists() && !rotated(&path, 1).exists());
    }

    #[test]
    fn cri_log_reopens_after_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods/c/0.log");
        let mut log = CriLog::open(&path).unwrap();
        log.write(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("pods/c/0.log.1")).unwrap();
        log.write(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
    }
}
