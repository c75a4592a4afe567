//! Comparing a storage's answers with the model's.

use crate::contract::Storage;
use crate::error::{Error, Result};
use crate::storage::MemoryStorage;

/// An answer in a form two storages can be compared by: errors by kind, not by message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The call succeeded with this value.
    Ok(T),
    /// [`Error::Compacted`].
    Compacted,
    /// [`Error::Unavailable`].
    Unavailable,
    /// [`Error::SnapshotOutOfDate`].
    SnapshotOutOfDate,
    /// [`Error::SnapshotTemporarilyUnavailable`].
    SnapshotTemporarilyUnavailable,
    /// [`Error::ContractViolation`], whatever the explanation.
    ContractViolation,
    /// Any other error, by its message.
    Other(String),
}

impl<T> From<Result<T>> for Outcome<T> {
    fn from(r: Result<T>) -> Self {
        match r {
            Ok(v) => Outcome::Ok(v),
            Err(Error::Compacted) => Outcome::Compacted,
            Err(Error::Unavailable) => Outcome::Unavailable,
            Err(Error::SnapshotOutOfDate) => Outcome::SnapshotOutOfDate,
            Err(Error::SnapshotTemporarilyUnavailable) => Outcome::SnapshotTemporarilyUnavailable,
            Err(Error::ContractViolation(_)) => Outcome::ContractViolation,
            Err(other) => Outcome::Other(other.to_string()),
        }
    }
}

impl<T> Outcome<T> {
    /// Whether the call succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// The value of a successful call.
    pub fn into_ok(self) -> Option<T> {
        match self {
            Outcome::Ok(v) => Some(v),
            _ => None,
        }
    }

    /// The same outcome with the success value mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Ok(v) => Outcome::Ok(f(v)),
            Outcome::Compacted => Outcome::Compacted,
            Outcome::Unavailable => Outcome::Unavailable,
            Outcome::SnapshotOutOfDate => Outcome::SnapshotOutOfDate,
            Outcome::SnapshotTemporarilyUnavailable => Outcome::SnapshotTemporarilyUnavailable,
            Outcome::ContractViolation => Outcome::ContractViolation,
            Outcome::Other(e) => Outcome::Other(e),
        }
    }
}

/// The first answer where `subject` differs from `model`, if any: indices, hard state,
/// membership, the snapshot, the term of every index from below the dummy to past the end, the
/// whole log, and `entries` over a bounded spread of ranges and size limits.
pub fn same_answers(model: &MemoryStorage, subject: &dyn Storage) -> Result<(), String> {
    compare(model, subject, true, true)
}

/// Whether `subject` answers like `model` ([`same_answers`] without describing a difference,
/// which for a long log can cost more than the comparison).
pub fn answers_like(model: &MemoryStorage, subject: &dyn Storage) -> bool {
    compare(model, subject, false, true).is_ok()
}

/// Whether `subject` holds what `model` holds: [`same_state`] and the whole log, without the
/// spread of ranges and limits. Equal holdings make every answer's right value the same, so
/// this is enough to tell which of several candidate states a storage is in; whether it reads
/// each range right is [`answers_like`]'s question.
pub fn holds_like(model: &MemoryStorage, subject: &dyn Storage) -> bool {
    compare(model, subject, false, false).is_ok()
}

/// The first difference in what `subject` holds from what `model` holds ([`holds_like`],
/// described).
pub fn same_holdings(model: &MemoryStorage, subject: &dyn Storage) -> Result<(), String> {
    compare(model, subject, true, false)
}

fn compare(
    model: &MemoryStorage,
    subject: &dyn Storage,
    describe: bool,
    spread: bool,
) -> Result<(), String> {
    state(model, subject, describe)?;
    let first = model.first_index().expect("the model always answers");
    let last = model.last_index().expect("the model always answers");
    let dummy = first - 1;
    check(
        describe,
        &|| "the whole log".to_string(),
        Outcome::from(subject.entries(first, last + 1, u64::MAX)),
        model.entries(first, last + 1, u64::MAX).into(),
    )?;
    if !spread {
        return Ok(());
    }
    // Bounded: 8 starts x 5 ends x 4 limits, whatever the log's length. A short log makes
    // several of these the same call; each distinct call is asked once, in order. The starts
    // and, for each, the ends are sorted and deduplicated apart (the limits are distinct
    // already), which yields every distinct (start, end, limit) once without sorting the 160
    // calls: the fuzzer traces every compare, and that sort was a measurable part of a run.
    let middle = first + (last.saturating_sub(first)) / 2;
    let mut starts =
        [dummy.saturating_sub(1), dummy, first, first + 1, middle, last, last + 1, last + 2];
    starts.sort_unstable();
    for (k, &lo) in starts.iter().enumerate() {
        if k > 0 && starts[k - 1] == lo {
            continue;
        }
        let mut ends = [lo, lo + 1, lo + 3, last + 1, last + 2];
        ends.sort_unstable();
        for (j, &hi) in ends.iter().enumerate() {
            if j > 0 && ends[j - 1] == hi {
                continue;
            }
            for max in [0, 100, 500, u64::MAX] {
                if (lo, hi, max) == (first, last + 1, u64::MAX) {
                    continue; // The whole log, compared above.
                }
                check(
                    describe,
                    &|| format!("entries({lo}, {hi}, {max})"),
                    Outcome::from(subject.entries(lo, hi, max)),
                    model.entries(lo, hi, max).into(),
                )?;
            }
        }
    }
    Ok(())
}

/// The answers that do not read entries: indices, hard state, membership, the snapshot, and the
/// term of every index from below the dummy to past the end.
pub fn same_state(model: &MemoryStorage, subject: &dyn Storage) -> Result<(), String> {
    state(model, subject, true)
}

fn state(model: &MemoryStorage, subject: &dyn Storage, describe: bool) -> Result<(), String> {
    let first = model.first_index().expect("the model always answers");
    let last = model.last_index().expect("the model always answers");
    check(
        describe,
        &|| "first_index".into(),
        Outcome::from(subject.first_index()),
        Outcome::Ok(first),
    )?;
    check(
        describe,
        &|| "last_index".into(),
        Outcome::from(subject.last_index()),
        Outcome::Ok(last),
    )?;
    let (got, want) = (subject.initial_state(), model.initial_state());
    check(describe, &|| "initial_state".into(), Outcome::from(got), want.into())?;
    let dummy = first - 1;
    let (lo_bound, hi_bound) = (dummy.saturating_sub(2), last + 3);
    for i in lo_bound..hi_bound {
        check(
            describe,
            &|| format!("term({i})"),
            Outcome::from(subject.term(i)),
            model.term(i).into(),
        )?;
    }
    // Last: it reads (and may decompress) the snapshot file, while a candidate state that does
    // not fit usually differs in an index or a term already.
    let (got, want) = (subject.snapshot(), model.snapshot());
    check(describe, &|| "snapshot".into(), Outcome::from(got), want.into())?;
    Ok(())
}

/// Compares one answer; the description is built only for a difference, and only if asked.
fn check<T: PartialEq + std::fmt::Debug>(
    describe: bool,
    what: &dyn Fn() -> String,
    got: T,
    want: T,
) -> Result<(), String> {
    match (got == want, describe) {
        (true, _) => Ok(()),
        (false, true) => Err(format!("{}: got {got:?}, want {want:?}", what())),
        (false, false) => Err(String::new()),
    }
}
