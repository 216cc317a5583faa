//! `sync`'s progress bar on a terminal (indicatif, drawn on stderr): records done of about how
//! many, bytes, ETA. It follows the session through [`crate::progress`] — read in this process
//! when the CLI runs the session itself, or from the agent's `/v1/sessions` when the agent runs
//! it (the command is forwarded there).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A bar drawn by a thread until [`Bar::finish`] (or drop).
pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where the session's progress is read: the newest running session, as the JSON of
/// [`crate::progress::SessionProgress`], or `None` while there is none.
pub type Source = Box<dyn FnMut() -> Option<Value> + Send>;

impl Bar {
    /// Starts drawing on stderr, if it is a terminal; otherwise draws nothing.
    pub fn start(mut source: Source) -> Bar {
        use std::io::IsTerminal;
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Bar { stop, thread: None };
        }
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} records, {prefix}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            pb.set_message("connecting");
            // Bounded by the session: the caller stops it when the session returns.
            while !s.load(Ordering::Relaxed) {
                if let Some(v) = source() {
                    draw(&pb, &v);
                }
                std::thread::sleep(Duration::from_millis(150));
            }
            pb.finish_and_clear();
        });
        Bar {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and clears the bar.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.end();
    }
}

fn draw(pb: &ProgressBar, s: &Value) {
    let n = |d: &str, k: &str| s[d][k].as_u64().unwrap_or(0);
    let expected = n("received", "records_expected") + n("sent", "records_expected");
    let done = n("received", "records") + n("sent", "records");
    pb.set_length(expected.max(done));
    pb.set_position(done);
    let name = s["peer_name"]
        .as_str()
        .filter(|x| !x.is_empty())
        .or(s["addr"].as_str())
        .unwrap_or("peer");
    pb.set_message(format!("syncing with {name}"));
    pb.set_prefix(format!(
        "{} of about {}",
        super::human::bytes(n("received", "bytes") + n("sent", "bytes")),
        super::human::bytes(n("received", "bytes_expected") + n("sent", "bytes_expected"))
    ));
}

/// The newest session of this process that is running.
pub fn local() -> Source {
    Box::new(|| {
        let (running, _) = crate::progress::snapshot();
        running.last().and_then(|s| serde_json::to_value(s).ok())
    })
}

/// The newest running session of the agent whose data directory is `dir` (over its HTTP API).
pub fn agent(dir: &std::path::Path) -> Source {
    let api = crate::http::read_api_file(dir).ok();
    Box::new(move || {
        let api = api.as_ref()?;
        let v = super::console::get_json(&api.url, &api.token, "/v1/sessions").ok()?;
        v["running"].as_array()?.last().cloned()
    })
}
