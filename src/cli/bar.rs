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
            // Nothing is drawn for the first 400 ms: a mistyped peer or a refused connection
            // fails sooner, and its one-line error then stands alone, with no spinner drawn
            // and erased in front of it.
            for _ in 0..8 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let bar = ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} records, {prefix}, ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            // Until the peer says how much there is, a sentence: no "0/0 records, , ETA 0s".
            let waiting = ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            pb.set_style(waiting.clone());
            pb.set_message("connecting to the peer…");
            pb.enable_steady_tick(Duration::from_millis(150));
            // Bounded by the session: the caller stops it when the session returns.
            while !s.load(Ordering::Relaxed) {
                if let Some(v) = source() {
                    match view(&v) {
                        View::Waiting(msg) => {
                            pb.set_style(waiting.clone());
                            pb.set_message(msg);
                        }
                        View::Bar {
                            msg,
                            done,
                            len,
                            bytes,
                        } => {
                            pb.set_style(bar.clone());
                            pb.set_length(len);
                            pb.set_position(done);
                            pb.set_message(msg);
                            pb.set_prefix(bytes);
                        }
                    }
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

/// What the bar shows for a session's progress.
#[derive(Debug, PartialEq)]
enum View {
    /// Nothing to count yet (the peers are still comparing what each holds): a sentence.
    Waiting(String),
    /// Records done of about `len`, and bytes done of about how many.
    Bar {
        msg: String,
        done: u64,
        len: u64,
        bytes: String,
    },
}

fn view(s: &Value) -> View {
    let n = |d: &str, k: &str| s[d][k].as_u64().unwrap_or(0);
    let expected = n("received", "records_expected") + n("sent", "records_expected");
    let done = n("received", "records") + n("sent", "records");
    let name = s["peer_name"]
        .as_str()
        .filter(|x| !x.is_empty())
        .or(s["addr"].as_str())
        .unwrap_or("peer");
    if expected == 0 && done == 0 {
        return View::Waiting(format!(
            "syncing with {name}: finding out what each side lacks…"
        ));
    }
    let bytes = n("received", "bytes") + n("sent", "bytes");
    let about = n("received", "bytes_expected") + n("sent", "bytes_expected");
    let bytes = if about > bytes {
        format!(
            "{} of about {}",
            super::human::bytes(bytes),
            super::human::bytes(about)
        )
    } else {
        super::human::bytes(bytes)
    };
    View::Bar {
        msg: format!("syncing with {name}"),
        done,
        len: expected.max(done),
        bytes,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nothing_counted_yet_is_a_sentence_not_an_empty_bar() {
        let zero = json!({"records": 0, "records_expected": 0, "bytes": 0, "bytes_expected": 0});
        let s = json!({"peer_name": "laptopB", "received": zero, "sent": zero});
        assert_eq!(
            view(&s),
            View::Waiting("syncing with laptopB: finding out what each side lacks…".into())
        );
        let rx = json!({"records": 300, "records_expected": 1000, "bytes": 2048,
                        "bytes_expected": 8192});
        let s = json!({"peer_name": "", "addr": "127.0.0.1:7437", "received": rx, "sent": zero});
        assert_eq!(
            view(&s),
            View::Bar {
                msg: "syncing with 127.0.0.1:7437".into(),
                done: 300,
                len: 1000,
                bytes: "2.0 KB of about 8.0 KB".into()
            }
        );
    }
}
