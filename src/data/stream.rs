//! The stream of records a run trains on: a prepared JSONL file read in
//! blocks, each block shuffled from the seed, split into training and
//! validation by a hash of the record, with a position that a checkpoint
//! saves so a resumed run continues with the next record.
//!
//! Memory is one block of records, whatever the size of the file.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::source::Record;
use crate::error::{Error, Result};

/// Which side of the split a stream yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    Train,
    Validation,
}

/// Whether a record belongs to the validation split: a hash of its content
/// and the seed, so the split never overlaps and never depends on the order
/// of the file.
pub fn is_validation(record: &Record, seed: u64, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    record.hash(&mut h);
    (h.finish() % 1_000_000) < (fraction * 1_000_000.0) as u64
}

/// Where a stream is: enough to continue exactly there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Full passes over the file completed.
    pub epoch: u64,
    /// Byte offset of the current block in the file.
    pub block_offset: u64,
    /// The current block's number within the epoch (it seeds the shuffle).
    pub block_index: u64,
    /// Records of the current (shuffled) block already handed out.
    pub in_block: u64,
}

/// Options of a record stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub seed: u64,
    pub validation_fraction: f64,
    pub split: Split,
    /// Records shuffled together.
    pub block_size: usize,
    /// Start again at the end of the file (training) or stop (evaluation).
    pub repeat: bool,
    pub shuffle: bool,
}

pub struct RecordStream {
    path: PathBuf,
    opts: StreamOptions,
    reader: BufReader<File>,
    pos: StreamPosition,
    block: Vec<Record>,
    /// Offset just past the current block.
    next_offset: u64,
    line: u64,
}

impl RecordStream {
    pub fn open(path: &Path, opts: StreamOptions, pos: StreamPosition) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut s = Self {
            path: path.to_path_buf(),
            opts,
            reader: BufReader::new(file),
            pos,
            block: Vec::new(),
            next_offset: 0,
            line: 0,
        };
        s.load_block()?;
        Ok(s)
    }

    pub fn position(&self) -> StreamPosition {
        self.pos
    }

    /// Reads the block at `pos.block_offset`, keeps this split's records
    /// and shuffles them with a seed from the run seed, epoch and block.
    fn load_block(&mut self) -> Result<()> {
        self.reader
            .seek(SeekFrom::Start(self.pos.block_offset))
            .map_err(|e| Error::io(&self.path, e))?;
        self.block.clear();
        let mut offset = self.pos.block_offset;
        let mut line = String::new();
        let mut read = 0;
        while read < self.opts.block_size {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| Error::io(&self.path, e))?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            self.line += 1;
            read += 1;
            if line.trim().is_empty() {
                continue;
            }
            let rec: Record = serde_json::from_str(&line).map_err(|e| {
                Error::Invalid(format!(
                    "{}: a prepared record is not valid ({e}); run `t5-tui data prepare` again",
                    self.path.display()
                ))
            })?;
            let val = is_validation(&rec, self.opts.seed, self.opts.validation_fraction);
            if val == (self.opts.split == Split::Validation) {
                self.block.push(rec);
            }
        }
        self.next_offset = offset;
        if self.opts.shuffle {
            let seed = self
                .opts
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(self.pos.epoch.wrapping_mul(1_000_003))
                .wrapping_add(self.pos.block_index);
            self.block.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        Ok(())
    }

    /// The next record; `None` at the end for a stream that does not
    /// repeat. A file with no record of this split is an error for a
    /// repeating stream, which would otherwise spin forever.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        let mut empty_passes = 0;
        loop {
            if let Some(rec) = self.block.get(self.pos.in_block as usize) {
                self.pos.in_block += 1;
                return Ok(Some(rec.clone()));
            }
            // The block is used up: the next one, or the next epoch.
            let at_end = self.next_offset == self.pos.block_offset
                || self
                    .reader
                    .get_ref()
                    .metadata()
                    .map(|m| self.next_offset >= m.len())
                    .unwrap_or(true);
            if at_end {
                if !self.opts.repeat {
                    return Ok(None);
                }
                empty_passes += 1;
                if empty_passes > 1 && self.block.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{}: no {} records (is the validation fraction 0 or 1?)",
                        self.path.display(),
                        match self.opts.split {
                            Split::Train => "training",
                            Split::Validation => "validation",
                        }
                    )));
                }
                self.pos = StreamPosition {
                    epoch: self.pos.epoch + 1,
                    ..StreamPosition::default()
                };
            } else {
                self.pos = StreamPosition {
                    epoch: self.pos.epoch,
                    block_offset: self.next_offset,
                    block_index: self.pos.block_index + 1,
                    in_block: 0,
                };
            }
            self.load_block()?;
            if !self.block.is_empty() {
                empty_passes = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_records(path: &Path, n: usize) {
        let lines: Vec<String> = (0..n)
            .map(|i| serde_json::to_string(&Record::text(format!("doc {i}"))).unwrap())
            .collect();
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn opts(split: Split, repeat: bool) -> StreamOptions {
        StreamOptions {
            seed: 9,
            validation_fraction: 0.1,
            split,
            block_size: 16,
            repeat,
            shuffle: true,
        }
    }

    fn take(s: &mut RecordStream, n: usize) -> Vec<Record> {
        (0..n).map(|_| s.next_record().unwrap().unwrap()).collect()
    }

    #[test]
    fn split_is_disjoint_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        write_records(&p, 200);
        let all = |split| {
            let mut s =
                RecordStream::open(&p, opts(split, false), StreamPosition::default()).unwrap();
            let mut v = Vec::new();
            while let Some(r) = s.next_record().unwrap() {
                v.push(r);
            }
            v
        };
        let train = all(Split::Train);
        let val = all(Split::Validation);
        assert_eq!(train.len() + val.len(), 200);
        assert!(
            !val.is_empty() && val.len() < 50,
            "{} validation records",
            val.len()
        );
        assert!(val.iter().all(|r| !train.contains(r)));
    }

    #[test]
    fn shuffle_is_seeded_and_resume_continues_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        write_records(&p, 100);
        let mut a =
            RecordStream::open(&p, opts(Split::Train, true), StreamPosition::default()).unwrap();
        let first = take(&mut a, 37);
        let pos = a.position();
        let rest = take(&mut a, 150); // crosses an epoch boundary
        let mut b =
            RecordStream::open(&p, opts(Split::Train, true), StreamPosition::default()).unwrap();
        assert_eq!(take(&mut b, 37), first, "same seed, same order");
        let mut resumed = RecordStream::open(&p, opts(Split::Train, true), pos).unwrap();
        assert_eq!(take(&mut resumed, 150), rest, "resumed where it stopped");
        let in_order: Vec<Record> = (0..37).map(|i| Record::text(format!("doc {i}"))).collect();
        assert_ne!(first, in_order, "records are shuffled");
    }
}
