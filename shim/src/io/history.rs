//! Reading a process's log back: every file of the log oldest first, each up to the length it
//! had when the view was taken, as records filtered by time and cut to the last N lines.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Take};

use chrono::{DateTime, Utc};

use super::log::{parse_line, Record};

const READ_BUFFER: usize = 16 << 10;

/// Which part of the log to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    /// Only the last N lines (a trailing unfinished line counts as one).
    pub tail: Option<u64>,
    /// Only records logged at or after this time.
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    fn admits(&self, r: &Record) -> bool {
        self.since.is_none_or(|s| r.at >= s)
    }
}

/// The log's files as they were when the view was taken (see `LogFile::open_view`).
#[derive(Default)]
pub struct History {
    files: Vec<(File, u64)>,
}

impl History {
    pub fn new(files: Vec<(File, u64)>) -> History {
        History { files }
    }

    fn records(&self) -> std::io::Result<Records> {
        let mut files = Vec::with_capacity(self.files.len());
        for (f, len) in &self.files {
            // A duplicate descriptor has its own handle on the file, not its own offset:
            // each pass seeks to the start before it reads.
            files.push((f.try_clone()?, *len));
        }
        files.reverse();
        Ok(Records {
            files,
            current: None,
        })
    }

    /// The records that `filter` selects, in order.
    pub fn select(&self, filter: Filter) -> std::io::Result<Selected> {
        let mut skip_lines = 0;
        if let Some(n) = filter.tail {
            let mut lines = 0u64;
            let mut last_partial = false;
            for r in self.records()? {
                let r = r?;
                if filter.admits(&r) {
                    lines += u64::from(r.full);
                    last_partial = !r.full;
                }
            }
            lines += u64::from(last_partial);
            skip_lines = lines.saturating_sub(n);
        }
        Ok(Selected {
            records: self.records()?,
            filter,
            skip_lines,
        })
    }
}

/// Records of every file in order; unreadable lines (a torn write) are skipped.
pub struct Records {
    /// Files still to read, the next one last.
    files: Vec<(File, u64)>,
    current: Option<BufReader<Take<File>>>,
}

impl Iterator for Records {
    type Item = std::io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Vec::new();
        loop {
            let reader = match &mut self.current {
                Some(r) => r,
                None => {
                    let (mut file, len) = self.files.pop()?;
                    if let Err(e) = file.seek(SeekFrom::Start(0)) {
                        return Some(Err(e));
                    }
                    self.current
                        .insert(BufReader::with_capacity(READ_BUFFER, file.take(len)))
                }
            };
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => self.current = None,
                Ok(_) => {
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    if let Some(r) = parse_line(text) {
                        return Some(Ok(r));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The records a filter selects.
pub struct Selected {
    records: Records,
    filter: Filter,
    skip_lines: u64,
}

impl Iterator for Selected {
    type Item = std::io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let r = match self.records.next()? {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            if !self.filter.admits(&r) {
                continue;
            }
            if self.skip_lines > 0 {
                self.skip_lines -= u64::from(r.full);
                continue;
            }
            return Some(Ok(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::log::{format_chunk, Chunk, LogFile, StreamKind};
    use super::*;

    fn at(s: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2024-05-01T10:00:{s:02}Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    fn write(log: &mut LogFile, s: u32, stream: StreamKind, data: &'static [u8]) {
        let mut out = Vec::new();
        let chunk = Chunk {
            stream,
            data: bytes::Bytes::from_static(data),
            at: at(s),
        };
        format_chunk(&chunk, &mut out);
        log.write(&out).unwrap();
    }

    fn read(h: &History, f: Filter) -> String {
        let mut out = Vec::new();
        for r in h.select(f).unwrap() {
            out.extend(r.unwrap().into_bytes());
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn reads_across_rotations_up_to_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::create(&dir.path().join("x.log"), 120, 5).unwrap();
        for (i, d) in [&b"a\n"[..], b"b\n", b"c\n", b"d\n", b"e"]
            .iter()
            .enumerate()
        {
            let mut out = Vec::new();
            format_chunk(
                &Chunk {
                    stream: StreamKind::Stdout,
                    data: bytes::Bytes::copy_from_slice(d),
                    at: at(i as u32),
                },
                &mut out,
            );
            log.write(&out).unwrap();
        }
        let h = History::new(log.open_view().unwrap());
        write(&mut log, 9, StreamKind::Stdout, b"after the view\n");
        assert_eq!(read(&h, Filter::default()), "a\nb\nc\nd\ne");
        let tail2 = Filter {
            tail: Some(2),
            ..Default::default()
        };
        assert_eq!(read(&h, tail2), "d\ne");
        let since = Filter {
            since: Some(at(2)),
            ..Default::default()
        };
        assert_eq!(read(&h, since), "c\nd\ne");
        let both = Filter {
            tail: Some(10),
            since: Some(at(3)),
        };
        assert_eq!(read(&h, both), "d\ne");
    }

    #[test]
    fn tail_counts_lines_not_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::create(&dir.path().join("x.log"), 1 << 20, 1).unwrap();
        write(&mut log, 1, StreamKind::Stdout, b"one\ntw");
        write(&mut log, 2, StreamKind::Stdout, b"o\nthree\n");
        write(&mut log, 3, StreamKind::Stderr, b"err\n");
        let h = History::new(log.open_view().unwrap());
        let tail = |n| Filter {
            tail: Some(n),
            since: None,
        };
        assert_eq!(read(&h, tail(2)), "three\nerr\n");
        assert_eq!(read(&h, tail(3)), "two\nthree\nerr\n");
        assert_eq!(read(&h, tail(0)), "");
        assert_eq!(read(&h, tail(99)), "one\ntwo\nthree\nerr\n");
    }
}
