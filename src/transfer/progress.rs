//! Progress over images for the long passes of the base.

/// Progress over images: an indicatif bar with images/s and ETA on a terminal, and a plain
/// line every 10% (at most every 5 s) otherwise, so logs of long runs show life too.
pub(crate) struct Progress {
    bar: Option<Bar>,
    label: String,
    total: usize,
    done: usize,
    started: std::time::Instant,
    last_line: std::time::Instant,
    next_line_at: usize,
}

impl Progress {
    /// `None` when there is no label (progress off) or nothing to do.
    pub(crate) fn new(label: Option<&str>, total: usize) -> Option<Progress> {
        use std::io::IsTerminal;
        let label = label?;
        if total == 0 {
            return None;
        }
        let bar = std::io::stderr()
            .is_terminal()
            .then(|| Bar::new(label, total))
            .flatten();
        let now = std::time::Instant::now();
        Some(Progress {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            started: now,
            last_line: now,
            next_line_at: total.div_ceil(10),
        })
    }

    pub(crate) fn inc(&mut self, n: usize) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
            return;
        }
        let due = self.done >= self.next_line_at && self.last_line.elapsed().as_secs_f64() >= 5.0;
        if due || self.done == self.total {
            let secs = self.started.elapsed().as_secs_f64();
            let rate = self.done as f64 / secs.max(1e-9);
            let eta = (self.total - self.done) as f64 / rate.max(1e-9);
            eprintln!(
                "{}: {}/{} images, {} images/s, eta {eta:.0} s",
                self.label,
                self.done,
                self.total,
                rate_text(rate)
            );
            self.last_line = std::time::Instant::now();
            while self.next_line_at <= self.done {
                self.next_line_at += self.total.div_ceil(10);
            }
        }
    }
}

/// A terminal's progress bar (indicatif, with the `progress` feature).
#[cfg(feature = "progress")]
struct Bar(indicatif::ProgressBar);

#[cfg(feature = "progress")]
impl Bar {
    fn new(label: &str, total: usize) -> Option<Bar> {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{label} {{bar:30}} {{pos}}/{{len}} images {{per_sec}} eta {{eta}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(Bar(bar))
    }

    fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish_and_clear(&self) {
        self.0.finish_and_clear();
    }
}

/// Without the `progress` feature there is no bar: the plain lines serve terminals too.
#[cfg(not(feature = "progress"))]
struct Bar;

#[cfg(not(feature = "progress"))]
impl Bar {
    fn new(_label: &str, _total: usize) -> Option<Bar> {
        None
    }

    fn inc(&self, _n: u64) {}

    fn finish_and_clear(&self) {}
}

/// A rate with the digits that mean something: `36058`, `84.2`, `3.71`.
pub(crate) fn rate_text(rate: f64) -> String {
    match rate {
        r if r >= 100.0 => format!("{r:.0}"),
        r if r >= 10.0 => format!("{r:.1}"),
        r => format!("{r:.2}"),
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_keep_the_digits_that_mean_something() {
        assert_eq!(super::rate_text(36058.13), "36058");
        assert_eq!(super::rate_text(84.24), "84.2");
        assert_eq!(super::rate_text(3.714), "3.71");
    }
}
