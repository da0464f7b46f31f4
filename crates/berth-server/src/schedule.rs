//! Schedules (README "Schedules"): a function with `schedule: new Period(...)` or
//! `new Cron(...)` is called with no arguments at each tick, by `berth serve` only (not by
//! `berth run`, as in Modal, where schedules run once an app is deployed). A `Period`'s ticks
//! are its multiples since the Unix epoch (a 5-minute period ticks at :00, :05, ...); a
//! `Cron`'s are its pattern's times in its time zone (UTC unless it names one), read by the
//! `croner` crate. A tick that comes while the previous tick's call still runs is skipped
//! (logged): a scheduled function never runs twice at once. Ticks follow the served apps: a
//! reload that changes or removes a schedule takes effect at once. With `--broker`, every front
//! of an app computes the same ticks and they agree in the app's JetStream key-value bucket
//! (the tick of the last run and whether it still runs, changed by compare-and-set): one front
//! fires each tick, and none while the last tick's run still runs on any of them.
use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use berth_nats::TickStart;

use crate::functions::FunctionsSvc;
use crate::plane::{Shared, Waiter};

/// When a scheduled function runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every this long, at its multiples since the Unix epoch (every front of an app agrees on
    /// the ticks).
    Period(Duration),
    /// At the times `pattern` names in time zone `tz`.
    Cron { pattern: String, tz: chrono_tz::Tz, cron: Box<croner::Cron> },
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Period(a), Self::Period(b)) => a == b,
            (Self::Cron { pattern: a, tz: x, .. }, Self::Cron { pattern: b, tz: y, .. }) => a == b && x == y,
            _ => false,
        }
    }
}

/// The fields of a cron pattern, in order, as an error names them.
const FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

impl Schedule {
    /// A period, refused unless it is at least a millisecond.
    pub fn period(every: Duration) -> Result<Self, String> {
        if every < Duration::from_millis(1) {
            return Err(format!("Period: {} ms is no period; give at least 1 ms", every.as_millis()));
        }
        Ok(Self::Period(every))
    }

    /// A cron pattern (five fields: minute hour day-of-month month day-of-week; croner also takes
    /// a leading seconds field) read in `timezone` (an IANA name, e.g. `Europe/Paris`; UTC when
    /// none). An error names the field that does not parse, or the time zone.
    pub fn cron(pattern: &str, timezone: Option<&str>) -> Result<Self, String> {
        let tz = match timezone {
            None | Some("") => chrono_tz::UTC,
            Some(name) => name.parse::<chrono_tz::Tz>().map_err(|_| {
                format!("Cron('{pattern}', {{ timezone: '{name}' }}): not a time zone; use an IANA name such as 'Europe/Paris' or 'America/New_York'")
            })?,
        };
        let cron = croner::Cron::from_str(pattern).map_err(|e| {
            let fields: Vec<&str> = pattern.split_whitespace().collect();
            let why = format!("{e:?}");
            // Which field: the one that fails alone, the others made `*`.
            let named = (fields.len() == 5)
                .then(|| {
                    (0..5).find(|&i| {
                        let alone: Vec<&str> = (0..5).map(|j| if j == i { fields[j] } else { "*" }).collect();
                        croner::Cron::from_str(&alone.join(" ")).is_err()
                    })
                })
                .flatten();
            match named {
                Some(i) => format!(
                    "Cron('{pattern}'): its {} field '{}' does not parse ({why}); fields are: minute hour day-of-month month day-of-week",
                    FIELDS[i], fields[i]
                ),
                None => format!(
                    "Cron('{pattern}'): does not parse ({why}); give five fields: minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5'"
                ),
            }
        })?;
        Ok(Self::Cron { pattern: pattern.to_owned(), tz, cron: Box::new(cron) })
    }

    /// The first tick after `now`. `None` when the pattern names no time to come.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Period(every) => {
                let every = i64::try_from(every.as_millis()).ok()?.max(1);
                let next = (now.timestamp_millis().div_euclid(every) + 1).checked_mul(every)?;
                DateTime::from_timestamp_millis(next)
            }
            Self::Cron { tz, cron, .. } => {
                let local = now.with_timezone(tz);
                cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
            }
        }
    }
}

/// A scheduled function as the loop follows it.
struct Ticking {
    schedule: Schedule,
    next: Option<DateTime<Utc>>,
    /// Set while a tick's call runs; the call's end clears it.
    running: Option<oneshot::Receiver<berth_proto::v1::Result>>,
}

impl Ticking {
    /// `schedule` as of `now`: its next tick, nothing running.
    fn new(schedule: &Schedule, now: DateTime<Utc>) -> Self {
        Self { schedule: schedule.clone(), next: schedule.next_after(now), running: None }
    }
}

/// How long the loop sleeps at most: a reload's schedules are seen within this.
const LOOK_AGAIN: Duration = Duration::from_millis(500);

/// Runs the schedules of what `shared` serves until `stop` is set.
pub(crate) async fn run(shared: std::sync::Weak<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticking: HashMap<(String, String), Ticking> = HashMap::new();
    loop {
        let Some(shared) = shared.upgrade() else { return };
        let now = Utc::now();
        let catalog = shared.catalog.read().unwrap_or_else(|e| e.into_inner()).clone();
        // What is scheduled now: new ones start counting, changed ones start again, gone ones go.
        let mut seen = Vec::new();
        for (i, def) in catalog.current.functions.iter().enumerate() {
            let Some(&index) = catalog.index.get(i) else { continue };
            let Some(schedule) = &def.schedule else { continue };
            let key = (def.app.clone(), def.name.clone());
            seen.push(key.clone());
            let t = ticking.entry(key).or_insert_with(|| Ticking::new(schedule, now));
            if t.schedule != *schedule {
                *t = Ticking::new(schedule, now);
            }
            if let Some(r) = &mut t.running {
                if !matches!(r.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                    t.running = None;
                }
            }
            let Some(due) = t.next else { continue };
            if due > now {
                continue;
            }
            t.next = schedule.next_after(now);
            if t.running.is_some() {
                tracing::info!(
                    "berth: {}/{}: the tick of {} is skipped: the last one still runs",
                    def.app,
                    def.name,
                    rfc3339(due)
                );
                continue;
            }
            t.running = fire(&shared, index, def, due);
        }
        ticking.retain(|k, _| seen.contains(k));
        drop((catalog, shared));
        let wait = ticking
            .values()
            .filter_map(|t| t.next)
            .map(|n| (n - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .min()
            .unwrap_or(LOOK_AGAIN)
            .min(LOOK_AGAIN);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// How often a broker front marks a tick's run of its own as still running, and after how long
/// unmarked other fronts take it as ended (its front is gone).
const MARK_EVERY: Duration = Duration::from_secs(5);
const MARKED_WITHIN: Duration = Duration::from_secs(30);

/// Calls scheduled function `def` (index `index` of the catalog's definitions) with no arguments
/// for the tick at `due`; its result comes on the receiver (none when the tick is not fired
/// here), and a failure is logged. A broker front first starts the tick in the app's bucket
/// (berth-nats `SpawnResults::start_tick`): of several fronts, the first fires it, and none does
/// while the last tick's run still runs on any of them; the front that fired it marks the run
/// as running until it ends.
fn fire(
    shared: &Arc<Shared>,
    index: usize,
    def: &crate::FunctionDef,
    due: DateTime<Utc>,
) -> Option<oneshot::Receiver<berth_proto::v1::Result>> {
    let params = crate::params::canonical(def, &[]).unwrap_or_default();
    let pool = shared.pool(index, &params)?;
    let (done_tx, done) = oneshot::channel();
    let (app, name) = (def.app.clone(), def.name.clone());
    let shared = shared.clone();
    tokio::spawn(async move {
        let at = due.timestamp_millis();
        let front = shared.front.clone();
        let ticks = front.as_deref().map(|f| f.ticks(&app));
        let mut record = None;
        if let Some(ticks) = ticks {
            let started = match ticks {
                Some(ticks) => ticks.start_tick(&name, at, MARKED_WITHIN).await.map_err(|e| e.message),
                None => Err("the app has no bucket".to_owned()),
            };
            match started {
                Ok(TickStart::Fire(revision)) => record = ticks.map(|t| (t, revision)),
                Ok(TickStart::Taken) => return,
                Ok(TickStart::Running(last)) => {
                    tracing::info!(
                        "berth: {app}/{name}: the tick of {} is skipped: the one of {} still runs",
                        rfc3339(due),
                        DateTime::from_timestamp_millis(last).map_or_else(|| last.to_string(), rfc3339)
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!("berth: {app}/{name}: the tick of {} is not fired here: {e}", rfc3339(due));
                    return;
                }
            }
        }
        let svc = FunctionsSvc { shared };
        let (tx, mut rx) = oneshot::channel();
        // CBOR of [] (no arguments).
        svc.submit_many(pool, 0, svc.new_call_id(), vec![(vec![0x80], Waiter::Call(tx))], false, None);
        tracing::info!("berth: {app}/{name}: scheduled run of {}", rfc3339(due));
        let result = loop {
            let Some((ticks, revision)) = record else { break rx.await.unwrap_or_default() };
            tokio::select! {
                r = &mut rx => break r.unwrap_or_default(),
                () = tokio::time::sleep(MARK_EVERY) => match ticks.mark_tick(&name, at, true, revision).await {
                    Ok(Some(next)) => record = Some((ticks, next)),
                    // Another front took this run as ended (unmarked too long): no longer ours.
                    Ok(None) => record = None,
                    // Marked again in MARK_EVERY; other fronts wait MARKED_WITHIN.
                    Err(e) => tracing::warn!("berth: {app}/{name}: marking the run of {} as running: {}", rfc3339(due), e.message),
                },
            }
        };
        if let Some((ticks, revision)) = record {
            if let Err(e) = ticks.mark_tick(&name, at, false, revision).await {
                tracing::warn!("berth: {app}/{name}: marking the run of {} as ended: {}", rfc3339(due), e.message);
            }
        }
        if let Some(berth_proto::v1::result::Outcome::Error(e)) = &result.outcome {
            tracing::warn!("berth: {app}/{name}: the scheduled run failed: {}: {}", e.name, e.message);
        }
        let _ = done_tx.send(result);
    });
    Some(done)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::TimeZone as _;

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn cron_ticks_are_the_patterns_times_in_its_time_zone() {
        // Weekdays at 9:00 in New York: Friday 2026-11-27 15:00 UTC (10:00 EST) is past Friday's,
        // so Monday's, 14:00 UTC (EST is UTC-5).
        let weekdays = Schedule::cron("0 9 * * 1-5", Some("America/New_York")).unwrap();
        let now = utc(2026, 11, 27, 15, 0, 0);
        assert_eq!(weekdays.next_after(now), Some(utc(2026, 11, 30, 14, 0, 0)));
        // In summer (EDT, UTC-4) 9:00 is 13:00 UTC.
        let july = utc(2026, 7, 1, 0, 0, 0);
        assert_eq!(weekdays.next_after(july), Some(utc(2026, 7, 1, 13, 0, 0)));
        // UTC unless told: every 15 minutes.
        let quarter = Schedule::cron("*/15 * * * *", None).unwrap();
        assert_eq!(quarter.next_after(utc(2026, 1, 1, 10, 7, 30)), Some(utc(2026, 1, 1, 10, 15, 0)));
        assert_eq!(quarter.next_after(utc(2026, 1, 1, 10, 45, 0)), Some(utc(2026, 1, 1, 11, 0, 0)), "strictly after");
        // The 29th of February at noon: the next leap year's.
        let leap = Schedule::cron("0 12 29 2 *", None).unwrap();
        assert_eq!(leap.next_after(utc(2026, 3, 1, 0, 0, 0)), Some(utc(2028, 2, 29, 12, 0, 0)));
    }

    #[test]
    fn a_bad_pattern_or_time_zone_is_refused_naming_what_is_wrong() {
        let e = Schedule::cron("61 * * * *", None).unwrap_err();
        assert!(e.contains("its minute field '61' does not parse"), "{e}");
        let e = Schedule::cron("0 25 * * *", None).unwrap_err();
        assert!(e.contains("its hour field '25'"), "{e}");
        let e = Schedule::cron("0 9 * * Funday", None).unwrap_err();
        assert!(e.contains("its day of week field 'Funday'"), "{e}");
        let e = Schedule::cron("* * *", None).unwrap_err();
        assert!(e.contains("give five fields"), "{e}");
        let e = Schedule::cron("0 9 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(e.contains("timezone: 'Mars/Olympus' }): not a time zone"), "{e}");
        assert!(Schedule::period(Duration::ZERO).is_err());
    }

    #[test]
    fn a_periods_ticks_are_its_multiples_since_the_epoch() {
        let every = Schedule::period(Duration::from_secs(300)).unwrap();
        // Whenever it is asked (whichever front, whenever served): :05, :10, ...
        assert_eq!(every.next_after(utc(2026, 1, 1, 12, 3, 7)), Some(utc(2026, 1, 1, 12, 5, 0)));
        assert_eq!(every.next_after(utc(2026, 1, 1, 12, 5, 0)), Some(utc(2026, 1, 1, 12, 10, 0)), "strictly after");
        let second = Schedule::period(Duration::from_secs(1)).unwrap();
        let late = utc(2026, 1, 1, 0, 0, 2) + chrono::Duration::milliseconds(300);
        assert_eq!(second.next_after(late), Some(utc(2026, 1, 1, 0, 0, 3)), "a late tick does not shift the next");
    }
}
