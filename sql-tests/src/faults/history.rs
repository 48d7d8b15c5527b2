//! The history of a run: every operation a client invoked, with when it
//! started and ended and how (ok, failed, unknown), and every fault the
//! nemesis injected. Each entry is written to the history file (JSON
//! lines) as soon as it completes, so a run that dies leaves what it saw.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// bank: move `amount` from account `from` to account `to`, in an
    /// explicit transaction (`in_txn`) or as one multi-shard UPDATE.
    Transfer {
        /// Debited account.
        from: i64,
        /// Credited account.
        to: i64,
        /// Amount moved.
        amount: i64,
        /// BEGIN; UPDATE; UPDATE; COMMIT rather than one statement.
        in_txn: bool,
    },
    /// bank: read every balance, inside an explicit transaction or not.
    ReadBalances {
        /// Inside BEGIN … COMMIT.
        in_txn: bool,
    },
    /// set: insert `values` (one row each) in one statement, tagged `batch`.
    Add {
        /// The statement's tag, unique in the run.
        batch: i64,
        /// The values, unique in the run.
        values: Vec<i64>,
    },
    /// set: read every element.
    ReadSet,
    /// register: read register `key`.
    Read {
        /// The register.
        key: i64,
    },
    /// register: set register `key` to `value`.
    Write {
        /// The register.
        key: i64,
        /// Its new value.
        value: i64,
    },
    /// register: set register `key` to `to` if it holds `from`.
    Cas {
        /// The register.
        key: i64,
        /// The value it must hold.
        from: i64,
        /// Its new value.
        to: i64,
    },
    /// counter: add one to counter `key`.
    Increment {
        /// The counter.
        key: i64,
    },
    /// counter: read counter `key`.
    ReadCounter {
        /// The counter.
        key: i64,
    },
    /// ddl: CREATE (`create`) or DROP table `ddl_{table}`.
    Ddl {
        /// The table's number.
        table: i64,
        /// CREATE rather than DROP.
        create: bool,
    },
    /// ddl: where each table is (on every shard, on none, or on some).
    ProbeTables,
}

impl Call {
    /// True when the call may change the database (its failure may leave
    /// the outcome unknown).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Call::Transfer { .. }
                | Call::Add { .. }
                | Call::Write { .. }
                | Call::Cas { .. }
                | Call::Increment { .. }
                | Call::Ddl { .. }
        )
    }
}

/// What the database answered to a call that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Nothing to report (a write).
    Done,
    /// Balances by account (bank reads).
    Balances(Vec<(i64, i64)>),
    /// Every (value, batch) row (set reads).
    Elements(Vec<(i64, i64)>),
    /// A register's or counter's value (`None`: no row yet).
    Value(Option<i64>),
    /// Whether a compare-and-set swapped.
    Swapped(bool),
    /// Where each ddl table is, by number.
    Tables(Vec<(i64, String)>),
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The database answered.
    Ok,
    /// The database said it did not happen (or it was a read: a failed
    /// read changes nothing).
    Fail,
    /// It may or may not have happened: the write's fate is unknown.
    Unknown,
}

/// One operation of one client process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// The client process (each has its own session).
    pub process: usize,
    /// What it asked.
    pub call: Call,
    /// How it ended.
    pub outcome: Outcome,
    /// The answer, when `outcome` is `Ok`.
    pub answer: Option<Answer>,
    /// The error, when it is not.
    pub error: Option<String>,
    /// When it was invoked, in microseconds since the run began.
    pub start_us: u64,
    /// When it ended (an `Unknown` write may take effect later still).
    pub end_us: u64,
}

/// One fault the nemesis injected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// What was done (`pause storage-2 (leader of group 3)`).
    pub what: String,
    /// Its kind, for the summary.
    pub kind: String,
    /// When it began, in microseconds since the run began.
    pub start_us: u64,
    /// When it was healed.
    pub end_us: u64,
}

/// A line of the history file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A client operation.
    Op(Op),
    /// A fault.
    Fault(Fault),
}

/// The history being recorded.
pub struct History {
    began: Instant,
    entries: Mutex<Vec<Entry>>,
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl History {
    /// Starts a history written to `path`.
    pub fn create(path: &Path) -> anyhow::Result<History> {
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("cannot write the history file {}: {e}", path.display()))?;
        Ok(History {
            began: Instant::now(),
            entries: Mutex::new(Vec::new()),
            file: Mutex::new(std::io::BufWriter::new(file)),
        })
    }

    /// Microseconds since the run began.
    pub fn now_us(&self) -> u64 {
        self.began.elapsed().as_micros() as u64
    }

    /// Records an entry, in memory and in the file.
    pub fn record(&self, entry: Entry) {
        let line = serde_json::to_string(&entry).expect("history entries serialize");
        {
            let mut file = self.file.lock().expect("history file lock");
            if let Err(e) = writeln!(file, "{line}") {
                eprintln!("cannot write to the history file: {e}");
            }
        }
        self.entries.lock().expect("history lock").push(entry);
    }

    /// Flushes the file and returns every entry recorded.
    pub fn finish(&self) -> Vec<Entry> {
        if let Err(e) = self.file.lock().expect("history file lock").flush() {
            eprintln!("cannot write to the history file: {e}");
        }
        self.entries.lock().expect("history lock").clone()
    }
}

/// Reads a history file back (`faults check FILE`).
pub fn read(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the history file {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1)))
        .collect()
}
