//! The learning-rate search shared by `liera compare` and `liera vtab`: a ladder of rates that widens until
//! the best validation score is interior.
//!
//! Every rung of the starting ladder is scored; while the best rate is the highest one tried, a rung is
//! added above it at the ratio of the ladder's top step (×2 above 0.02 → 0.05 is ×2.5, so 0.125 comes
//! next), and likewise below the lowest rung at the ratio of the ladder's bottom step. The search stops when
//! the best rate has a lower-scoring (or equal, or diverged) rate on each side, or when a side has been
//! widened `max_extensions` times; then the best rate sits at a limit of what was tried and may be
//! under-tuned, which [`LadderSearch::end`] records so that reports can say so. A rate at which training
//! diverges (a non-finite loss) scores 0: it is a loser, and a diverged rung above the best makes the best
//! interior. Ties go to the smaller rate.

use crate::error::{Error, Result};
use std::fmt::Write as _;

/// A tuning run's validation accuracy: None when training diverged (a non-finite loss, a candidate that
/// lost rather than a failure of the search); any other error is passed on.
pub fn validation_score(run: Result<super::run::RunResult>) -> Result<Option<f64>> {
    match run {
        Ok(r) => Ok(Some(r.eval.accuracy)),
        Err(Error::Diverged { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// How many rungs the search may add on each side of a method's ladder in `liera compare` and `liera vtab`.
pub const MAX_LADDER_EXTENSIONS: usize = 3;

/// One learning rate that was tried and its validation scores.
#[derive(Clone, Debug, PartialEq)]
pub struct Rung {
    /// The learning rate.
    pub lr: f32,
    /// One score per tuning seed (accuracy in [0, 1]); None: that run diverged.
    pub scores: Vec<Option<f64>>,
    /// Whether the widening added this rung (it was not on the starting ladder).
    pub added: bool,
}

impl Rung {
    /// The mean score over the seeds, a diverged run counting as 0 (NaN with no scores).
    pub fn mean(&self) -> f64 {
        let n = self.scores.len() as f64;
        self.scores.iter().map(|s| s.unwrap_or(0.0)).sum::<f64>() / n
    }
    /// How many of the runs diverged.
    pub fn diverged(&self) -> usize {
        self.scores.iter().filter(|s| s.is_none()).count()
    }
}

/// Where the best rate ended up when the search stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LadderEnd {
    /// Rates on both sides of the best were tried and scored no higher: the best is interior.
    Interior,
    /// The best is the highest rate tried and the ladder may not grow further up: a higher rate might
    /// have done better.
    TopLimit,
    /// The best is the lowest rate tried and the ladder may not grow further down.
    BottomLimit,
    /// One rate only: nothing was compared (and a one-rung ladder has no step ratio to widen by).
    Single,
}

impl LadderEnd {
    /// Whether the best rate may be under-tuned (it is at an edge of what was tried).
    pub fn at_limit(self) -> bool {
        !matches!(self, LadderEnd::Interior)
    }
}

/// The outcome of [`widening_search`].
#[derive(Clone, Debug, PartialEq)]
pub struct LadderSearch {
    /// Every rung tried, in increasing learning rate.
    pub rungs: Vec<Rung>,
    /// The rate with the best mean score (ties: the smaller rate).
    pub best: f32,
    /// Its mean score.
    pub best_score: f64,
    /// Where the best rate sits.
    pub end: LadderEnd,
    /// Rungs added below and above the starting ladder.
    pub added: (usize, usize),
    /// The most rungs the search could add on each side.
    pub max_extensions: usize,
}

impl LadderSearch {
    /// `0.01: 78.0%, 0.02: 81.0%, …` (one decimal; a diverged run is named).
    pub fn scores_text(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.rungs.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{}: {:.1}%", r.lr, 100.0 * r.mean());
            if r.diverged() > 0 {
                let _ = write!(s, " ({} of {} diverged)", r.diverged(), r.scores.len());
            }
        }
        s
    }
    /// "interior", or which limit the best rate is at and that it may be under-tuned.
    pub fn end_text(&self) -> String {
        let widened = |n: usize| match (n, self.max_extensions) {
            (_, 0) => "the ladder is not widened".to_string(),
            (1, _) => "after 1 widening".to_string(),
            (n, _) => format!("after {n} widenings"),
        };
        match self.end {
            LadderEnd::Interior => "interior".into(),
            LadderEnd::TopLimit => format!(
                "at the top of the ladder ({}): may be under-tuned, a higher rate might do better",
                widened(self.added.1)
            ),
            LadderEnd::BottomLimit => format!(
                "at the bottom of the ladder ({}): may be under-tuned, a lower rate might do better",
                widened(self.added.0)
            ),
            LadderEnd::Single => "one rate only: not tuned".into(),
        }
    }
}

/// `x` rounded to three significant digits (so that widened rungs print as 0.125, not 0.12500001).
fn round_sig3(x: f64) -> f32 {
    let e = 10f64.powf(x.log10().floor() - 2.0);
    ((x / e).round() * e) as f32
}

/// The index of the best rung (highest mean; ties: the first, i.e. the smaller rate).
fn best_index(rungs: &[Rung]) -> usize {
    let mut best = 0;
    for (i, r) in rungs.iter().enumerate() {
        if r.mean() > rungs[best].mean() {
            best = i;
        }
    }
    best
}

/// Scores every rate of `ladder` with `score` (one value per tuning seed; None: the run diverged), then
/// widens the ladder as the module documentation says, at most `max_extensions` rungs per side (0: the
/// ladder is searched as given). The ladder is sorted; its rates must be finite and positive, and distinct.
pub fn widening_search(
    ladder: &[f32],
    max_extensions: usize,
    score: &mut dyn FnMut(f32) -> Result<Vec<Option<f64>>>,
) -> Result<LadderSearch> {
    let mut rates = ladder.to_vec();
    if rates.is_empty() {
        return Err(Error::invalid("tune", "the learning-rate ladder is empty"));
    }
    if let Some(bad) = rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
        return Err(Error::invalid(
            "tune",
            format!("learning rates must be finite and positive, got {bad}"),
        ));
    }
    rates.sort_by(f32::total_cmp);
    if rates.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::invalid(
            "tune",
            format!("the learning-rate ladder repeats a rate: {rates:?}"),
        ));
    }
    let mut run = |lr: f32, added: bool| -> Result<Rung> {
        let scores = score(lr)?;
        if scores.is_empty() {
            return Err(Error::invalid(
                "tune",
                "the scoring function returned no score",
            ));
        }
        Ok(Rung { lr, scores, added })
    };
    let mut rungs = Vec::with_capacity(rates.len() + 2 * max_extensions);
    for &lr in &rates {
        rungs.push(run(lr, false)?);
    }
    let (mut down, mut up) = (0, 0);
    // A one-rung ladder has no step ratio; a widened rate that rounds back onto its neighbour (a ladder
    // step under 0.5%) ends the widening on that side.
    while rungs.len() >= 2 {
        let best = best_index(&rungs);
        let n = rungs.len();
        let (top, bottom) = (rungs[n - 1].lr as f64, rungs[0].lr as f64);
        let above = round_sig3(top * top / rungs[n - 2].lr as f64);
        let below = round_sig3(bottom * bottom / rungs[1].lr as f64);
        if best == n - 1 && up < max_extensions && above as f64 > top {
            rungs.push(run(above, true)?);
            up += 1;
        } else if best == 0 && down < max_extensions && (below as f64) < bottom && below > 0.0 {
            rungs.insert(0, run(below, true)?);
            down += 1;
        } else {
            break;
        }
    }
    let best = best_index(&rungs);
    let end = if rungs.len() == 1 {
        LadderEnd::Single
    } else if best == rungs.len() - 1 {
        LadderEnd::TopLimit
    } else if best == 0 {
        LadderEnd::BottomLimit
    } else {
        LadderEnd::Interior
    };
    Ok(LadderSearch {
        best: rungs[best].lr,
        best_score: rungs[best].mean(),
        rungs,
        end,
        added: (down, up),
        max_extensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widened_rungs_are_rounded_to_three_digits() {
        assert_eq!(round_sig3(0.05 * 2.5), 0.125);
        assert_eq!(round_sig3(0.0123456), 0.0123);
        assert_eq!(round_sig3(3.0e-3 * 3.0), 0.009);
    }
}
