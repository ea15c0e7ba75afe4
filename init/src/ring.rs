//! The log ring and the event list the control socket serves (issue 14):
//! in RAM only, bounded, so a chatty service costs at most
//! `RING_LINES × MAX_LINE` bytes and nothing is written to a disk.
//!
//! Producers (output forwarders, `say!`, the supervisor, the update and
//! control threads) take the lock only to push and wake followers.
//! Followers keep their own cursor (the last `seq` they sent), copy what is
//! new under the lock and write it to their socket without it: a slow or
//! gone follower never holds up a producer. Lines that fall out of the
//! ring while a follower is slow show as a gap in `seq`.

use contract::control::{clip, Event, EventKind, LogLine, EVENTS_KEPT, RING_LINES};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Default)]
struct Source {
    lines: VecDeque<LogLine>,
    /// The seq of the last line pushed (0: none yet).
    last: u64,
}

struct Inner {
    sources: BTreeMap<String, Source>,
    events: VecDeque<Event>,
    last_event: u64,
}

pub struct Ring {
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// init's ring: every thread of PID 1 feeds it.
pub static RING: Ring = Ring::new();

fn now_ms() -> u64 {
    crate::sys::monotonic().as_millis() as u64
}

impl Default for Ring {
    fn default() -> Self {
        Ring::new()
    }
}

impl Ring {
    pub const fn new() -> Ring {
        Ring {
            inner: Mutex::new(Inner {
                sources: BTreeMap::new(),
                events: VecDeque::new(),
                last_event: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking producer leaves plain data behind: keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one line (clipped to MAX_LINE, trailing newline dropped).
    pub fn push_line(&self, source: &str, stream: &str, text: &str) {
        let text = clip(text.trim_end_matches(['\n', '\r']));
        let mut g = self.lock();
        let s = g.sources.entry(source.to_string()).or_default();
        s.last += 1;
        s.lines.push_back(LogLine {
            source: source.to_string(),
            seq: s.last,
            ms: now_ms(),
            stream: stream.to_string(),
            text,
        });
        while s.lines.len() > RING_LINES {
            s.lines.pop_front();
        }
        drop(g);
        self.changed.notify_all();
    }

    /// Records one event; returns its seq.
    pub fn event(&self, kind: EventKind, by: Option<&str>, message: impl Into<String>) -> u64 {
        let mut g = self.lock();
        g.last_event += 1;
        let seq = g.last_event;
        g.events.push_back(Event {
            seq,
            ms: now_ms(),
            kind,
            by: by.map(String::from),
            message: clip(&message.into()),
        });
        while g.events.len() > EVENTS_KEPT {
            g.events.pop_front();
        }
        drop(g);
        self.changed.notify_all();
        seq
    }

    /// The sources that have lines, sorted.
    pub fn sources(&self) -> Vec<String> {
        self.lock().sources.keys().cloned().collect()
    }

    /// The last `tail` kept lines of `source` (all kept if `None`);
    /// `None` for a source that never had a line.
    pub fn tail(&self, source: &str, tail: Option<usize>) -> Option<Vec<LogLine>> {
        let g = self.lock();
        let s = g.sources.get(source)?;
        let skip = tail.map_or(0, |t| s.lines.len().saturating_sub(t));
        Some(s.lines.iter().skip(skip).cloned().collect())
    }

    /// The seq of the last line of `source` (0 if none): a follower's
    /// starting cursor.
    pub fn last_line(&self, source: &str) -> u64 {
        self.lock().sources.get(source).map_or(0, |s| s.last)
    }

    /// The kept lines of `source` after `after`, waiting up to `wait` for
    /// one when there is none yet (empty on timeout).
    pub fn lines_after(&self, source: &str, after: u64, wait: Duration) -> Vec<LogLine> {
        let pick = |g: &Inner| -> Vec<LogLine> {
            g.sources.get(source).map_or_else(Vec::new, |s| {
                s.lines.iter().filter(|l| l.seq > after).cloned().collect()
            })
        };
        let g = self.lock();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, wait, |g| pick(g).is_empty())
            .unwrap_or_else(|e| e.into_inner());
        pick(&g)
    }

    /// The kept events.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }

    /// The seq of the last event (0 if none).
    pub fn last_event(&self) -> u64 {
        self.lock().last_event
    }

    /// The kept events after `after`, waiting up to `wait` for one.
    pub fn events_after(&self, after: u64, wait: Duration) -> Vec<Event> {
        let g = self.lock();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, wait, |g| g.last_event <= after)
            .unwrap_or_else(|e| e.into_inner());
        g.events.iter().filter(|e| e.seq > after).cloned().collect()
    }
}

/// Records an event in init's ring.
pub fn event(kind: EventKind, by: Option<&str>, message: impl Into<String>) {
    RING.event(kind, by, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::control::MAX_LINE;
    use std::sync::Arc;

    #[test]
    fn lines_are_bounded_per_source_with_seq_gaps() {
        let r = Ring::new();
        for i in 0..RING_LINES + 5 {
            r.push_line("web", "out", &format!("line {i}\n"));
        }
        r.push_line("db", "err", "one");
        assert_eq!(r.sources(), ["db", "web"]);
        let all = r.tail("web", None).unwrap();
        assert_eq!(all.len(), RING_LINES);
        // The first five fell out: seq starts at 6, gapless from there.
        assert_eq!(all[0].seq, 6);
        assert_eq!(all[0].text, "line 5");
        assert_eq!(all.last().unwrap().seq, (RING_LINES + 5) as u64);
        let t = r.tail("web", Some(2)).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].seq, (RING_LINES + 5) as u64);
        assert_eq!(r.tail("db", Some(10)).unwrap()[0].stream, "err");
        assert!(r.tail("nope", None).is_none());
        assert_eq!(r.last_line("db"), 1);
    }

    #[test]
    fn long_lines_are_clipped() {
        let r = Ring::new();
        r.push_line("x", "out", &"a".repeat(MAX_LINE * 2));
        let l = &r.tail("x", None).unwrap()[0];
        assert!(l.text.len() <= MAX_LINE + '…'.len_utf8());
        assert!(l.text.ends_with('…'));
    }

    #[test]
    fn events_are_bounded_and_numbered() {
        let r = Ring::new();
        for i in 0..EVENTS_KEPT + 3 {
            r.event(EventKind::Service, None, format!("e{i}"));
        }
        let e = r.events();
        assert_eq!(e.len(), EVENTS_KEPT);
        assert_eq!(e[0].seq, 4);
        assert_eq!(r.last_event(), (EVENTS_KEPT + 3) as u64);
        assert_eq!(
            r.event(EventKind::Power, Some("CN=a"), "x"),
            (EVENTS_KEPT + 4) as u64
        );
        assert_eq!(r.events().last().unwrap().by.as_deref(), Some("CN=a"));
    }

    #[test]
    fn followers_wake_on_new_lines_and_events() {
        let r = Arc::new(Ring::new());
        assert!(r.lines_after("s", 0, Duration::from_millis(10)).is_empty());
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            r2.push_line("s", "out", "hello");
            r2.event(EventKind::Health, None, "ok");
        });
        let got = r.lines_after("s", 0, Duration::from_secs(5));
        assert_eq!(got[0].text, "hello");
        let ev = r.events_after(0, Duration::from_secs(5));
        assert_eq!(ev[0].message, "ok");
        t.join().unwrap();
    }
}
