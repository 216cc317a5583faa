//! The `fieldsync` binary: parse the command line, set up logging, run, map errors to exit codes.

use clap::Parser;
use fieldsync::cli::{self, Cli};
use std::io::Write;

fieldsync::use_jemalloc!();

fn main() {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other error; --help has the details.
            let text = e.to_string();
            // clap's "tip: a similar subcommand exists: 'status'" follows in a later paragraph.
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .chain(text.lines().filter(|l| l.trim_start().starts_with("tip:")))
                .map(str::trim)
                .collect();
            eprintln!(
                "fieldsync: {} (see --help)",
                first.join(" ").trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    // A person reading `run`'s terminal gets the time, the level as a word and the sentence
    // (`fieldsync::logfmt`); tracing's own format with module paths (`fieldsync::store::held:`)
    // is for whoever set RUST_LOG to debug something.
    let developer = std::env::var_os("RUST_LOG").is_some();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if developer {
        log.with_target(true)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    } else {
        // Sentences with plain-text values (`fieldsync::logfmt`).
        log.event_format(fieldsync::logfmt::ForPeople).init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fieldsync: cannot start the async runtime: {e}");
            std::process::exit(3);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::LineWriter::new(stdout.lock());
    let result = cli::run(cli, std::env::args().collect(), &mut out, rt.handle());
    let flushed = out.flush();
    let code = match result {
        Ok(()) => match flushed {
            Ok(()) => 0,
            // A closed pipe (`| head`) is not an error worth a message.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            Err(e) => {
                eprintln!("fieldsync: writing output: {e}");
                3
            }
        },
        Err(e) if e.is_closed_output() => 0,
        // Told on stdout already (a failing `doctor` on a terminal): once is enough.
        Err(e) if e.is_said() => e.exit_code(),
        Err(e) => {
            eprintln!("fieldsync: {}", cli::words::plain(&e.to_string()));
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// At most two glibc malloc arenas and a fixed mmap threshold (256 KiB), for what still
/// allocates through glibc: the C libraries linked in (zstd's contexts and dictionaries; Rust's
/// own allocations go to jemalloc, `fieldsync::allocator`). By default glibc gives each thread
/// that allocates under contention its own arena (up to 8 per core), each keeping the memory
/// freed in it, and raises its mmap threshold after each large block freed, after which large
/// buffers come from the heap and stay there.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}
